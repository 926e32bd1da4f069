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
what the exporter converts), with BatchNormalization statistics re-estimated after snapping for every method
whose weights were quantized (their moving averages were collected on other weights), or anchored to the
teacher's (``Setup.anchor_batchnorm``).

Distillation (``Setup.distillation``, a :class:`Distillation`): every method's training, float included,
then learns from a frozen float teacher (``qgt_keras.distillation``) instead of the labels alone, so that
the methods stay comparable.

The QGT recipe (:class:`QGTSchedule`; docs/RECIPE.md has the measurements behind it): an optional QGT phase
(float forward pass, strength ramped in steps), then forward passes on the grid (STE) with a small QGT term
that keeps the float weights near their grid points, then snapping and BatchNormalization re-estimation.
First and last layers stay at 8 bits (``edge_bits``): the bottleneck report flags the first convolution, and
the two hold under 1% of the weights.
"""

import dataclasses
import time

import tf_keras as keras

from qgt_keras import callbacks, conversion, datasets, distillation, layer_kinds, models, report, serialization

LR_SCHEDULES = ("cosine", "constant")
# Batches of training data used to re-estimate BatchNormalization statistics after snapping.
BN_REESTIMATION_BATCHES = 20


@dataclasses.dataclass(frozen=True)
class Distillation:
    """Training against a frozen float teacher (``qgt_keras.distillation.Distiller``).

    ``teacher``: a saved float model (a .keras / .h5 path); None: the setup's float start (``pretrained()``),
    i.e. the student learns from the model it was quantized from. ``temperature`` and ``weight`` as in
    ``Distiller``.
    """

    teacher: str = None
    temperature: float = distillation.DEFAULT_TEMPERATURE
    weight: float = distillation.DEFAULT_WEIGHT


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
      distillation: a :class:`Distillation` for every method's training (pre-training stays on the labels),
        or None. With unlabeled images in ``data`` (``data.unlabeled``) the methods train on batches of
        labeled and unlabeled images, and BatchNormalization is re-estimated on the same mix.
      unlabeled_oversample: None, or (class index, share): the unlabeled images that the teacher assigns to
        that class make up ``share`` of the unlabeled batches (photos of other scenes rarely show a person:
        (1, 0.4) lets the student see the teacher's "person" on them; docs/RECIPE.md has the measurement).
      freeze_batchnorm: the methods train with BatchNormalization frozen (inference mode: the start's
        statistics, gamma and beta kept) and do not re-estimate it after snapping, so that no statistic comes
        from the training data alone (docs/RECIPE.md: it keeps a float student's function out of scene, and
        costs a 2-bit one dearly).
      anchor_batchnorm: the methods train with BatchNormalization normalizing by its moving statistics, which
        are anchored to the teacher's (``conversion.anchor_batchnorm`` on the methods' training batches)
        before training, after every epoch and after snapping instead of being re-estimated; gamma and beta
        train. Needs a ``distillation``; not with ``freeze_batchnorm``.
    """

    data: datasets.Data
    build_model: object
    pretrain_epochs: int = 0
    finetune_epochs: int = 3
    learning_rate: float = 3e-3
    finetune_learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    edge_bits: object = 8
    distillation: Distillation = None
    freeze_batchnorm: bool = False
    anchor_batchnorm: bool = False
    unlabeled_oversample: tuple = None
    verbose: int = 1
    _pretrained: tuple = dataclasses.field(default=None, repr=False)
    _teacher: object = dataclasses.field(default=None, repr=False)
    _float_result: object = dataclasses.field(default=None, repr=False)
    _unlabeled_batches: tuple = dataclasses.field(default=None, repr=False)  # ((what was read), batches)

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.pretrain_epochs < 0 or self.finetune_epochs < 1:
            raise ValueError("need pretrain_epochs >= 0 and finetune_epochs >= 1")
        if self.data.unlabeled is not None and self.distillation is None:
            raise ValueError("unlabeled images teach only through a teacher's soft targets: give the setup a "
                             "distillation")
        if self.anchor_batchnorm and (self.distillation is None or self.freeze_batchnorm):
            raise ValueError("anchor_batchnorm anchors BatchNormalization to a teacher: it needs a distillation "
                             "and excludes freeze_batchnorm")
        if self.unlabeled_oversample is not None and self.data.unlabeled is None:
            raise ValueError("unlabeled_oversample needs unlabeled images in the data (unlabeled_dir)")

    def method_data(self):
        """What the methods train on and re-estimate BatchNormalization with: the training batches, each with a
        batch of the unlabeled images appended if there are any."""
        if self.data.unlabeled is None:
            return self.data.train
        key = (self.data.unlabeled, self.unlabeled_oversample, self.distillation)
        if self._unlabeled_batches is None or self._unlabeled_batches[0] != key:
            oversample, share = None, 0.5
            if self.unlabeled_oversample is not None:
                chosen_class, share = self.unlabeled_oversample
                teacher = self.teacher()

                def oversample(images):
                    return teacher.predict(images, verbose=0, batch_size=256).argmax(-1) == chosen_class

            self._unlabeled_batches = key, self.data.unlabeled.read(oversample, share)
        return datasets.mix_unlabeled(self.data.train, self._unlabeled_batches[1])

    @property
    def total_epochs(self):
        return self.pretrain_epochs + self.finetune_epochs

    def pretrained(self):
        """(a new float model with the pre-trained weights, pre-training seconds, pre-training history)."""
        if self._pretrained is None:
            model = self.build_model()
            seconds, history = 0.0, {}
            if self.pretrain_epochs:
                seconds, history = fit(model, self, self.pretrain_epochs, self.learning_rate, pretraining=True)
            self._pretrained = (model.get_weights(), seconds, history)
        weights, seconds, history = self._pretrained
        model = self.build_model()
        model.set_weights(weights)
        return model, seconds, history

    def teacher(self):
        """The frozen teacher of ``distillation`` (loaded once), or None without distillation."""
        if self.distillation is None:
            return None
        if self._teacher is None:
            if self.distillation.teacher is None:
                self._teacher = self.pretrained()[0]
            else:
                self._teacher = serialization.load_model(models.weights_file(self.distillation.teacher))
        return self._teacher


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
    """Adam (cosine decay over ``decay_steps`` if given); the loss is cross-entropy, or a Distiller's own."""
    schedule = (keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps) if decay_steps
                else learning_rate)
    loss = None if isinstance(model, distillation.Distiller) else "sparse_categorical_crossentropy"
    model.compile(keras.optimizers.Adam(schedule), loss=loss, metrics=["accuracy"])


