"""Knowledge distillation: train a (quantized) student against a frozen float teacher.

``Distiller(student, teacher, temperature, weight)`` is a tf_keras model that computes what ``student``
computes and trains it with, per example,

    loss = (1 - weight) * CE(y, p_s) + weight * T^2 * KL(q_t || q_s),    q = softmax(log(p) / T)

where p_s and p_t are the student's and the teacher's class probabilities, CE the cross-entropy with the
integer label y (0 for examples labeled ``UNLABELED``: they teach through the soft term alone) and T
the temperature (T^2 keeps the soft term's gradient at the size of the hard one's as T
grows; Hinton et al. 2015). ``weight = 1`` trains on the teacher's soft targets alone: labels are then not
needed, so any image the teacher sees teaches the student (``qgt_keras.datasets.load_data(unlabeled_dir=...)``
appends unlabeled images of other scenes to every batch; training accuracy counts the labeled examples only).
Both models output probabilities (a softmax); log(p) is their logits up to a constant per example, which a
softmax ignores. The loss adds the student's regularization losses (its QGT terms) unweighted.

The teacher is frozen (not trainable, BatchNormalization in inference mode) and predicts every batch once,
in the training step; nothing is stored. Build and compile the Distiller inside a ``tf.distribute``
strategy's scope like any model: the loss is reduced over the global batch as Keras' own losses are.

    distiller = Distiller(qgt_model, teacher, temperature=2.0, weight=1.0)
    distiller.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    distiller.fit(train, epochs=3, callbacks=[QGTScheduler(...)])   # the callbacks act on the student
    qgt_model.save(...)                                             # the student is trained in place

Evaluation (``distiller.evaluate``) reports the same loss on held-out data; accuracy is the student's.

``student_inference_mode=True`` calls the student in inference mode in training too: its BatchNormalization
layers normalize with their moving statistics and leave them alone, while all its weights (gamma and beta
included) train; statistics set from outside then hold for the whole fit (``conversion.anchor_batchnorm``,
``callbacks.BatchNormAnchor``). Quantized layers with a ``scale_interval`` then estimate their scales at
every step, as they do in inference.
"""

import tensorflow as tf
import tf_keras as keras

# The label of an example without a class (an unlabeled image): it teaches through the soft targets alone.
UNLABELED = -1
DEFAULT_TEMPERATURE = 2.0
DEFAULT_WEIGHT = 1.0
# Probabilities are floored before the log: float32 softmax outputs underflow to 0 below ~1e-38.
_PROBABILITY_FLOOR = 1e-30


def _check_outputs_probabilities(model, role):
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if not (isinstance(last, keras.layers.Softmax) or activation == "softmax"):
        raise ValueError(f"distillation needs models that output class probabilities: the {role} {model.name!r} "
                         f"ends in layer {last.name!r} ({type(last).__name__}) without a softmax")


def log_soft_targets(probabilities, temperature):
    """log softmax(log(p) / T) of class probabilities ``p`` (batch, classes)."""
    logits = tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32), _PROBABILITY_FLOOR))
    return tf.nn.log_softmax(logits / temperature, axis=-1)


def distillation_losses(labels, student_probabilities, teacher_probabilities, temperature, weight):
    """Per-example (total, hard, soft) losses of the module docstring; ``labels`` may be None when weight is 1;
    an example labeled ``UNLABELED`` has no hard loss."""
    teacher_log = tf.stop_gradient(log_soft_targets(teacher_probabilities, temperature))
    student_log = log_soft_targets(student_probabilities, temperature)
    soft = temperature ** 2 * tf.reduce_sum(tf.exp(teacher_log) * (teacher_log - student_log), axis=-1)
    if labels is None:
        hard = tf.zeros_like(soft)
    else:
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        labeled = labels != UNLABELED
        hard = keras.losses.sparse_categorical_crossentropy(tf.where(labeled, labels, 0), student_probabilities)
        hard = tf.where(labeled, hard, 0.0)
    return (1.0 - weight) * hard + weight * soft, hard, soft


