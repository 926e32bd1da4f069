"""Training callbacks: the QGT strength schedule with the hand-over to hard quantization, the monitor
that puts the QGT term (total and per layer) into the fit logs, and the anchoring of BatchNormalization
statistics to a teacher."""

import math

import tf_keras as keras
from absl import logging

from qgt_keras import conversion
from qgt_keras.distillation import student_of
from qgt_keras.layers import quantized_kernels
from qgt_keras import regularizers

# The default schedule is the regularizer's own default ramp.
DEFAULT_END_STRENGTH = regularizers.DEFAULT_STRENGTH
DEFAULT_START_STRENGTH = regularizers.DEFAULT_STRENGTH * regularizers.DEFAULT_START_FRACTION
DEFAULT_RAMP_STEPS = regularizers.DEFAULT_RAMP_STEPS


class QGTScheduler(keras.callbacks.Callback):
    """Sets the strength of every QGT regularizer of the model by training step (in place of the regularizers'
    own ramps, which it turns off), and switches the model to hard quantization for its last epochs.

    Strength at step t (counted from the first epoch of training: a ``fit`` that resumes at
    ``initial_epoch > 0`` continues the count of the previous ``fit`` with this scheduler):
      0                                                  for t < warmup_steps
      start * (end / start) ** ((t - warmup_steps) / ramp_steps)    during the ramp (geometric)
      end                                                afterwards
    The schedule is set in steps, not epochs: the pull a weight receives depends on how many updates it
    sees, so a schedule in epochs would behave differently on a data set with more steps per epoch.

    With ``hard_quantization_epochs = k``, the last k epochs of the ``fit`` (up to its ``epochs``) run with
    the quantized layers' forward pass on the grid (straight-through gradients) and the strength set to
    ``hard_strength`` (default: 0, so the data loss alone adapts the network to its quantized weights; the
    QGT phase has already put the float weights on the grid, which keeps the STE updates from flipping codes
    back and forth).
    """

    def __init__(self, start_strength=DEFAULT_START_STRENGTH, end_strength=DEFAULT_END_STRENGTH, warmup_steps=0,
                 ramp_steps=DEFAULT_RAMP_STEPS, hard_quantization_epochs=0, hard_strength=0.0, verbose=0):
        super().__init__()
        if not 0 < start_strength <= end_strength:
            raise ValueError(
                f"need 0 < start_strength <= end_strength, got {start_strength!r} and {end_strength!r}")
        if warmup_steps < 0 or ramp_steps < 0 or hard_quantization_epochs < 0:
            raise ValueError("warmup_steps, ramp_steps and hard_quantization_epochs must be >= 0")
        self.start_strength = float(start_strength)
        self.end_strength = float(end_strength)
        self.warmup_steps = int(warmup_steps)
        self.ramp_steps = int(ramp_steps)
        self.hard_quantization_epochs = int(hard_quantization_epochs)
        self.hard_strength = float(hard_strength)
        self.verbose = verbose
        self._hard = False
        self.step = 0
        self._current = None

    def strength_at(self, step):
        if step < self.warmup_steps:
            return 0.0
        if self.ramp_steps == 0 or step >= self.warmup_steps + self.ramp_steps:
            return self.end_strength
        progress = (step - self.warmup_steps) / self.ramp_steps
        return self.start_strength * math.exp(progress * math.log(self.end_strength / self.start_strength))

    def _regularizers(self):
        return [entry.regularizer for entry in quantized_kernels(student_of(self.model))
                if entry.regularizer is not None]

    def on_train_begin(self, logs=None):
        self._current = None
        self._targets = self._regularizers()
        if not self._targets:
            raise ValueError(f"model {self.model.name!r} has no QGT regularizer to schedule; convert it with "
                             "quantize_model or give its layers a QGTRegularizer")
        for regularizer in self._targets:
            regularizer.ramp_steps = 0

    def on_train_batch_begin(self, batch, logs=None):
        strength = self.hard_strength if self._hard else self.strength_at(self.step)
        if strength != self._current:
            for regularizer in self._targets:
                regularizer.strength = strength
            self._current = strength
        self.step += 1

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0:  # training from the first epoch: the schedule starts over (a resumed fit continues)
            self.step = 0
        hard = epoch >= self.params["epochs"] - self.hard_quantization_epochs
        conversion.set_hard_quantization(student_of(self.model), hard)
        self._hard = hard
        if hard and self.verbose:
            logging.info("epoch %d: hard quantization (forward pass on the grid)", epoch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["qgt_strength"] = self._current if self._current is not None else 0.0


class QGTMonitor(keras.callbacks.Callback):
    """Adds to the epoch logs (and so to History, CSVLogger, TensorBoard placed after it):

      qgt_loss         the QGT term of the loss (sum over layers, with the current strengths)
      qgt/<layer>      each layer's QGT term
      qgt_error        relative quantization error ||W - Q(W)||^2 / ||W||^2 over all quantized kernels
    and, with ``verbose``, prints a line with the layers that hold the largest shares of the term.
    """

    def __init__(self, verbose=0, top=5):
        super().__init__()
        self.verbose = verbose
        self.top = top

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        entries = quantized_kernels(student_of(self.model))
        terms = {entry.name: entry.qgt_term() for entry in entries}
        total = sum(terms.values())
        logs["qgt_loss"] = total
        logs.update({f"qgt/{name}": term for name, term in terms.items()})
        errors, powers = zip(*(entry.squared_error() for entry in entries)) if entries else ((), ())
        logs["qgt_error"] = sum(errors) / sum(powers) if sum(powers) > 0 else 0.0
        if self.verbose:
            largest = sorted(terms.items(), key=lambda item: -item[1])[: self.top]
            shares = ", ".join(f"{name} {term / total:.0%}" for name, term in largest) if total > 0 else "-"
            print(f"epoch {epoch + 1}: qgt_loss {total:.4g}, qgt_error {logs['qgt_error']:.3g} "
                  f"(largest: {shares})")


class BatchNormAnchor(keras.callbacks.Callback):
    """Anchors the model's BatchNormalization statistics to ``reference`` (``conversion.anchor_batchnorm`` on
    ``batches``) before training and after every epoch, for a fit that leaves the statistics alone in between
    (``Distiller(..., student_inference_mode=True)``): the weights move, and the statistics follow them. The
    reference does not change, so its moments on ``batches`` are computed once, at the start of training."""

    def __init__(self, reference, batches):
        super().__init__()
        self.reference, self.batches = reference, list(batches)
        self.reference_moments = None

    def _anchor(self):
        conversion.anchor_batchnorm(student_of(self.model), self.reference, self.batches,
                                    reference_moments=self.reference_moments)

    def on_train_begin(self, logs=None):
        self.reference_moments = conversion.batchnorm_input_moments(self.reference, self.batches)
        self._anchor()

    def on_epoch_end(self, epoch, logs=None):
        self._anchor()
