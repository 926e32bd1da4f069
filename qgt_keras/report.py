"""The bottleneck report (``summary``) and automatic per-layer bit allocation (``allocate_bits``).

The report measures the model as it will be deployed: every quantized kernel on its grid. A layer's
sensitivity is what quantizing it costs there: the change in loss (and accuracy) between that layer's float
kernel and its grid values, every other layer on its grid. A layer is flagged as a compression bottleneck
when that loss change is at least ``bottleneck_factor`` times the mean over layers (without data: its
relative quantization error against the mean error). Run it before snapping: a snapped model has no float
kernels left to compare with.

``allocate_bits`` chooses widths before training, from a float model: there a layer's cost at b bits is the
loss change when only that layer is on its b-bit grid.
"""

import contextlib
import dataclasses
import json

import numpy as np
import tensorflow as tf
import tf_keras as keras

from qgt_keras import layer_kinds, quantizers
from qgt_keras.conversion import QuantizationPolicy, check_tf_keras_model, float_forward
from qgt_keras.layers import QuantizedKernel, quantized_kernels

BIT_CANDIDATES = (8, 4, 2)  # the widths allocate_bits chooses from: each is a storage width of the packer
_EVAL_CHUNK = 64


@dataclasses.dataclass
class LayerReport:
    name: str
    type: str
    bits: int
    params: int
    packed_bytes: int
    relative_error: float
    qgt_share: float
    delta_loss: float = None
    delta_accuracy_pts: float = None
    bottleneck: bool = False


@dataclasses.dataclass
class BottleneckReport:
    layers: list
    baseline_loss: float = None  # of the model as deployed
    baseline_accuracy: float = None
    examples: int = None

    @property
    def float_bytes(self):
        return 4 * sum(row.params for row in self.layers)

    @property
    def packed_bytes(self):
        return sum(row.packed_bytes for row in self.layers)

    @property
    def bottlenecks(self):
        return [row.name for row in self.layers if row.bottleneck]

    def to_dict(self):
        return {
            "layers": [dataclasses.asdict(row) for row in self.layers],
            "baseline_loss": self.baseline_loss,
            "baseline_accuracy": self.baseline_accuracy,
            "examples": self.examples,
            "float_bytes": self.float_bytes,
            "packed_bytes": self.packed_bytes,
            "bottlenecks": self.bottlenecks,
        }

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self):
        header = ("| layer | type | bits | params | packed B | rel. error | QGT share | d loss | d acc (pts) | |\n"
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
        lines = [
            f"| {row.name} | {row.type} | {row.bits} | {row.params:,} | {row.packed_bytes:,} | "
            f"{row.relative_error:.2e} | {row.qgt_share:.1%} | {_fmt(row.delta_loss, '+.4f')} | "
            f"{_fmt(row.delta_accuracy_pts, '+.1f')} | {'**bottleneck**' if row.bottleneck else ''} |"
            for row in self.layers]
        return header + "\n".join(lines) + "\n\n" + self._footer() + "\n"

    def _footer(self):
        ratio = self.float_bytes / self.packed_bytes if self.packed_bytes else float("nan")
        text = (f"Quantized kernels: {sum(row.params for row in self.layers):,} weights, "
                f"float {self.float_bytes:,} B -> packed {self.packed_bytes:,} B ({ratio:.1f}x smaller).")
        if self.baseline_accuracy is not None:
            text += (f" On {self.examples:,} evaluation examples, as deployed (every kernel on its grid): loss "
                     f"{self.baseline_loss:.4f}, accuracy {100 * self.baseline_accuracy:.1f}%; d loss, d acc: "
                     "quantizing the layer instead of leaving it float.")
        text += f" Bottlenecks: {', '.join(self.bottlenecks) or 'none'}."
        return text

    def __str__(self):
        columns = ["layer", "type", "bits", "params", "packed B", "rel.err", "QGT %", "d loss", "d acc"]
        cells = [[row.name, row.type, str(row.bits), f"{row.params:,}", f"{row.packed_bytes:,}",
                  f"{row.relative_error:.1e}", f"{100 * row.qgt_share:.1f}", _fmt(row.delta_loss, "+.4f"),
                  _fmt(row.delta_accuracy_pts, "+.1f") + (" <- bottleneck" if row.bottleneck else "")]
                 for row in self.layers]
        widths = [max(len(column), *(len(row[i]) for row in cells)) for i, column in enumerate(columns)]
        rule = "-" * (sum(widths) + 2 * len(widths))
        render = lambda row: "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()  # noqa: E731
        return "\n".join([rule, render(columns), rule, *map(render, cells), rule, self._footer()])


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _kernels(model, bits):
    """The quantized kernels of ``model``; for a float model, its supported layers at ``bits`` (an int, a
    {layer: bits} dict or a QuantizationPolicy)."""
    check_tf_keras_model(model)
    entries = quantized_kernels(model)
    if entries or bits is None:
        return entries
    if isinstance(bits, int):
        bits = QuantizationPolicy(bits=bits, edge_bits=None)
    # the scale the policy's layers would snap with; a bare {layer: bits} gets the policy default
    scale = bits.scale if isinstance(bits, QuantizationPolicy) else QuantizationPolicy.scale
    bits_by_layer = bits.resolve(model) if isinstance(bits, QuantizationPolicy) else dict(bits)
    found = []
    for name, layer_bits in bits_by_layer.items():
        layer = model.get_layer(name)
        kind = layer_kinds.kind_of(layer)
        if kind is None:
            raise ValueError(f"layer {name!r} of type {type(layer).__name__} has no kernel to quantize")
        found.append(QuantizedKernel(layer, kind.kernel(layer), quantizers.check_bits(layer_bits, name), None,
                                     kind.channel_axes, scale))
    return found


def _loss_function(model, loss):
    if loss is not None:
        return keras.losses.get(loss)
    if getattr(model, "loss", None) is not None:
        return keras.losses.get(model.loss)
    return keras.losses.SparseCategoricalCrossentropy()


def evaluate_batch(model, x, y, loss_fn):
    """(loss, accuracy) of ``model`` on arrays ``x``, ``y`` (integer or one-hot labels), inference mode."""
    outputs = np.concatenate(
        [model(x[i:i + _EVAL_CHUNK], training=False).numpy() for i in range(0, len(x), _EVAL_CHUNK)])
    loss = float(tf.reduce_mean(loss_fn(y, outputs)))
    labels = np.asarray(y)
    labels = labels.argmax(-1) if labels.ndim == 2 and labels.shape[-1] > 1 else labels.reshape(-1)
    predicted = outputs.argmax(-1) if outputs.shape[-1] > 1 else (outputs[:, 0] > 0.5).astype(int)
    return loss, float(np.mean(predicted == labels))


def _validation_arrays(validation_data):
    if isinstance(validation_data, tf.data.Dataset):
        xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in validation_data))
        return np.concatenate(xs), np.concatenate(ys)
    x, y = validation_data
    return np.asarray(x), np.asarray(y)


