"""tflm_export.memory_plan: the static buffer plan of the generated C model, checked by simulating the
kernels' documented access order byte by byte on random graphs, and its peak on MobileNet's layer chain."""

import dataclasses

import numpy as np
import pytest

from tflm_export import memory_plan as mp

SCRATCH_TAG = -2
_ELEMENTS = 1 << 24  # tag = tensor * _ELEMENTS + element


@dataclasses.dataclass
class Op:
    """A step as the simulator sees it: what the kernel reads and writes in which order."""
    kind: str  # "pointwise", "depthwise", "opaque", "view"
    inputs: tuple
    output: int
    scratch: int = 0
    geometry: dict = dataclasses.field(default_factory=dict)


def _step(op, shapes):
    """The planner's Step of a simulated op, its overlap from the memory_plan rule functions."""
    g = op.geometry
    if op.kind == "pointwise":
        overlap = mp.pointwise_overlap(g["pixels"], g["in_c"], g["out_c"])
    elif op.kind == "depthwise":
        n, h, w, c = shapes[op.inputs[0]]
        _, oh, ow, oc = shapes[op.output]
        overlap = mp.depthwise_overlap(n, (h, w, c), (oh, ow, oc), g["kernel_h"], g["stride_h"], g["dilation_h"],
                                       g["padding_h"])
    elif op.kind == "view":
        overlap = mp.Overlap.view()
    else:
        overlap = mp.Overlap.none()
    return mp.Step(tuple(op.inputs), op.output, overlap, op.scratch)


def simulate(ops, shapes, plan, graph_inputs, graph_outputs):
    """Runs the ops on tagged bytes in the order the kernels document; returns the problems seen."""
    sizes = {t: int(np.prod(s)) for t, s in shapes.items()}
    root = {t: t for t in shapes}
    for op in ops:
        if op.kind == "view":
            root[op.output] = root[op.inputs[0]]
    memory = np.full(plan.size, -1, np.int64)
    problems = []

    def where(t):
        offset = plan.offsets[t]
        if offset < 0 or offset + sizes[t] > plan.size:
            problems.append(f"tensor {t} at {offset} (+{sizes[t]}) outside the buffer of {plan.size}")
        return offset

    def write(t, start, stop):
        base = where(t)
        memory[base + start:base + stop] = root[t] * _ELEMENTS + np.arange(start, stop)

    def read(t, start, stop, k):
        base = where(t)
        expected = root[t] * _ELEMENTS + np.arange(start, stop)
        if not np.array_equal(memory[base + start:base + stop], expected):
            problems.append(f"step {k} reads tensor {t} bytes {start}..{stop} overwritten")

    def scratch(k, op):
        if op.scratch:
            offset = plan.scratch[k]
            if offset % 4 or offset < 0 or offset + op.scratch > plan.size:
                problems.append(f"step {k}: scratch at {offset} (+{op.scratch}) misaligned or outside the buffer")
            memory[offset:offset + op.scratch] = SCRATCH_TAG

    for t in graph_inputs:
        write(t, 0, sizes[t])
    for k, op in enumerate(ops):
        scratch(k, op)  # a kernel may use its scratch at any time: before its first read and after its last write
        if op.kind == "pointwise":  # pixel by pixel: a pixel's input is read before its output is written
            in_c, out_c = op.geometry["in_c"], op.geometry["out_c"]
            for p in range(op.geometry["pixels"]):
                read(op.inputs[0], p * in_c, (p + 1) * in_c, k)
                write(op.output, p * out_c, (p + 1) * out_c)
        elif op.kind == "depthwise":  # row by row: each output row after the input rows of its window
            n, h, w, c = shapes[op.inputs[0]]
            _, oh, ow, oc = shapes[op.output]
            g = op.geometry
            for b in range(n):
                next_row = 0
                for oy in range(oh):
                    needed = min(max(oy * g["stride_h"] - g["padding_h"] + (g["kernel_h"] - 1) * g["dilation_h"] + 1, 0), h)
                    if needed > next_row:
                        read(op.inputs[0], (b * h + next_row) * w * c, (b * h + needed) * w * c, k)
                        next_row = needed
                    write(op.output, (b * oh + oy) * ow * oc, (b * oh + oy + 1) * ow * oc)
        elif op.kind == "opaque":  # no documented order: outputs may be written before any input is read
            write(op.output, 0, sizes[op.output])
            for t in op.inputs:
                read(t, 0, sizes[t], k)
        scratch(k, op)
    for t in graph_outputs:
        read(t, 0, sizes[t], len(ops))
    return problems


