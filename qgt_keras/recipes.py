"""Training methods compared side by side: float, post-training quantization, STE QAT, tfmot QAT, tfmot
clustering, QGT and QGT with automatic mixed precision. One harness, used by ``qgt-train``, the benchmark and
the notebook.

Every method has the signature ``method(setup, bits, **options) -> RecipeResult`` (``qgt_mixed`` takes a byte
budget instead of bits) and the same training budget:

* a shared float pre-training phase of ``setup.pretrain_epochs`` (trained once per setup and reused; each
  method's ``train_seconds`` includes its time), then
* ``setup.finetune_epochs`` of the method itself, from the pre-trained weights (float continues in float;
  PTQ quantizes the float model after them).

Accuracy is always measured on the quantized model: kernels snapped to their grid (a plain tf_keras model,
what the exporter converts), the tfmot fake-quantized model, or the stripped clustered model.

The QGT recipe (:class:`QGTSchedule`; docs/RECIPE.md has the measurements behind it): an optional QGT phase
(float forward pass, strength ramped in steps), then forward passes on the grid (STE) with a small QGT term
that keeps the float weights near their grid points, then snapping and BatchNormalization re-estimation.
First and last layers stay at 8 bits (``edge_bits``): the bottleneck report flags the first convolution, and
the two hold under 1% of the weights.
"""

import dataclasses
import math
import pathlib
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from qgt_keras import callbacks, conversion, datasets, models, quantizers, report
from qgt_keras.layers import quantized_kernels

FLOAT_BITS = 32
DATASETS = ("person_folder", "vww_tfrecords", "vww_coco", "fashion_mnist")
LR_SCHEDULES = ("cosine", "constant")
# Batches of training data used to re-estimate BatchNormalization statistics after snapping.
BN_REESTIMATION_BATCHES = 20
# A kernel channel this much smaller than its layer's largest is dead (see DeadChannelGuard).
DEAD_CHANNEL_RELATIVE_SIZE = 1e-6


@dataclasses.dataclass
class Data:
    """Train and test pipelines plus a small unaugmented calibration slice of the training data."""

    train: tf.data.Dataset
    test: tf.data.Dataset
    calibration: tuple  # (x, y) arrays: the bottleneck report, allocate_bits and BN re-estimation
    steps_per_epoch: int
    input_shape: tuple
    num_classes: int
    description: str