@contextlib.contextmanager
def _kernels_set(entries, values):
    """Within the block, each entry's kernel holds the matching array of ``values``; restored after."""
    originals = [entry.kernel.numpy() for entry in entries]
    try:
        for entry, value in zip(entries, values):
            entry.kernel.assign(tf.cast(value, entry.kernel.dtype))
        yield
    finally:
        for entry, original in zip(entries, originals):
            entry.kernel.assign(original)


def _sensitivity(model, entry, bits, x, y, loss_fn, baseline):
    """(d loss, d accuracy in points) when only ``entry``'s kernel is snapped to ``bits``."""
    with _kernels_set([entry], [quantizers.snap(entry.kernel, bits, entry.scale, entry.channel_axes)]):
        loss, accuracy = evaluate_batch(model, x, y, loss_fn)
    return loss - baseline[0], 100 * (accuracy - baseline[1])


def _deployed_sensitivities(model, entries, x, y, loss_fn):
    """((loss, accuracy) of the model with every kernel on its grid, [(d loss, d accuracy in points) of
    quantizing each layer there, i.e. its grid values against its float kernel]). Layers compute with the
    kernels set here (gates off)."""
    floats = [entry.kernel.numpy() for entry in entries]
    with float_forward(model), _kernels_set(entries, [entry.snapped() for entry in entries]):
        deployed = evaluate_batch(model, x, y, loss_fn)
        deltas = []
        for entry, kernel in zip(entries, floats):
            with _kernels_set([entry], [kernel]):
                loss, accuracy = evaluate_batch(model, x, y, loss_fn)
            deltas.append((deployed[0] - loss, 100 * (deployed[1] - accuracy)))
    return deployed, deltas


