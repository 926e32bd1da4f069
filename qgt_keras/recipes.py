"""Training recipes behind one harness: float training, post-training quantization (PTQ), plain STE QAT,
QGT and QGT with automatic mixed precision, as ``qgt-train`` runs them. (The baselines that exist only to
be compared against, tfmot QAT and clustering, sit beside the benchmark: ``benchmarks/baselines.py``.)

Every method has the signature ``method(setup, bits, **options) -> RecipeResult`` (``qgt_mixed`` takes a byte
budget instead of bits) and the same training budget:

* a shared float pre-training phase of ``setup.pretrain_epochs`` (trained once per setup and reused; each
  method's ``train_seconds`` includes its time), then
* ``setup.finetune_epochs`` of the method itself, from the pre-trained weights (float continues in float;
  PTQ quantizes the float model after them).

Accuracy is always measured on the quantized model: kernels snapped to their grid (a plain tf_keras model,
what the exporter converts).

The QGT recipe (:class:`QGTSchedule`; docs/RECIPE.md has the measurements behind it): an optional QGT phase
(float forward pass, strength ramped in steps), then forward passes on the grid (STE) with a small QGT term
that keeps the float weights near their grid points, then snapping and BatchNormalization re-estimation.
First and last layers stay at 8 bits (``edge_bits``): the bottleneck report flags the first convolution, and
the two hold under 1% of the weights.
"""

import dataclasses
import time

import tf_keras as keras

from qgt_keras import callbacks, conversion, datasets, layer_kinds, models, report

LR_SCHEDULES = ("cosine", "constant")
# Batches of training data used to re-estimate BatchNormalization statistics after snapping.
BN_REESTIMATION_BATCHES = 20


@dataclasses.dataclass
class Setup:
    """What every method shares: data, the float model to start from and the training budget.

    Args:
      data: a :class:`qgt_keras.datasets.Data`.
      build_model: () -> a new float tf_keras model (with its initial weights, e.g. from ``init_from``).
      pretrain_epochs: float epochs shared by all methods (0 when ``build_model`` is already trained).
      finetune_epochs: epochs of each method after pre-training.
      learning_rate: Adam learning rate of pre-training; ``finetune_learning_rate`` that of fine-tuning.
      lr_schedule: "cosine" (decay to 0 over each phase) or "constant".
      edge_bits: bits of the first and last quantized layer for ptq, qat_ste and qgt (None: same as the rest).
    """

    data: datasets.Data
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

    ``model`` is the model that was evaluated (for the quantized methods: the plain tf_keras model with
    snapped kernels); ``qgt_model`` the quantized-layer model it was stripped from (ptq, qat_ste, qgt), in
    the hard-quantization phase, so that it computes what ``model`` computes.
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


def merge_histories(*histories):
    """One history dict from several fits in a row (each key's values appended in order)."""
    merged = {}
    for history in histories:
        for key, values in history.items():
            merged.setdefault(key, []).extend(values)
    return merged


def _policy(setup, bits, strength=0.0, overrides=None, scale="mse"):
    """Layers named in ``overrides`` get their bits, the first and last ``setup.edge_bits``, the rest ``bits``."""
    return conversion.QuantizationPolicy(bits=bits, overrides=dict(overrides or {}), edge_bits=setup.edge_bits,
                                         strength=strength, scale=scale)


def _snapped_result(method, setup, quantized, sizes, seconds, history, nominal_bits, reestimate_bn=False):
    """Strips ``quantized`` into a plain model with snapped kernels (re-estimating its BatchNormalization
    statistics, copied back into ``quantized``, if asked) and measures it. ``quantized`` is left in the
    hard-quantization phase: it then computes what the plain model computes."""
    conversion.set_hard_quantization(quantized, True)
    plain = conversion.strip_quantization(quantized, snap=True)
    if reestimate_bn:
        start = time.perf_counter()
        conversion.recalibrate_batchnorm(plain, setup.data.train, BN_REESTIMATION_BATCHES)
        for layer in plain.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                quantized.get_layer(layer.name).set_weights(layer.get_weights())
        seconds += time.perf_counter() - start
    bits_by_layer = conversion.layer_bits(quantized)
    return RecipeResult(method, nominal_bits, plain, bits_by_layer, layer_kinds.weight_bytes(sizes, bits_by_layer),
                        seconds, evaluate(plain, setup.data), history, quantized)


