"""The QGT regularizer: a loss term that pulls each kernel onto its b-bit per-channel grid.

For a kernel W with output channels c, grid scale s_c, codes q = Q_b(w / s_c) (``quantizers.quantize``) and
r_b the largest code magnitude (|qmin|: 1, 2, 4, ... 64, 127), so that R_c = r_b * s_c is the channel's range:

    R(W) = strength * [ D(W) + outlier_weight * O(W) ]

    D(W) = sum_c sum_i ((w_ci - s_c q_ci) / R_c)^2          distance to the grid, relative to the range
    O(W) = sum_c sum_i relu(|w_ci| / R_c - 1)^2             distance beyond the range, relative to it

with s_c the (near) MSE-optimal scale of the current weights, and s_c and q held constant in the gradient, so
dD/dw_ci = 2 (w_ci - s_c q_ci) / R_c^2.

Why relative to the range: a BatchNorm after the layer makes the loss invariant to rescaling a channel by
a, which scales the data-loss gradient of its weights by 1/a; R_c scales with the weights, so the QGT
gradient scales the same way and one strength balances the two in every layer, whatever the size of its
weights. And the term measures how much the grid actually perturbs a channel: an 8-bit grid's half-step
error is 1/127 of the range, a 2-bit grid's 1/4, so 8-bit layers are left almost free while 2-bit layers
are pulled hard (measured in grid steps instead, an 8-bit layer would get a 64x larger gradient than a
2-bit one and could not learn). Why a sum (like L2): each weight gets the same pull whatever the size of
its layer, and the per-layer terms add up to the model's total distance from its grid, which is what the
bottleneck report compares.

Why the outlier term: a weight outside the grid's range has an unbounded error while a weight inside has at
most half a step. The MSE scale trades the two off, so a few outliers force a larger step on the whole
channel. O pulls outliers in harder than D alone, which lets the MSE scale shrink onto the bulk of the
channel: the distribution that results is a few tight clusters on a fine grid instead of a coarse grid
stretched to fit the tails.

The default schedule: a constant strength either pins the weights to the grid of their first steps (strong)
or leaves them off the grid (weak). So the term ramps itself: at training step t its strength is

    strength * start_fraction ** (1 - min(t / ramp_steps, 1))

geometric from ``start_fraction * strength`` to ``strength`` over ``ramp_steps`` steps, then held. The
network first learns the task nearly unregularized, then is pulled onto the grid while it still trains.
The step t counts the training steps that differentiate the term (``fit``'s steps; evaluation and the
report do not advance it). ``QGTScheduler`` sets the strength itself and turns the ramp off.
"""

import numbers

import tensorflow as tf
import tf_keras as keras

from qgt_keras import quantizers
from qgt_keras.layer_kinds import DEPTHWISE_CONV_2D
from qgt_keras.serialization import register

# The default schedule (module docstring), calibrated on a two-layer ReLU regression (docs/QGT.md,
# tests/test_regularizers.py): constant 0.05 or 5.0 snapped worse than plain training, this ramp better. It is
# also QGTScheduler's default ramp; quantize_model gives its regularizers DEFAULT_STRENGTH.
DEFAULT_STRENGTH = 0.1
DEFAULT_START_FRACTION = 1e-3
DEFAULT_RAMP_STEPS = 3000
# Channels whose range is below this fraction of the layer's largest are dead and left out of the term.
_DEAD_CHANNEL_FRACTION = 1e-6