def load_data(dataset, data_dir=None, *, image_size=96, grayscale=False, batch_size=32, limit=None,
              test_limit=None, calibration_size=256, seed=0, augment=True):
    """Reads one of :data:`DATASETS` into a :class:`Data`.

    data_dir layouts: person_folder ``{train,test}/{person,non_person}/`` (default: the bundled person96);
    vww_tfrecords ``train.record-*`` and ``val.record-*``; vww_coco ``instances_{train,val}.json`` and the
    images in ``images/``; fashion_mnist the IDX files (default: Debian's dataset-fashion-mnist).
    ``limit`` / ``test_limit`` use a seeded subset (for quick runs).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset == "fashion_mnist":
        def read(split, **kwargs):
            return datasets.read_fashion_mnist(data_dir, split, **kwargs)
    else:
        root = pathlib.Path(data_dir) if data_dir else datasets.bundled_person96_dir()
        if not root.is_dir():
            raise FileNotFoundError(f"data_dir {root} is not a folder")
        image_options = {"image_size": (image_size, image_size), "grayscale": grayscale}
        if dataset == "person_folder":
            def read(split, **kwargs):
                return datasets.read_image_folder(root / split, **image_options, **kwargs)
        elif dataset == "vww_tfrecords":
            def read(split, **kwargs):
                return datasets.read_vww_tfrecords(
                    str(root / f"{'train' if split == 'train' else 'val'}.record-*"), **image_options, **kwargs)
        else:
            def read(split, **kwargs):
                return datasets.read_coco_vww(
                    root / f"instances_{'train' if split == 'train' else 'val'}.json", root / "images",
                    **image_options, **kwargs)
    train, info = read("train", batch_size=batch_size, shuffle=True, augment=augment, seed=seed, limit=limit)
    test, test_info = read("test", batch_size=max(batch_size, 64), limit=test_limit, seed=seed)
    calibration_set, _ = read("train", batch_size=calibration_size, limit=calibration_size, seed=seed + 1)
    x, y = next(iter(calibration_set))
    num_examples = info.num_examples if info.num_examples is not None else limit
    if not num_examples:
        raise ValueError(f"cannot count the training examples of {info.source}; pass limit")
    return Data(train, test, (x.numpy(), y.numpy()), math.ceil(num_examples / batch_size), info.image_shape,
                info.num_classes,
                f"{dataset} ({num_examples} train, {test_info.num_examples or test_limit} test images)")


@dataclasses.dataclass
class Setup:
    """What every method shares: data, the float model to start from and the training budget.

    Args:
      data: a :class:`Data`.
      build_model: () -> a new float tf_keras model (with its initial weights, e.g. from ``init_from``).
      pretrain_epochs: float epochs shared by all methods (0 when ``build_model`` is already trained).
      finetune_epochs: epochs of each method after pre-training.
      learning_rate: Adam learning rate of pre-training; ``finetune_learning_rate`` that of fine-tuning.
      lr_schedule: "cosine" (decay to 0 over each phase) or "constant".
      edge_bits: bits of the first and last quantized layer for ptq, qat_ste and qgt (None: same as the rest).
    """

    data: Data
    build_model: object
    pretrain_epochs: int = 0
    finetune_epochs: int = 3
    learning_rate: float = 3e-3
    finetune_learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    edge_bits: object = 8
    verbose: int = 1
    _pretrained: tuple = dataclasses.field(default=None, repr=False)
    _float_result: object = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.pretrain_epochs < 0 or self.finetune_epochs < 1:
            raise ValueError("need pretrain_epochs >= 0 and finetune_epochs >= 1")

    @property
    def total_epochs(self):
        return self.pretrain_epochs + self.finetune_epochs

    def pretrained(self):
        """(a new float model with the pre-trained weights, pre-training seconds, pre-training history)."""
        if self._pretrained is None:
            model = self.build_model()
            seconds, history = 0.0, {}
            if self.pretrain_epochs:
                seconds, history = fit(model, self, self.pretrain_epochs, self.learning_rate)
            self._pretrained = (model.get_weights(), seconds, history)
        weights, seconds, history = self._pretrained
        model = self.build_model()
        model.set_weights(weights)
        return model, seconds, history


@dataclasses.dataclass
class RecipeResult:
    """A trained, quantized model and what it costs.

    ``model`` is the model that was evaluated (snapped plain tf_keras model, tfmot QAT model or stripped
    clustered model); ``qgt_model`` the quantized-layer model before stripping (ptq, qat_ste, qgt).
    """

    method: str
    bits: float
    model: keras.Model
    layer_bits: dict
    weight_bytes: int
    train_seconds: float
    accuracy: float
    history: dict
    qgt_model: keras.Model = None


def compile_model(model, learning_rate, decay_steps=None):
    schedule = (keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps) if decay_steps
                else learning_rate)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", ["accuracy"])


def fit(model, setup, epochs, learning_rate, extra_callbacks=()):
    """Compiles (Adam, the setup's schedule) and fits ``model``; returns (seconds, history dict)."""
    decay_steps = epochs * setup.data.steps_per_epoch if setup.lr_schedule == "cosine" else None
    compile_model(model, learning_rate, decay_steps)
    start = time.perf_counter()
    history = model.fit(setup.data.train, epochs=epochs, callbacks=list(extra_callbacks), verbose=setup.verbose)
    return time.perf_counter() - start, history.history


def evaluate(model, data):
    """Test accuracy of ``model`` (compiled here if it is not)."""
    if model.optimizer is None or model.compiled_loss is None:
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return float(model.evaluate(data.test, verbose=0, return_dict=True)["accuracy"])


def kernel_sizes(model):
    """{layer name: kernel weights} of the Conv2D / DepthwiseConv2D / Dense layers of a float model."""
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    return {layer.name: int(np.prod(layer.weights[0].shape)) for layer in model.layers if isinstance(layer, kinds)}


def weight_bytes(sizes, bits_by_layer):
    """Packed kernel bytes; layers missing from ``bits_by_layer`` count as float32."""
    return sum(report.packed_bytes(n, bits_by_layer.get(name, FLOAT_BITS)) for name, n in sizes.items())


def mean_bits(sizes, bits_by_layer):
    return round(8 * weight_bytes(sizes, bits_by_layer) / sum(sizes.values()), 2)


class DeadChannelGuard(keras.callbacks.Callback):
    """Keeps dead kernel channels (largest |weight| below ``relative`` times their layer's) at exactly 0,
    before training and after every step.

    L2 decay leaves dead channels of ~1e-32 (16 in the MLPerf VWW weights), and Adam keeps nudging a
    zeroed one to ~1e-30. Such a channel changes no output, but its per-channel grid step is as small as
    its weights, so the QGT gradient, measured in grid steps, overflows and turns the whole model NaN. An
    all-zero channel has a well-defined step (1) and a zero QGT gradient.
    """

    def __init__(self, relative=DEAD_CHANNEL_RELATIVE_SIZE):
        super().__init__()
        self.relative = relative

    def on_train_begin(self, logs=None):
        kernels = [(entry.kernel, entry.channel_axes) for entry in quantized_kernels(self.model)]

        @tf.function(autograph=False)  # a Python loop over the kernels; nothing to convert
        def zero_dead():
            for kernel, channel_axes in kernels:
                magnitude = tf.reduce_max(tf.abs(quantizers.channels_last_2d(kernel, channel_axes)), axis=0)
                alive = tf.cast(magnitude >= self.relative * tf.reduce_max(magnitude), kernel.dtype)
                flat = quantizers.channels_last_2d(kernel, channel_axes) * alive
                kernel.assign(tf.reshape(flat, tf.shape(kernel)))

        self._zero_dead = zero_dead
        zero_dead()

    def on_train_batch_end(self, batch, logs=None):
        self._zero_dead()


def _policy(setup, bits, strength=0.0, overrides=None, scale="mse"):
    """Layers named in ``overrides`` get their bits, the first and last ``setup.edge_bits``, the rest ``bits``."""
    return conversion.QuantizationPolicy(bits=bits, overrides=dict(overrides or {}), edge_bits=setup.edge_bits,
                                         strength=strength, scale=scale)


def _merge(*histories):
    merged = {}
    for history in histories:
        for key, values in history.items():
            merged.setdefault(key, []).extend(values)
    return merged


def _snapped_result(method, setup, quantized, sizes, seconds, history, nominal_bits, reestimate_bn=False):
    """Strips ``quantized`` into a plain model with snapped kernels (re-estimating its BatchNormalization
    statistics, copied back into ``quantized``, if asked) and measures it."""
    plain = conversion.strip_quantization(quantized, snap=True)
    if reestimate_bn:
        start = time.perf_counter()
        conversion.recalibrate_batchnorm(plain, setup.data.train, BN_REESTIMATION_BATCHES)
        for layer in plain.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                quantized.get_layer(layer.name).set_weights(layer.get_weights())
        seconds += time.perf_counter() - start
    bits_by_layer = conversion.layer_bits(quantized)
    return RecipeResult(method, nominal_bits, plain, bits_by_layer, weight_bytes(sizes, bits_by_layer), seconds,
                        evaluate(plain, setup.data), history, quantized)


def float_training(setup, bits=FLOAT_BITS):
    """Float training for the whole budget (computed once per setup; PTQ quantizes this model)."""
    if bits != FLOAT_BITS:
        raise ValueError(f"float training has {FLOAT_BITS}-bit weights, got bits={bits}")
    if setup._float_result is None:
        model, pre_seconds, pre_history = setup.pretrained()
        seconds, history = fit(model, setup, setup.finetune_epochs, setup.finetune_learning_rate)
        sizes = kernel_sizes(model)
        setup._float_result = RecipeResult(
            "float", FLOAT_BITS, model, {}, weight_bytes(sizes, {}), pre_seconds + seconds,
            evaluate(model, setup.data), _merge(pre_history, history))
    return setup._float_result


def ptq(setup, bits, scale="mse", overrides=None):
    """Post-training quantization of the float model: kernels snapped to the b-bit grid with "max" or
    "mse" per-channel scales."""
    trained = float_training(setup)
    quantized = conversion.quantize_model(trained.model, _policy(setup, bits, overrides=overrides, scale=scale))
    return _snapped_result(f"ptq_{scale}", setup, quantized, kernel_sizes(trained.model), trained.train_seconds,
                           trained.history, bits)


def qat_ste(setup, bits, overrides=None):
    """Plain straight-through QAT: our quantized layers on the grid from the first fine-tuning step, no
    regularizer."""
    model, pre_seconds, pre_history = setup.pretrained()
    quantized = conversion.quantize_model(model, _policy(setup, bits, overrides=overrides))
    conversion.set_hard_quantization(quantized, True)
    seconds, history = fit(quantized, setup, setup.finetune_epochs, setup.finetune_learning_rate,
                           [DeadChannelGuard()])
    return _snapped_result("qat_ste", setup, quantized, kernel_sizes(model), pre_seconds + seconds,
                           _merge(pre_history, history), bits)


def tfmot_qat(setup, bits):
    """tfmot quantization-aware training: ``quantize_model`` for 8 bits, ``DefaultNBitQuantizeScheme``
    (8-bit activations) below; every layer at ``bits``. Measured on the fake-quantized tfmot model."""
    import tensorflow_model_optimization as tfmot

    model, pre_seconds, pre_history = setup.pretrained()
    if bits == 8:
        quantized = tfmot.quantization.keras.quantize_model(model)
    else:
        scheme = tfmot.quantization.keras.experimental.default_n_bit.DefaultNBitQuantizeScheme(
            num_bits_weight=bits, num_bits_activation=8)
        quantized = tfmot.quantization.keras.quantize_apply(
            tfmot.quantization.keras.quantize_annotate_model(model), scheme=scheme)
    seconds, history = fit(quantized, setup, setup.finetune_epochs, setup.finetune_learning_rate)
    sizes = kernel_sizes(model)
    return RecipeResult("tfmot_qat", bits, quantized, dict.fromkeys(sizes, bits),
                        weight_bytes(sizes, dict.fromkeys(sizes, bits)), pre_seconds + seconds,
                        evaluate(quantized, setup.data), _merge(pre_history, history))


def tfmot_cluster(setup, bits):
    """tfmot weight clustering with 2^bits clusters per kernel (16 ~ 4-bit, 4 ~ 2-bit), k-means++ init.

    Bytes: packed cluster indices plus a float32 codebook per clustered kernel. tfmot 0.8 does not cluster
    DepthwiseConv2D kernels; layers left with more than 2^bits distinct values count as float32.
    """
    import tensorflow_model_optimization as tfmot

    clustering = tfmot.clustering.keras
    model, pre_seconds, pre_history = setup.pretrained()
    sizes = kernel_sizes(model)  # before clustering: cluster_weights takes the layers' weights over
    clustered = clustering.cluster_weights(
        model, number_of_clusters=2 ** bits,
        cluster_centroids_init=clustering.CentroidInitialization.KMEANS_PLUS_PLUS)
    seconds, history = fit(clustered, setup, setup.finetune_epochs, setup.finetune_learning_rate)
    stripped = clustering.strip_clustering(clustered)
    bits_by_layer = {name: bits if len(np.unique(stripped.get_layer(name).weights[0].numpy())) <= 2 ** bits
                     else FLOAT_BITS for name in sizes}
    codebooks = 4 * 2 ** bits * sum(layer_bits == bits for layer_bits in bits_by_layer.values())
    return RecipeResult("tfmot_cluster", bits, stripped, bits_by_layer, weight_bytes(sizes, bits_by_layer) + codebooks,
                        pre_seconds + seconds, evaluate(stripped, setup.data), _merge(pre_history, history))


@dataclasses.dataclass(frozen=True)
class QGTSchedule:
    """The two phases of QGT fine-tuning and their strengths (see docs/RECIPE.md for the measurements).

    * ``qgt_epochs`` first epochs (default 0): float forward pass, the strength ramped geometrically in
      steps from ``start_strength`` to ``end_strength`` over ``ramp_fraction`` of them, then held;
    * the remaining epochs: forward pass on the grid (straight-through gradients) with the QGT term at
      ``hard_strength``, which keeps the float weights near their grid points.
    Strengths multiply a sum over all weights of squared distances relative to the channel's grid range.
    ``reestimate_bn``: recompute the BatchNormalization statistics after snapping.
    """

    qgt_epochs: int = 0
    start_strength: float = 1e-4
    end_strength: float = 1.0
    ramp_fraction: float = 0.6
    hard_strength: float = 1e-4
    reestimate_bn: bool = True

    def scheduler(self, setup):
        if not 0 <= self.qgt_epochs <= setup.finetune_epochs:
            raise ValueError(f"qgt_epochs must be in 0..finetune_epochs ({setup.finetune_epochs}), "
                             f"got {self.qgt_epochs}")
        qgt_steps = self.qgt_epochs * setup.data.steps_per_epoch
        return callbacks.QGTScheduler(self.start_strength, self.end_strength, warmup_steps=0,
                                      ramp_steps=int(self.ramp_fraction * qgt_steps),
                                      hard_quantization_epochs=setup.finetune_epochs - self.qgt_epochs,
                                      hard_strength=self.hard_strength)


def qgt(setup, bits, schedule=QGTSchedule(), overrides=None, method="qgt"):
    """Quantization-Guided Training (the recipe in the module docstring). ``overrides``: {layer: bits} for
    some or all layers (allocate_bits returns all)."""
    scheduler = schedule.scheduler(setup)
    model, pre_seconds, pre_history = setup.pretrained()
    quantized = conversion.quantize_model(model, _policy(setup, bits, schedule.start_strength, overrides))
    seconds, history = fit(quantized, setup, setup.finetune_epochs, setup.finetune_learning_rate,
                           [DeadChannelGuard(), scheduler, callbacks.QGTMonitor()])
    return _snapped_result(method, setup, quantized, kernel_sizes(model), pre_seconds + seconds,
                           _merge(pre_history, history), bits, schedule.reestimate_bn)


def qgt_mixed(setup, budget_bytes, schedule=QGTSchedule(), candidates=(8, 4, 2)):
    """QGT with per-layer bits from ``report.allocate_bits`` (least loss increase on the calibration slice
    within ``budget_bytes`` of packed kernels), measured on the pre-trained float model."""
    model, _, _ = setup.pretrained()
    start = time.perf_counter()
    compile_model(model, setup.finetune_learning_rate)
    allocation = report.allocate_bits(model, budget_bytes, setup.data.calibration, candidates)
    allocation_seconds = time.perf_counter() - start
    result = qgt(setup, min(candidates), schedule, overrides=allocation, method="qgt_mixed")
    result.bits = mean_bits(kernel_sizes(model), allocation)
    result.train_seconds += allocation_seconds
    return result


METHODS = {
    "float": float_training,
    "ptq": ptq,
    "qat_ste": qat_ste,
    "tfmot_qat": tfmot_qat,
    "tfmot_cluster": tfmot_cluster,
    "qgt": qgt,
    "qgt_mixed": qgt_mixed,
}


def build_setup(dataset, model_name, *, data_dir=None, alpha=0.25, grayscale=False, image_size=96, batch_size=32,
                limit=None, test_limit=None, init_from=None, seed=0, bn_momentum=0.9, augment=True, **setup_options):
    """Data and a model builder for a named data set and model (see :data:`models.MODELS`), seeded."""
    keras.utils.set_random_seed(seed)
    data = load_data(dataset, data_dir, image_size=image_size, grayscale=grayscale, batch_size=batch_size,
                     limit=limit, test_limit=test_limit, seed=seed, augment=augment)
    model_options = {"input_shape": data.input_shape, "num_classes": data.num_classes, "bn_momentum": bn_momentum}
    if model_name != "small_cnn":
        model_options["alpha"] = alpha

    def build_model():
        model = models.build_model(model_name, **model_options)
        return models.init_from(model, init_from) if init_from else model

    return Setup(data, build_model, **setup_options)