def fit(model, setup, epochs, learning_rate, extra_callbacks=(), pretraining=False):
    """Compiles (Adam, the setup's schedule) and fits ``model``; returns (seconds, history dict). A method's
    fit (not ``pretraining``) learns from the setup's teacher if it has one, with BatchNormalization frozen or
    anchored to the teacher if the setup says so."""
    decay_steps = epochs * setup.data.steps_per_epoch if setup.lr_schedule == "cosine" else None
    trained = model
    if setup.freeze_batchnorm and not pretraining:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    extra_callbacks = list(extra_callbacks)
    if setup.distillation is not None and not pretraining:
        trained = distillation.Distiller(model, setup.teacher(), setup.distillation.temperature,
                                         setup.distillation.weight, student_inference_mode=setup.anchor_batchnorm)
        if setup.anchor_batchnorm:
            extra_callbacks.append(callbacks.BatchNormAnchor(setup.teacher(), _batchnorm_batches(setup)))
    compile_model(trained, learning_rate, decay_steps)
    start = time.perf_counter()
    data = setup.data.train if pretraining else setup.method_data()
    history = trained.fit(data, epochs=epochs, callbacks=extra_callbacks, verbose=setup.verbose)
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


def _policy(setup, bits, strength=None, overrides=None, scale="mse", scale_interval=1):
    """Layers named in ``overrides`` get their bits, the first and last ``setup.edge_bits``, the rest ``bits``;
    ``strength`` None: no QGT term."""
    return conversion.QuantizationPolicy(bits=bits, overrides=dict(overrides or {}), edge_bits=setup.edge_bits,
                                         strength=strength, scale=scale, scale_interval=scale_interval)


def _batchnorm_batches(setup):
    """The methods' first training batches (``Setup.method_data``), those BatchNormalization is set on."""
    return [batch for batch, _ in zip(setup.method_data(), range(BN_REESTIMATION_BATCHES))]