@register
class QGTRegularizer(keras.regularizers.Regularizer):
    """``kernel_regularizer=QGTRegularizer(bits=2)``.

    Args:
      bits: grid width, 1..8.
      strength: the multiplier of the term at the end of its ramp; a callback may change it while training
        (it is a variable).
      outlier_weight: weight of the beyond-range term O relative to the grid term D.
      scale: how s_c is derived from the weights at every step: "lloyd" (default; near-MSE and cheap),
        "mse" (searched; more exact, slower) or "max" (clips nothing, so O is always 0).
      channel_axes: the kernel's output-channel axes: -1 for Conv2D/Dense, (2, 3) for DepthwiseConv2D. None
        (the default) takes them from the kernel the term is called on: (2, 3) for a layer's
        ``depthwise_kernel``, -1 for a ``kernel`` or a matrix; any other 4-D tensor is an error.
      base: an optional regularizer (e.g. the model's own L2) added to the QGT term.
      ramp_steps: training steps of the strength's geometric ramp (0: constant ``strength``).
      start_fraction: the strength at the first step, as a fraction of ``strength`` (0 < f <= 1).
      step: the training steps taken so far (a model that is loaded again continues its ramp).

    Apply one instance to one kernel, as ``kernel_regularizer=QGTRegularizer(2)`` does; an instance shared by
    several layers still counts each training step once.
    """

    def __init__(self, bits=2, strength=DEFAULT_STRENGTH, outlier_weight=1.0, scale="lloyd", channel_axes=None,
                 base=None, ramp_steps=DEFAULT_RAMP_STEPS, start_fraction=DEFAULT_START_FRACTION, step=0):
        self.bits = quantizers.check_bits(bits)
        for value, what in ((strength, "strength"), (outlier_weight, "outlier_weight"), (ramp_steps, "ramp_steps"),
                            (step, "step")):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf"):
                raise ValueError(f"QGTRegularizer {what} must be a finite number >= 0, got {value!r}")
        if isinstance(start_fraction, bool) or not isinstance(start_fraction, numbers.Real) \
                or not 0 < start_fraction <= 1:
            raise ValueError(f"QGTRegularizer start_fraction must be in (0, 1], got {start_fraction!r}")
        if scale not in quantizers.SCALE_METHODS:
            raise ValueError(f"scale must be one of {quantizers.SCALE_METHODS}, got {scale!r}")
        self.outlier_weight = float(outlier_weight)
        self.scale = scale
        self.channel_axes = tuple(channel_axes) if isinstance(channel_axes, (list, tuple)) else channel_axes
        self.base = keras.regularizers.get(base)
        self.start_fraction = float(start_fraction)
        self._strength = tf.Variable(float(strength), trainable=False, dtype=tf.float32, name="qgt_strength")
        self._ramp_steps = tf.Variable(float(ramp_steps), trainable=False, dtype=tf.float32, name="qgt_ramp_steps")
        # Advanced in the gradient of the term; under a tf.distribute strategy every replica takes the step
        # and the first one's count is kept.
        self._step = tf.Variable(float(step), trainable=False, dtype=tf.float32, name="qgt_step",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._kernels = set()  # ids of the kernels this instance is applied to, for one count per step

    @property
    def strength(self):
        return float(self._strength.numpy())

    @strength.setter
    def strength(self, value):
        self._strength.assign(float(value))

    @property
    def ramp_steps(self):
        return int(round(float(self._ramp_steps.numpy())))

    @ramp_steps.setter
    def ramp_steps(self, value):
        self._ramp_steps.assign(float(value))

    @property
    def step(self):
        return int(round(float(self._step.numpy())))

    def current_strength(self):
        """The strength the term has at the current step (a tensor): the ramp of the module docstring."""
        progress = tf.minimum(self._step / tf.maximum(self._ramp_steps, 1.0), 1.0)
        progress = tf.where(self._ramp_steps > 0, progress, 1.0)
        return self._strength * self.start_fraction ** (1.0 - progress)

    def kernel_channel_axes(self, kernel):
        """The output-channel axes the term uses for ``kernel`` (see ``channel_axes``)."""
        if self.channel_axes is not None:
            return self.channel_axes
        rank = len(kernel.shape)
        # A layer's kernel variable is named "<layer>/kernel:0" or "<layer>/depthwise_kernel:0".
        variable = str(getattr(kernel, "name", "") or "").rsplit("/", 1)[-1]
        if variable.startswith("depthwise_kernel"):
            return DEPTHWISE_CONV_2D.channel_axes
        if rank <= 2 or variable.startswith("kernel"):
            return -1
        raise ValueError(f"QGTRegularizer cannot tell the output channels of a rank-{rank} tensor "
                         f"{variable or '(unnamed)'}: pass channel_axes=-1 (Conv2D) or (2, 3) (DepthwiseConv2D)")

    def terms(self, kernel, scale=None):
        """(D, O): the grid and outlier terms of ``kernel``, without strength; ``scale``: the per-channel scales
        s_c to use instead of estimating them by ``self.scale`` (a layer's cached ones, see qgt_keras.layers)."""
        w2d = quantizers.channels_last_2d(tf.cast(kernel, tf.float32), self.kernel_channel_axes(kernel))
        if scale is None:
            scale = quantizers.estimate_scale(w2d, self.bits, self.scale, channel_axes=-1)
        scale = tf.stop_gradient(tf.cast(scale, tf.float32))
        reach = float(-quantizers.code_range(self.bits)[0])
        codes = tf.stop_gradient(quantizers.quantize(w2d, self.bits, scale=scale)[0])
        # Distances in units of the channel's range r_b * s_c (see the module docstring). A dead channel
        # (weights decayed to ~1e-30) would divide by ~0: it is already on any grid, so it is left out.
        channel_range = scale * reach
        live = channel_range > _DEAD_CHANNEL_FRACTION * tf.reduce_max(channel_range)
        position = tf.where(live, w2d / tf.where(live, channel_range, 1.0), 0.0)
        grid = tf.reduce_sum(tf.square(position - tf.where(live, codes / reach, 0.0)))
        outlier = tf.reduce_sum(tf.square(tf.nn.relu(tf.abs(position) - 1.0)))
        return grid, outlier

    def qgt_term(self, kernel, scale=None):
        """The QGT part of the loss for ``kernel`` now: current strength * (D + outlier_weight * O)."""
        grid, outlier = self.terms(kernel, scale)
        return self.current_strength() * (grid + self.outlier_weight * outlier)

    def _counting_steps(self, term, kernel):
        """``term``, whose gradient advances the step by one per training step (shared among the kernels)."""
        self._kernels.add(id(kernel))
        count = len(self._kernels)

        @tf.custom_gradient
        def identity(value):
            def gradient(upstream):
                with tf.control_dependencies([self._step.assign_add(1.0 / count)]):
                    return tf.identity(upstream)
            return tf.identity(value), gradient

        return identity(term)

    def __call__(self, kernel, scale=None):
        term = self._counting_steps(self.qgt_term(kernel, scale), kernel)
        if self.base is not None:
            term += tf.cast(self.base(kernel), term.dtype)
        return term

    def get_config(self):
        return {
            "bits": self.bits,
            "strength": self.strength,
            "outlier_weight": self.outlier_weight,
            "scale": self.scale,
            "channel_axes": self.channel_axes,
            "base": keras.regularizers.serialize(self.base) if self.base is not None else None,
            "ramp_steps": self.ramp_steps,
            "start_fraction": self.start_fraction,
            "step": self.step,
        }
