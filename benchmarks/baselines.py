"""Baselines that exist only to be compared against QGT in benchmarks/accuracy_vs_size.py: tfmot
quantization-aware training and tfmot weight clustering, behind the signature of qgt_keras.recipes
(``method(setup, bits) -> RecipeResult``) and its training budget."""

import numpy as np

from qgt_keras import layer_kinds, recipes


def _check_batchnorm_handling(setup, method):
    if setup.anchor_batchnorm:  # tfmot's wrapped and folded layers do not pair up with the teacher's
        raise ValueError(f"{method} does not support Setup.anchor_batchnorm")


def tfmot_qat(setup, bits):
    """tfmot quantization-aware training: ``quantize_model`` for 8 bits, ``DefaultNBitQuantizeScheme``
    (8-bit activations) below; every layer at ``bits``. Measured on the fake-quantized tfmot model, its
    BatchNormalization statistics re-estimated like every weight-quantized method's (with them, tfmot's
    activation ranges see the same 20 batches)."""
    import tensorflow_model_optimization as tfmot

    _check_batchnorm_handling(setup, "tfmot_qat")
    model, pre_seconds, pre_history = setup.pretrained()
    if bits == 8:
        quantized = tfmot.quantization.keras.quantize_model(model)
    else:
        scheme = tfmot.quantization.keras.experimental.default_n_bit.DefaultNBitQuantizeScheme(
            num_bits_weight=bits, num_bits_activation=8)
        quantized = tfmot.quantization.keras.quantize_apply(
            tfmot.quantization.keras.quantize_annotate_model(model), scheme=scheme)
    seconds, history = recipes.fit(quantized, setup, setup.finetune_epochs, setup.finetune_learning_rate)
    if not setup.freeze_batchnorm:
        seconds += recipes.reestimate_batchnorm(quantized, setup)
    sizes = layer_kinds.kernel_sizes(model)
    return recipes.RecipeResult(
        "tfmot_qat", bits, quantized, dict.fromkeys(sizes, bits), layer_kinds.weight_bytes(sizes, dict.fromkeys(
            sizes, bits)), pre_seconds + seconds, recipes.evaluate(quantized, setup.data),
        recipes.merge_histories(pre_history, history))


def tfmot_cluster(setup, bits):
    """tfmot weight clustering with 2^bits clusters per kernel (16 ~ 4-bit, 4 ~ 2-bit), k-means++ init.

    Bytes: packed cluster indices plus a float32 codebook per clustered kernel. tfmot 0.8 does not cluster
    DepthwiseConv2D kernels; layers left with more than 2^bits distinct values count as float32. Measured on
    the stripped model, BatchNormalization re-estimated.
    """
    import tensorflow_model_optimization as tfmot

    _check_batchnorm_handling(setup, "tfmot_cluster")
    clustering = tfmot.clustering.keras
    model, pre_seconds, pre_history = setup.pretrained()
    sizes = layer_kinds.kernel_sizes(model)  # before clustering: cluster_weights takes the layers' weights over
    clustered = clustering.cluster_weights(
        model, number_of_clusters=2 ** bits,
        cluster_centroids_init=clustering.CentroidInitialization.KMEANS_PLUS_PLUS)
    seconds, history = recipes.fit(clustered, setup, setup.finetune_epochs, setup.finetune_learning_rate)
    stripped = clustering.strip_clustering(clustered)
    if not setup.freeze_batchnorm:
        seconds += recipes.reestimate_batchnorm(stripped, setup)
    bits_by_layer = {name: bits if len(np.unique(stripped.get_layer(name).weights[0].numpy())) <= 2 ** bits
                     else layer_kinds.FLOAT_BITS for name in sizes}
    codebooks = 4 * 2 ** bits * sum(layer_bits == bits for layer_bits in bits_by_layer.values())
    return recipes.RecipeResult(
        "tfmot_cluster", bits, stripped, bits_by_layer, layer_kinds.weight_bytes(sizes, bits_by_layer) + codebooks,
        pre_seconds + seconds, recipes.evaluate(stripped, setup.data), recipes.merge_histories(pre_history, history))


# Every method the accuracy-vs-size benchmark compares, by name.
METHODS = {
    "float": recipes.float_training,
    "ptq": recipes.ptq,
    "qat_ste": recipes.qat_ste,
    "tfmot_qat": tfmot_qat,
    "tfmot_cluster": tfmot_cluster,
    "qgt": recipes.qgt,
    "qgt_mixed": recipes.qgt_mixed,
}