def float_training(setup, bits=layer_kinds.FLOAT_BITS):
    """Float training for the whole budget (computed once per setup; PTQ quantizes this model)."""
    if bits != layer_kinds.FLOAT_BITS:
        raise ValueError(f"float training has {layer_kinds.FLOAT_BITS}-bit weights, got bits={bits}")
    if setup._float_result is None:
        model, pre_seconds, pre_history = setup.pretrained()
        seconds, history = fit(model, setup, setup.finetune_epochs, setup.finetune_learning_rate)
        sizes = layer_kinds.kernel_sizes(model)
        setup._float_result = RecipeResult(
            "float", layer_kinds.FLOAT_BITS, model, {}, layer_kinds.weight_bytes(sizes, {}), pre_seconds + seconds,
            evaluate(model, setup.data), merge_histories(pre_history, history))
    return setup._float_result


def ptq(setup, bits, scale="mse", overrides=None):
    """Post-training quantization of the float model: kernels snapped to the b-bit grid with "max" or
    "mse" per-channel scales."""
    trained = float_training(setup)
    quantized = conversion.quantize_model(trained.model, _policy(setup, bits, overrides=overrides, scale=scale))
    return _snapped_result(f"ptq_{scale}", setup, quantized, layer_kinds.kernel_sizes(trained.model),
                           trained.train_seconds, trained.history, bits)


def qat_ste(setup, bits, overrides=None):
    """Plain straight-through QAT: our quantized layers on the grid from the first fine-tuning step, no
    regularizer."""
    model, pre_seconds, pre_history = setup.pretrained()
    quantized = conversion.quantize_model(model, _policy(setup, bits, overrides=overrides))
    conversion.set_hard_quantization(quantized, True)
    seconds, history = fit(quantized, setup, setup.finetune_epochs, setup.finetune_learning_rate)
    return _snapped_result("qat_ste", setup, quantized, layer_kinds.kernel_sizes(model), pre_seconds + seconds,
                           merge_histories(pre_history, history), bits)


@dataclasses.dataclass(frozen=True)
class QGTSchedule:
    """The two phases of QGT fine-tuning and their strengths (see docs/RECIPE.md for the measurements).

    * ``qgt_epochs`` first epochs (default 0): float forward pass, the strength ramped geometrically in
      steps from ``start_strength`` to ``end_strength`` (``QGTScheduler``'s defaults) over ``ramp_fraction``
      of them, then held;
    * the remaining epochs: forward pass on the grid (straight-through gradients) with the QGT term at
      ``hard_strength``, which keeps the float weights near their grid points.
    Strengths multiply a sum over all weights of squared distances relative to the channel's grid range.
    ``reestimate_bn``: recompute the BatchNormalization statistics after snapping.
    """

    qgt_epochs: int = 0
    start_strength: float = callbacks.DEFAULT_START_STRENGTH
    end_strength: float = callbacks.DEFAULT_END_STRENGTH
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
                           [scheduler, callbacks.QGTMonitor()])
    return _snapped_result(method, setup, quantized, layer_kinds.kernel_sizes(model), pre_seconds + seconds,
                           merge_histories(pre_history, history), bits, schedule.reestimate_bn)


def qgt_mixed(setup, budget_bytes, schedule=QGTSchedule(), candidates=report.BIT_CANDIDATES):
    """QGT with per-layer bits from ``report.allocate_bits`` (least loss increase on the calibration slice
    within ``budget_bytes`` of packed kernels), measured on the pre-trained float model."""
    model, _, _ = setup.pretrained()
    start = time.perf_counter()
    compile_model(model, setup.finetune_learning_rate)
    allocation = report.allocate_bits(model, budget_bytes, setup.data.calibration, candidates)
    allocation_seconds = time.perf_counter() - start
    result = qgt(setup, min(candidates), schedule, overrides=allocation, method="qgt_mixed")
    result.bits = layer_kinds.mean_bits(layer_kinds.kernel_sizes(model), allocation)
    result.train_seconds += allocation_seconds
    return result


def build_setup(dataset, model_name, *, data_dir=None, alpha=0.25, grayscale=False, image_size=96, batch_size=32,
                limit=None, test_limit=None, init_from=None, seed=0, bn_momentum=0.9, augment=True, **setup_options):
    """Data and a model builder for a named data set and model (see :data:`models.MODELS`), seeded."""
    keras.utils.set_random_seed(seed)
    data = datasets.load_data(dataset, data_dir, image_size=image_size, grayscale=grayscale, batch_size=batch_size,
                              limit=limit, test_limit=test_limit, seed=seed, augment=augment)
    model_options = {"input_shape": data.input_shape, "num_classes": data.num_classes, "bn_momentum": bn_momentum}
    if model_name != "small_cnn":
        model_options["alpha"] = alpha

    def build_model():
        model = models.build_model(model_name, **model_options)
        return models.init_from(model, init_from) if init_from else model

    return Setup(data, build_model, **setup_options)
