"""Training augmentation (the readers' ``augment=True``): the MLPerf Tiny VWW recipe, rotation up to 10
degrees, shifts up to 5% of each side, zoom by 0.9-1.1 per axis, random horizontal flip, edges filled with
the nearest pixel. It runs as one affine warp per batch with TF ops, seeded: a given ``seed`` gives the
same sequence of epochs.
"""

import numpy as np
import tensorflow as tf

# MLPerf Tiny VWW training augmentation ranges.
ROTATION_DEGREES = 10.0
SHIFT_FRACTION = 0.05
ZOOM_FRACTION = 0.1


def mlperf_augment(images, seed):
    """Randomly rotates, shifts, zooms and flips a batch of images (the MLPerf Tiny VWW recipe).

    Args:
        images: float tensor (batch, height, width, channels).
        seed: int tensor of shape (2,), the stateless random seed of this batch.

    Returns:
        The warped batch, same shape and value range (bilinear sampling, edges repeat the nearest pixel).
    """
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    u = tf.random.stateless_uniform((shape[0], 6), seed, minval=-1.0, maxval=1.0)
    angle = u[:, 0] * (ROTATION_DEGREES * np.pi / 180.0)
    shift_x, shift_y = u[:, 1] * SHIFT_FRACTION * width, u[:, 2] * SHIFT_FRACTION * height
    # Output pixel p samples input pixel R(angle) Z F (p - c) + c + shift: Z scales (zoom < 1 magnifies),
    # F mirrors x for the flipped half.
    zoom_x, zoom_y = 1.0 + u[:, 3] * ZOOM_FRACTION, 1.0 + u[:, 4] * ZOOM_FRACTION
    flip = tf.where(u[:, 5] < 0.0, -1.0, 1.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    a0, a1 = cos * zoom_x * flip, -sin * zoom_y
    b0, b1 = sin * zoom_x * flip, cos * zoom_y
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a2 = cx + shift_x - a0 * cx - a1 * cy
    b2 = cy + shift_y - b0 * cx - b1 * cy
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")