def random_graph(rng):
    """(ops, shapes, graph inputs, graph outputs): a chain with branches (tensors read again later), views,
    ops with two inputs, and pointwise / depthwise ops of random geometry."""
    shapes = {0: (int(rng.integers(1, 3)), int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 9)))}
    graph_inputs = [0]
    if rng.random() < 0.2:
        shapes[1] = (1, 2, 2, int(rng.integers(1, 5)))
        graph_inputs.append(1)
    ops = []
    for _ in range(int(rng.integers(1, 12))):
        produced = list(shapes)
        source = produced[-1] if rng.random() < 0.7 else int(rng.choice(produced))
        n, h, w, c = shapes[source]
        out = len(shapes)
        kind = str(rng.choice(["pointwise", "pointwise", "depthwise", "depthwise", "opaque", "view"]))
        scratch = int(rng.choice([0, 4, 12, 40, 100]))
        if kind == "pointwise":
            out_c = int(rng.integers(1, 13))
            shapes[out] = (n, h, w, out_c)
            ops.append(Op(kind, (source,), out, scratch, {"pixels": n * h * w, "in_c": c, "out_c": out_c}))
        elif kind == "depthwise":
            kh, stride, dilation = int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
            multiplier = 1 if rng.random() < 0.8 else 2
            if rng.random() < 0.5:  # SAME
                oh, ow = -(-h // stride), -(-w // stride)
                pad = max((oh - 1) * stride + (kh - 1) * dilation + 1 - h, 0) // 2
            else:  # VALID, where it fits
                effective = (kh - 1) * dilation + 1
                if effective > min(h, w):
                    kh, dilation, effective = 1, 1, 1
                oh, ow, pad = (h - effective) // stride + 1, (w - effective) // stride + 1, 0
            shapes[out] = (n, oh, ow, c * multiplier)
            ops.append(Op(kind, (source,), out, scratch, {"kernel_h": kh, "stride_h": stride, "dilation_h": dilation,
                                                          "padding_h": pad}))
        elif kind == "opaque":
            inputs = (source,) if rng.random() < 0.8 else (source, int(rng.choice(produced)))
            shapes[out] = (n, int(rng.integers(1, 7)), int(rng.integers(1, 7)), int(rng.integers(1, 9)))
            ops.append(Op(kind, inputs, out, scratch))
        else:
            shapes[out] = (n, 1, 1, h * w * c)
            ops.append(Op(kind, (source,), out))
    outputs = [ops[-1].output] + [t for t in shapes if t not in graph_inputs and rng.random() < 0.1]
    return ops, shapes, graph_inputs, sorted(set(outputs))


def _plan(ops, shapes, graph_inputs, graph_outputs):
    sizes = {t: int(np.prod(s)) for t, s in shapes.items()}
    return mp.plan(sizes, [_step(op, shapes) for op in ops], graph_inputs, graph_outputs)


def test_random_graphs_never_overwrite_a_live_byte():
    rng = np.random.default_rng(7)
    overlapped = 0
    for case in range(400):
        ops, shapes, graph_inputs, graph_outputs = random_graph(rng)
        plan = _plan(ops, shapes, graph_inputs, graph_outputs)
        problems = simulate(ops, shapes, plan, graph_inputs, graph_outputs)
        assert not problems, f"case {case}: {problems[:3]}\nops {ops}\nshapes {shapes}\nplan {plan}"
        sizes = {t: int(np.prod(s)) for t, s in shapes.items()}
        overlapped += sum(plan.offsets[op.output] < plan.offsets[op.inputs[0]] + sizes[op.inputs[0]] and
                          plan.offsets[op.inputs[0]] < plan.offsets[op.output] + sizes[op.output]
                          for op in ops if op.kind in ("pointwise", "depthwise"))
    assert overlapped > 200  # the simulation saw many in-place and overlapped placements, not only disjoint ones


def test_the_simulator_catches_a_rule_the_kernels_do_not_promise():
    # A pointwise layer 4 -> 8 channels over 3 pixels, with the input at the output's offset: pixel 0's output
    # overwrites pixel 1's input before it is read. The simulator must see it.
    ops = [Op("pointwise", (0,), 1, 0, {"pixels": 3, "in_c": 4, "out_c": 8})]
    shapes = {0: (1, 1, 3, 4), 1: (1, 1, 3, 8)}
    bad = mp.Plan(24, {0: 0, 1: 0}, {})
    assert simulate(ops, shapes, bad, [0], [1])[0] == "step 0 reads tensor 0 bytes 4..8 overwritten"
    good = _plan(ops, shapes, [0], [1])
    assert good.size == 24 and good.offsets == {0: 12, 1: 0}  # the input at the output's tail
    assert simulate(ops, shapes, good, [0], [1]) == []


def test_a_tensor_read_later_is_not_overwritten_in_place():
    # dw (in place possible) reads tensor 0, which the last op reads again.
    ops = [Op("depthwise", (0,), 1, 8, {"kernel_h": 3, "stride_h": 1, "dilation_h": 1, "padding_h": 1}),
           Op("opaque", (1, 0), 2)]
    shapes = {0: (1, 4, 4, 2), 1: (1, 4, 4, 2), 2: (1, 1, 1, 2)}
    plan = _plan(ops, shapes, [0], [2])
    assert plan.offsets[0] != plan.offsets[1]
    assert simulate(ops, shapes, plan, [0], [2]) == []


def test_views_share_their_input_and_keep_it_alive():
    ops = [Op("view", (0,), 1), Op("pointwise", (1,), 2, 0, {"pixels": 1, "in_c": 16, "out_c": 2})]
    shapes = {0: (1, 2, 2, 4), 1: (1, 1, 1, 16), 2: (1, 1, 1, 2)}
    plan = _plan(ops, shapes, [0], [2])
    assert plan.offsets[0] == plan.offsets[1] and plan.size == 16  # the shrinking output overlaps its input
    assert simulate(ops, shapes, plan, [0], [2]) == []


def test_steps_naming_unknown_tensors_are_refused():
    with pytest.raises(mp.PlanError, match="tensor 5"):
        mp.plan({0: 4}, [mp.Step((0,), 5)], [0], [5])
    with pytest.raises(mp.PlanError, match="a view of 4 bytes as 8"):
        mp.plan({0: 4, 1: 8}, [mp.Step((0,), 1, mp.Overlap.view())], [0], [1])


def mobilenet_chain(scratch_of_depthwise, scratch_of_pointwise):
    """MobileNetV1-0.25 96x96x1 as simulated ops (conv1, 13 depthwise / pointwise pairs, pool, view, dense,
    softmax) with the given scratch sizes."""
    blocks = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512)] + [(1, 512)] * 5 + [(2, 1024), (1, 1024)]
    shapes, ops = {0: (1, 96, 96, 1), 1: (1, 48, 48, 8)}, [Op("opaque", (0,), 1, 188)]
    h, c = 48, 8
    for stride, filters in blocks:
        oh = -(-h // stride)
        t = len(shapes)
        shapes[t] = (1, oh, oh, c)
        pad = max((oh - 1) * stride + 3 - h, 0) // 2
        ops.append(Op("depthwise", (t - 1,), t, scratch_of_depthwise(oh, stride, c),
                      {"kernel_h": 3, "stride_h": stride, "dilation_h": 1, "padding_h": pad}))
        h, out_c = oh, filters // 4
        shapes[t + 1] = (1, h, h, out_c)
        ops.append(Op("pointwise", (t,), t + 1, scratch_of_pointwise(c, out_c),
                      {"pixels": h * h, "in_c": c, "out_c": out_c}))
        c = out_c
    t = len(shapes)
    shapes.update({t: (1, 1, 1, c), t + 1: (1, 1, 1, c), t + 2: (1, 1, 1, 2), t + 3: (1, 1, 1, 2)})
    ops += [Op("opaque", (t - 1,), t), Op("view", (t,), t + 1),
            Op("pointwise", (t + 1,), t + 2, 64, {"pixels": 1, "in_c": c, "out_c": 2}), Op("opaque", (t + 2,), t + 3)]
    return ops, shapes


def test_mobilenet_peaks_at_its_largest_activation_plus_one_scratch():
    # Scratch sizes as the kernels need them (per-channel table, ring of window rows, widened filter).
    def depthwise(out_h, stride, c):
        return 16 * c + 3 * (((out_h - 1) * stride + 3) * c + 4) + 8 * (-(-c // 4)) * 9

    def pointwise(in_c, out_c):
        return 16 * out_c + 20 * -(-in_c // 4)

    ops, shapes = mobilenet_chain(depthwise, pointwise)
    plan = _plan(ops, shapes, [0], [ops[-1].output])
    assert simulate(ops, shapes, plan, [0], [ops[-1].output]) == []
    largest = 48 * 48 * 16
    # dw2 reads the largest tensor in place (nothing may overlap its scratch): the least any plan can do
    assert plan.size == largest + depthwise(24, 2, 16)
    assert plan.size < largest + 48 * 48 * 8  # a ping-pong plan needs the largest pair, 55,296 B