def reestimate_batchnorm(model, setup):
    """Re-estimates ``model``'s BatchNormalization statistics on the methods' training data (weights frozen;
    ``Setup.method_data``), or anchors them to the teacher's on it if the setup says so; returns the seconds
    it took."""
    start = time.perf_counter()
    if setup.anchor_batchnorm:
        conversion.anchor_batchnorm(model, setup.teacher(), _batchnorm_batches(setup))
    else:
        conversion.recalibrate_batchnorm(model, setup.method_data(), BN_REESTIMATION_BATCHES)
    return time.perf_counter() - start


def _snapped_result(method, setup, quantized, sizes, seconds, history, nominal_bits, reestimate_bn=True):
    """Strips ``quantized`` into a plain model with snapped kernels, re-estimates its BatchNormalization
    statistics (or anchors them: ``Setup.anchor_batchnorm``; copied back into ``quantized``) unless told not
    to, and measures it. ``quantized`` is left in the hard-quantization phase: it then computes what the plain
    model computes."""
    conversion.set_hard_quantization(quantized, True)
    plain = conversion.strip_quantization(quantized, snap=True)
    if reestimate_bn and not setup.freeze_batchnorm:
        seconds += reestimate_batchnorm(plain, setup)
        for layer in plain.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                quantized.get_layer(layer.name).set_weights(layer.get_weights())
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
    ``reestimate_bn``: recompute the BatchNormalization statistics after snapping (as every weight-quantized
    method of the benchmark does; off only to measure what it is worth).
    ``scale_interval``: training steps between re-estimations of each layer's grid scales (1: every step;
    see qgt_keras.layers and benchmarks/step_time.py for what it saves).
    """

    qgt_epochs: int = 0
    start_strength: float = callbacks.DEFAULT_START_STRENGTH
    end_strength: float = callbacks.DEFAULT_END_STRENGTH
    ramp_fraction: float = 0.6
    hard_strength: float = 1e-4
    reestimate_bn: bool = True
    scale_interval: int = 1

    def scheduler(self, epochs, steps_per_epoch):
        """The QGTScheduler of a fit of ``epochs`` epochs of ``steps_per_epoch`` steps."""
        if not 0 <= self.qgt_epochs <= epochs:
            raise ValueError(f"qgt_epochs must be in 0..finetune_epochs ({epochs}), got {self.qgt_epochs}")
        qgt_steps = self.qgt_epochs * steps_per_epoch
        return callbacks.QGTScheduler(self.start_strength, self.end_strength, warmup_steps=0,
                                      ramp_steps=int(self.ramp_fraction * qgt_steps),
                                      hard_quantization_epochs=epochs - self.qgt_epochs,
                                      hard_strength=self.hard_strength)


def qgt(setup, bits, schedule=QGTSchedule(), overrides=None, method="qgt"):
    """Quantization-Guided Training (the recipe in the module docstring). ``overrides``: {layer: bits} for
    some or all layers (allocate_bits returns all)."""
    scheduler = schedule.scheduler(setup.finetune_epochs, setup.data.steps_per_epoch)
    model, pre_seconds, pre_history = setup.pretrained()
    quantized = conversion.quantize_model(
        model, _policy(setup, bits, schedule.start_strength, overrides, scale_interval=schedule.scale_interval))
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
                limit=None, test_limit=None, init_from=None, seed=0, bn_momentum=0.9, augment=True, unlabeled_dir=None,
                **setup_options):
    """Data and a model builder for a named data set and model (see :data:`models.MODELS`), seeded.
    ``unlabeled_dir``: unlabeled images for the distillation (``datasets.load_data``; ``unlabeled_oversample``
    in ``setup_options`` as :class:`Setup` says)."""
    keras.utils.set_random_seed(seed)
    data = datasets.load_data(dataset, data_dir, image_size=image_size, grayscale=grayscale, batch_size=batch_size,
                              limit=limit, test_limit=test_limit, seed=seed, augment=augment,
                              unlabeled_dir=unlabeled_dir)
    model_options = {"input_shape": data.input_shape, "num_classes": data.num_classes, "bn_momentum": bn_momentum}
    if model_name != "small_cnn":
        model_options["alpha"] = alpha

    def build_model():
        model = models.build_model(model_name, **model_options)
        return models.init_from(model, init_from) if init_from else model

    return Setup(data, build_model, **setup_options)