def summary(model, validation_data=None, bits=None, loss=None, bottleneck_factor=2.0, print_fn=print):
    """Per-layer bits, params, packed bytes (at the packer's storage widths), relative quantization error,
    share of the QGT term and (with ``validation_data``: (x, y) arrays or a finite tf.data.Dataset of batches,
    held-out training data rather than the test split) the sensitivity in the model as deployed (module
    docstring); flags the compression bottlenecks. Prints the table with ``print_fn`` (None: silent) and
    returns the report.

    A float model can be inspected at ``bits`` (an int, a {layer: bits} dict or a QuantizationPolicy).
    """
    entries = _kernels(model, bits)
    if not entries:
        raise ValueError(
            f"model {model.name!r} has no quantized kernels; pass bits= to inspect a float model")
    terms = {entry.name: entry.qgt_term() for entry in entries}
    total_term = sum(terms.values())
    rows = [LayerReport(
        name=entry.name, type=type(entry.layer).__name__, bits=entry.bits,
        params=int(np.prod(entry.kernel.shape)),
        packed_bytes=layer_kinds.packed_bytes(int(np.prod(entry.kernel.shape)), entry.bits),
        relative_error=entry.relative_error(),
        qgt_share=terms[entry.name] / total_term if total_term > 0 else 0.0) for entry in entries]
    report = BottleneckReport(rows)
    if validation_data is not None:
        x, y = _validation_arrays(validation_data)
        (report.baseline_loss, report.baseline_accuracy), deltas = _deployed_sensitivities(
            model, entries, x, y, _loss_function(model, loss))
        report.examples = len(x)
        for row, (delta_loss, delta_accuracy) in zip(rows, deltas):
            row.delta_loss, row.delta_accuracy_pts = delta_loss, delta_accuracy
    score = [row.delta_loss if validation_data is not None else row.relative_error for row in rows]
    mean_score = float(np.mean(score))
    for row, value in zip(rows, score):
        row.bottleneck = value > 0 and value >= bottleneck_factor * mean_score
    if print_fn is not None:
        print_fn(str(report))
    return report


def check_budget(sizes, budget_bytes, candidates=BIT_CANDIDATES):
    """Raises ValueError when ``budget_bytes`` is below the smallest size ``allocate_bits`` can reach for
    kernels of ``sizes`` ({layer name: weights}): every layer at the narrowest candidate."""
    narrowest = min(quantizers.check_bits(b, "candidate bits") for b in candidates)
    smallest = sum(layer_kinds.packed_bytes(n, narrowest) for n in sizes.values())
    if smallest > budget_bytes:
        raise ValueError(f"budget of {budget_bytes:,} B is below the smallest reachable size, {smallest:,} B "
                         f"(every layer at {narrowest} bits)")


def allocate_bits(model, budget_bytes, validation_data, candidates=BIT_CANDIDATES, loss=None, layers=None):
    """Per-layer bit widths whose packed kernels fit ``budget_bytes`` with the least total sensitivity.

    Measures each layer's loss change at each candidate width (only that layer quantized), starts every
    layer at the widest candidate and, while over budget, narrows the layer whose next step costs the least
    loss per byte saved (bytes at the packer's storage widths, so the budget asked for is the one got).
    Returns {layer name: bits}: pass it as ``QuantizationPolicy(overrides=...,
    edge_bits=None)``. ``layers`` limits the choice (and the budget) to those layers (default: all).
    """
    candidates = sorted({quantizers.check_bits(b, "candidate bits") for b in candidates}, reverse=True)
    entries = _kernels(model, QuantizationPolicy(bits=candidates[0], edge_bits=None))
    if layers is not None:
        unknown = sorted(set(layers) - {entry.name for entry in entries})
        if unknown:
            raise ValueError(f"allocate_bits: {unknown} are not quantizable layers of model {model.name!r}")
        entries = [entry for entry in entries if entry.name in layers]
    sizes = {entry.name: int(np.prod(entry.kernel.shape)) for entry in entries}
    check_budget(sizes, budget_bytes, candidates)
    x, y = _validation_arrays(validation_data)
    loss_fn = _loss_function(model, loss)
    with float_forward(model):
        baseline = evaluate_batch(model, x, y, loss_fn)
        cost = {entry.name: {b: max(_sensitivity(model, entry, b, x, y, loss_fn, baseline)[0], 0.0)
                             for b in candidates} for entry in entries}
    choice = {name: 0 for name in sizes}  # index into candidates
    packed = layer_kinds.packed_bytes
    total = lambda: sum(packed(sizes[n], candidates[i]) for n, i in choice.items())  # noqa: E731
    while total() > budget_bytes:
        def price(name):
            current, narrower = candidates[choice[name]], candidates[choice[name] + 1]
            saved = packed(sizes[name], current) - packed(sizes[name], narrower)
            return (cost[name][narrower] - cost[name][current]) / max(saved, 1)
        name = min((n for n in choice if choice[n] + 1 < len(candidates)), key=price)
        choice[name] += 1
    return {name: candidates[index] for name, index in choice.items()}
