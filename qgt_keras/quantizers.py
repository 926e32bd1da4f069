"""The b-bit weight grid, scale estimation and fake quantization of weights.

The grid. A b-bit weight is an integer code q times a per-output-channel scale s (value q * s):

    b = 1          q in {-1, +1}                        binary, no zero
    2 <= b <= 7    q in {-2^(b-1), ..., 2^(b-1) - 1}    e.g. b = 2: {-2, -1, 0, 1}
    b = 8          q in {-127, ..., 127}                TFLite's symmetric int8 weight range

Why this grid: every code is an int8 value, so an int8 TFLite weight tensor stores the codes exactly (same
per-channel scale, zero point 0) and the b-bit field of a code is simply its low b bits in two's complement
(b = 1: bit set for +1). Zero is on the grid for b >= 2, so weights that training drives to zero cost
nothing; the extra negative level of a two's complement range is kept because it is free.

Scales are per output channel: a per-channel grid stays a grid when BatchNorm is folded into the kernel
(folding multiplies each output channel by one number), a per-tensor grid does not.

All functions work on TensorFlow tensors (eager or in a graph); pass numpy arrays and call ``.numpy()`` on
the results to use them outside a model (the exporter does).
"""

import numpy as np
import tensorflow as tf

from qgt_keras.serialization import register

SCALE_METHODS = ("max", "mse", "lloyd")
# Step of the MSE-optimal uniform quantizer of a unit Gaussian with 2^b levels (Max, 1960): the starting
# point of the Lloyd iterations, indexed by bits.
_GAUSSIAN_STEP = {1: 1.596, 2: 0.9957, 3: 0.5860, 4: 0.3352, 5: 0.1881, 6: 0.1041, 7: 0.0569, 8: 0.0308}
_LLOYD_ITERATIONS = 3
# Scale of a 1-bit channel that is all zero: binary has no zero level, so make +-s negligible.
_ZERO_CHANNEL_SCALE_1BIT = 1e-8
# Uniformly spaced scale candidates (fractions of the clip-free max scale) searched by the MSE method.
_MSE_FRACTIONS = np.linspace(0.05, 1.0, 32)