class Distiller(keras.Model):
    """Trains ``student`` against the frozen ``teacher`` (see the module docstring).

    Args:
      student: the tf_keras model to train (e.g. ``quantize_model``'s result); trained in place.
      teacher: a float tf_keras model with the same inputs and classes; frozen here.
      temperature: T > 0 of the soft targets.
      weight: 0..1, the share of the soft term (1: the teacher's targets only, labels unused).
      student_inference_mode: call the student in inference mode in training too (see the module docstring).
    """

    def __init__(self, student, teacher, temperature=DEFAULT_TEMPERATURE, weight=DEFAULT_WEIGHT,
                 student_inference_mode=False, **kwargs):
        super().__init__(name=kwargs.pop("name", f"{student.name}_distilled"), **kwargs)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"distillation weight must be in [0, 1], got {weight!r}")
        if not temperature > 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature!r}")
        for model, role in ((student, "student"), (teacher, "teacher")):
            _check_outputs_probabilities(model, role)
        if tuple(student.input_shape[1:]) != tuple(teacher.input_shape[1:]):
            raise ValueError(f"the student {student.name!r} takes inputs {student.input_shape[1:]}, the teacher "
                             f"{teacher.name!r} {teacher.input_shape[1:]}")
        if student.output_shape[-1] != teacher.output_shape[-1]:
            raise ValueError(f"the student {student.name!r} has {student.output_shape[-1]} classes, the teacher "
                             f"{teacher.name!r} {teacher.output_shape[-1]}")
        teacher.trainable = False
        self.student = student
        self.teacher = teacher
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.student_inference_mode = bool(student_inference_mode)
        self._trackers = {name: keras.metrics.Mean(name) for name in ("loss", "hard_loss", "distillation_loss")}

    def call(self, inputs, training=None):
        return self.student(inputs, training=False if self.student_inference_mode else training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Like Model.compile; the loss is the distillation loss (passing ``loss`` is an error)."""
        if loss is not None:
            raise ValueError("a Distiller's loss is the distillation loss: compile it without loss=")
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        if y is None and self.weight < 1.0:
            raise ValueError(f"distillation weight {self.weight} < 1 mixes in hard labels: the data must have them")
        teacher_probabilities = self.teacher(x, training=False)
        total, hard, soft = distillation_losses(y, y_pred, teacher_probabilities, self.temperature, self.weight)
        if sample_weight is not None:
            sample_weight = tf.reshape(tf.cast(sample_weight, total.dtype), [-1])
            total, hard, soft = (loss * sample_weight for loss in (total, hard, soft))
        for name, value in (("hard_loss", hard), ("distillation_loss", soft)):
            self._trackers[name].update_state(tf.reduce_mean(value))
        loss = tf.reduce_mean(total)
        if self.student.losses:  # its QGT terms and weight decay (not the teacher's)
            loss += tf.add_n(self.student.losses)
        self._trackers["loss"].update_state(loss)
        # Gradients are summed over replicas: each contributes its share of the global batch's mean.
        return loss / tf.distribute.get_strategy().num_replicas_in_sync

    def compute_metrics(self, x, y, y_pred, sample_weight):
        """The compiled metrics (the student's accuracy) over the labeled examples only."""
        if y is not None:  # (compile's metrics ignore sample weights: the unlabeled rows are left out)
            labeled = tf.reshape(y, [-1]) != UNLABELED
            y, y_pred = tf.boolean_mask(tf.reshape(y, [-1]), labeled), tf.boolean_mask(y_pred, labeled)
            if sample_weight is not None:
                sample_weight = tf.boolean_mask(tf.reshape(sample_weight, [-1]), labeled)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    @property
    def metrics(self):
        return list(self._trackers.values()) + (self.compiled_metrics.metrics if self._is_compiled else [])


def student_of(model):
    """The model a training callback acts on: a Distiller's student, or ``model`` itself."""
    return model.student if isinstance(model, Distiller) else model
