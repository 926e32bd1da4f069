"""PNG figures: per-layer weight histograms against the b-bit grid."""

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qgt_keras import layer_kinds, quantizers  # noqa: E402

_HISTOGRAM_COLUMNS = 4
# Grid lines are drawn up to this width; wider grids are too dense to see.
_MAX_BITS_WITH_GRID_LINES = 4


def kernel_in_steps(kernel, bits, channel_axes, scale="mse"):
    """Flattened ``kernel`` divided by its per-channel grid scale: grid points are the integer codes."""
    w2d = quantizers.channels_last_2d(kernel, channel_axes)
    step = quantizers.estimate_scale(w2d, bits, scale)
    return (w2d / step).numpy().ravel()


def _kernel(model, name):
    layer = model.get_layer(name)
    kind = layer_kinds.kind_of(layer)
    if kind is None:
        raise ValueError(f"layer {name!r} of model {model.name!r} has no kernel")
    return kind.kernel(layer).numpy(), kind.channel_axes


def weight_histograms(before, after, bits_by_layer, path, title=None):
    """Writes a PNG with one panel per layer of ``bits_by_layer``: the kernel of ``before`` (e.g. the float
    model) and of ``after`` (e.g. after QGT) in units of grid steps of their own per-channel scale, the grid
    points as vertical lines. Weights on the grid show as spikes at the lines."""
    names = list(bits_by_layer)
    rows = max(1, -(-len(names) // _HISTOGRAM_COLUMNS))
    figure, axes = plt.subplots(rows, _HISTOGRAM_COLUMNS, figsize=(3.2 * _HISTOGRAM_COLUMNS, 2.2 * rows),
                                squeeze=False)
    for axis, name in zip(axes.flat, names):
        bits = bits_by_layer[name]
        low, high = quantizers.code_range(bits)
        if bits <= _MAX_BITS_WITH_GRID_LINES:  # bins of 0.1 step centered on the grid points
            edges = np.arange(low - 1.55, high + 1.6, 0.1)
        else:
            edges = np.linspace(low - 1.5, high + 1.5, 121)
        for model, label, color in ((before, "before", "tab:gray"), (after, "after", "tab:red")):
            kernel, channel_axes = _kernel(model, name)
            steps = np.clip(kernel_in_steps(kernel, bits, channel_axes), edges[0], edges[-1])
            axis.hist(steps, bins=edges, color=color, alpha=0.55, label=label)
        if bits <= _MAX_BITS_WITH_GRID_LINES:
            for code in range(low, high + 1):
                axis.axvline(code, color="black", linewidth=0.6, linestyle=":")
        axis.set_title(f"{name} ({bits}-bit)", fontsize=9)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.supxlabel("weight / per-channel grid step (grid points at integers)", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