def check_bits(bits, what="bits"):
    """Returns ``bits`` as an int, or raises ValueError naming ``what`` when it is not in 1..8."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 8:
        raise ValueError(f"{what} must be an integer in 1..8, got {bits!r}")
    return int(bits)


def code_range(bits):
    """Smallest and largest integer code of the b-bit grid (see the module docstring)."""
    bits = check_bits(bits)
    if bits == 1:
        return -1, 1
    if bits == 8:
        return -127, 127
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def channels_last_2d(w, channel_axes=-1):
    """Reshapes ``w`` to (elements per channel, channels); ``channel_axes`` must be trailing axes.

    Conv2D (kh, kw, cin, cout) and Dense (in, out) kernels use ``-1``; a DepthwiseConv2D kernel
    (kh, kw, cin, multiplier) uses ``(2, 3)``: its output channel c * multiplier + m is TFLite's order.
    ``None`` means one scale for the whole tensor.
    """
    w = tf.convert_to_tensor(w)
    rank = w.shape.rank
    if channel_axes is None:
        return tf.reshape(w, (-1, 1))
    axes = sorted({a % rank for a in np.atleast_1d(channel_axes).tolist()})
    if axes != list(range(rank - len(axes), rank)):
        raise ValueError(
            f"channel_axes {channel_axes!r} must be the trailing axes of a rank-{rank} kernel")
    channels = int(np.prod([w.shape[a] for a in axes]))
    return tf.reshape(w, (-1, channels))


def _codes(w2d, scale, bits):
    """Integer codes (as floats) of ``w2d`` on the grid with per-column ``scale``."""
    if bits == 1:
        return tf.where(w2d >= 0, tf.ones_like(w2d), -tf.ones_like(w2d))
    qmin, qmax = code_range(bits)
    return tf.clip_by_value(tf.round(w2d / scale), qmin, qmax)


def _max_abs(w2d):
    return tf.reduce_max(tf.abs(w2d), axis=0)


def max_scale(w2d, bits):
    """The smallest scale that clips nothing: max|w| / qmax (b = 1: mean|w|, the L2-optimal binary scale)."""
    bits = check_bits(bits)
    w2d = tf.convert_to_tensor(w2d, tf.float32)
    if bits == 1:
        scale = tf.reduce_mean(tf.abs(w2d), axis=0)
        return tf.where(scale > 0, scale, _ZERO_CHANNEL_SCALE_1BIT)
    max_abs = _max_abs(w2d)
    return tf.where(max_abs > 0, max_abs / code_range(bits)[1], tf.ones_like(max_abs))


def _squared_error(w2d, scale, bits):
    return tf.reduce_sum(tf.square(w2d - _codes(w2d, scale, bits) * scale), axis=0)


def _least_squares_scale(w2d, codes, fallback):
    """sum(w q) / sum(q^2) per column: the best scale for fixed codes (``fallback`` where it is not > 0)."""
    code_power = tf.reduce_sum(tf.square(codes), axis=0)
    scale = tf.reduce_sum(w2d * codes, axis=0) / tf.maximum(code_power, 1.0)
    return tf.where((code_power > 0) & (scale > 0), scale, fallback)


def _least_error(w2d, candidates, bits):
    """The per-column scale among ``candidates`` (K, C) with the smallest squared error."""
    errors = tf.reduce_sum(
        tf.square(w2d[None] - _codes(w2d[None], candidates[:, None], bits) * candidates[:, None]), axis=1)
    pick = tf.one_hot(tf.argmin(errors, axis=0), tf.shape(candidates)[0], axis=0)
    return tf.reduce_sum(candidates * pick, axis=0)


def mse_scale(w2d, bits):
    """Per-column scale that minimizes the squared quantization error.

    Searches the scales that put the largest weight exactly on a code (max|w| / k, k = 1..2^(b-1)) and 32
    fractions of the clip-free scale, searches again on a 17-point grid around the best, then takes one
    least-squares step (s = sum(w q) / sum(q^2)) if it helps. The first set makes weights that already lie
    on a grid quantize to themselves; the fractions find the clipping point of bell-shaped channels.
    """
    bits = check_bits(bits)
    w2d = tf.convert_to_tensor(w2d, tf.float32)
    if bits == 1:
        return max_scale(w2d, 1)
    clip_free = max_scale(w2d, bits)
    max_abs = _max_abs(w2d)
    safe_max = tf.where(max_abs > 0, max_abs, tf.ones_like(max_abs))
    on_code = tf.constant(1.0 / np.arange(1, 2 ** (bits - 1) + 1), tf.float32)[:, None] * safe_max
    fractions = tf.constant(_MSE_FRACTIONS, tf.float32)[:, None] * clip_free
    best = _least_error(w2d, tf.concat([on_code, fractions], axis=0), bits)
    step = float(_MSE_FRACTIONS[1] - _MSE_FRACTIONS[0])
    around = best + tf.constant(np.linspace(-step, step, 17), tf.float32)[:, None] * clip_free
    best = _least_error(w2d, tf.concat([best[None], tf.maximum(around, 1e-12)], axis=0), bits)
    refined = _least_squares_scale(w2d, _codes(w2d, best, bits), best)
    better = _squared_error(w2d, refined, bits) < _squared_error(w2d, best, bits)
    return tf.where(better, refined, best)


def lloyd_scale(w2d, bits):
    """A cheap near-MSE scale for use at every training step: start from the Gaussian-optimal step for the
    channel's RMS, then alternate nearest codes and the least-squares scale (Lloyd's iteration, which
    never increases the error) three times; keep the clip-free scale where that is better (fine grids,
    where the iteration stalls in a local minimum). Within a few percent of the MSE search up to 4 bits."""
    bits = check_bits(bits)
    w2d = tf.convert_to_tensor(w2d, tf.float32)
    if bits == 1:
        return max_scale(w2d, 1)
    rms = tf.sqrt(tf.reduce_mean(tf.square(w2d), axis=0))
    scale = tf.where(rms > 0, rms * _GAUSSIAN_STEP[bits], tf.ones_like(rms))
    for _ in range(_LLOYD_ITERATIONS):
        scale = _least_squares_scale(w2d, _codes(w2d, scale, bits), scale)
    return _least_error(w2d, tf.stack([scale, max_scale(w2d, bits)]), bits)


def estimate_scale(w, bits, method="mse", channel_axes=-1):
    """Per-channel scale of ``w`` for a b-bit grid by ``method``: "max" (clips nothing), "mse" (searched,
    for snapping and export) or "lloyd" (iterated, cheap enough for every training step); shape (channels,).
    """
    if method not in SCALE_METHODS:
        raise ValueError(f"scale method must be one of {SCALE_METHODS}, got {method!r}")
    w2d = tf.cast(channels_last_2d(w, channel_axes), tf.float32)
    return {"max": max_scale, "mse": mse_scale, "lloyd": lloyd_scale}[method](w2d, bits)


def quantize(w, bits, method="mse", channel_axes=-1, scale=None):
    """Integer codes (float tensor shaped like ``w``) and per-channel scales of ``w`` on the b-bit grid."""
    bits = check_bits(bits)
    w = tf.convert_to_tensor(w, tf.float32)
    if scale is None:
        scale = estimate_scale(w, bits, method, channel_axes)
    codes = _codes(channels_last_2d(w, channel_axes), scale, bits)
    return tf.reshape(codes, tf.shape(w)), scale


def dequantize(codes, scale, channel_axes=-1):
    """Inverse of :func:`quantize`: codes * per-channel scale, shaped like ``codes``."""
    codes = tf.convert_to_tensor(codes, tf.float32)
    return tf.reshape(channels_last_2d(codes, channel_axes) * scale, tf.shape(codes))


def snap(w, bits, method="mse", channel_axes=-1, scale=None):
    """``w`` replaced by its nearest grid values (no gradient; see :func:`fake_quantize`); ``scale``: the
    per-channel scales to use instead of estimating them by ``method``."""
    codes, scale = quantize(w, bits, method, channel_axes, scale)
    return dequantize(codes, scale, channel_axes)


def fake_quantize(w, bits, method="mse", channel_axes=-1, scale=None):
    """Forward: the snapped weights; backward: the identity (straight-through estimator)."""
    w = tf.convert_to_tensor(w)
    snapped = tf.cast(tf.stop_gradient(snap(w, bits, method, channel_axes, scale)), w.dtype)
    return w + tf.stop_gradient(snapped - w)


def squared_error(w, bits, method="mse", channel_axes=-1):
    """(||w - Q(w)||^2, ||w||^2) over the whole tensor: their ratio is the relative quantization error."""
    w = tf.convert_to_tensor(w, tf.float32)
    return tf.reduce_sum(tf.square(w - snap(w, bits, method, channel_axes))), tf.reduce_sum(tf.square(w))


@register
class WeightQuantizer:
    """b-bit per-channel STE fake quantizer for kernels: ``WeightQuantizer(bits=2)(kernel)``."""

    def __init__(self, bits=2, scale="mse", channel_axes=-1):
        self.bits = check_bits(bits)
        if scale not in SCALE_METHODS:
            raise ValueError(f"scale must be one of {SCALE_METHODS}, got {scale!r}")
        self.scale = scale
        self.channel_axes = tuple(channel_axes) if isinstance(channel_axes, (list, tuple)) else channel_axes

    @property
    def precision(self):
        return self.bits

    def __call__(self, w, scale=None):
        """Fake-quantized ``w``; ``scale``: per-channel scales to use instead of estimating them."""
        return fake_quantize(w, self.bits, self.scale, self.channel_axes, scale)

    def estimate_scale(self, w):
        """Per-channel scales of ``w`` by this quantizer's method."""
        return estimate_scale(w, self.bits, self.scale, self.channel_axes)

    def quantize(self, w):
        """(codes, scales) of ``w``."""
        return quantize(w, self.bits, self.scale, self.channel_axes)

    def get_config(self):
        return {"bits": self.bits, "scale": self.scale, "channel_axes": self.channel_axes}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
