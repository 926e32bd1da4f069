"""The static memory plan of the generated C model: one buffer holds every activation tensor and every
layer's scratch, placed once at generation time.

A model is a list of :class:`Step` (one per op, in execution order): a step reads tensors, writes one, needs
some scratch bytes, and says how its output may overlap its first input (:class:`Overlap`). The overlaps
are those the kernel library documents in ``qgt_kernels.h`` (the contract; nothing more is assumed):

* ``Overlap.none()``: output and input disjoint (every kernel that documents no overlap);
* ``Overlap.same()``: exactly in place, the output at the input's offset (:func:`depthwise_overlap`);
* ``Overlap.gap_of(g)``: an overlapping output needs ``input_offset - output_offset >= g``
  (:func:`pointwise_overlap`: pixels are read before their bytes are overwritten);
* ``Overlap.view()``: the output is the input's bytes (RESHAPE).

An overlap is used only where the input is read by no later step. The scratch of a step must not overlap
any tensor live during it (the kernels check that too).

:func:`plan` places tensors first-fit, largest first (the greedy of TFLite-Micro's memory planner), with
the in-place and overlap positions as extra candidates; in-place steps may be fused into one placement
group first. It tries both and keeps the smaller buffer. Every placement it returns satisfies the rules
above; tests check that by simulating the kernels' documented access order byte by byte.
"""

import dataclasses

ALIGNMENT = 4  # scratch must be 4-byte aligned; tensors are placed on 4-byte boundaries where free to choose
GRAPH_INPUT_STEP = -1  # graph inputs are live before the first step (written by the caller)


@dataclasses.dataclass(frozen=True)
class Overlap:
    """How a step's output may overlap its first input."""
    kind: str  # "none", "same", "gap", "view"
    gap: int = 0

    @staticmethod
    def none():
        return Overlap("none")

    @staticmethod
    def same():
        return Overlap("same")

    @staticmethod
    def gap_of(gap):
        return Overlap("gap", int(gap))

    @staticmethod
    def view():
        return Overlap("view")

    def allows(self, input_offset, output_offset):
        """Whether overlapping placements at these offsets are allowed."""
        if self.kind in ("same", "view"):
            return input_offset == output_offset
        if self.kind == "gap":
            return input_offset - output_offset >= self.gap
        return False


@dataclasses.dataclass(frozen=True)
class Step:
    """One op: the tensors it reads (the first is the one ``overlap`` refers to), the tensor it writes and the
    scratch bytes it needs."""
    inputs: tuple
    output: object
    overlap: Overlap = Overlap("none")
    scratch: int = 0


@dataclasses.dataclass
class Plan:
    """Byte offsets in one buffer of ``size`` bytes: ``offsets`` per tensor (views share their input's),
    ``scratch`` per step index that needs scratch."""
    size: int
    offsets: dict
    scratch: dict


def pointwise_overlap(pixels, in_channels, out_channels):
    """qgt_conv2d / qgt_fully_connected with a 1x1 filter, stride 1, no padding: the output may overlap the
    input where ``output + k * out_c <= input + k * in_c`` for every k = 1 .. pixels."""
    return Overlap.gap_of(max(out_channels - in_channels, pixels * (out_channels - in_channels)))


def depthwise_overlap(batch, in_hwc, out_hwc, kernel_h, stride_h, dilation_h, padding_h):
    """qgt_depthwise_conv2d: exactly in place when the output rows, written in order, never cover input rows
    still to be read (each output row is written after the input rows of its window are read); else none."""
    in_h, in_w, in_c = in_hwc
    out_h, out_w, out_c = out_hwc
    for b in range(batch):
        for oy in range(out_h):
            rows_read = oy * stride_h - padding_h + (kernel_h - 1) * dilation_h + 1
            first_unread = (b * in_h + min(max(rows_read, 0), in_h)) * in_w * in_c
            if (b * out_h + oy + 1) * out_w * out_c > first_unread:
                return Overlap.none()
    return Overlap.same()


class PlanError(ValueError):
    """Steps that name tensors without a size, or a view whose size differs from its input's."""


@dataclasses.dataclass
class _Storage:
    """Tensors that are the same bytes (a tensor and its views): size and the steps from first write to last
    read."""
    members: list
    size: int
    first: int
    last: int


@dataclasses.dataclass
class _Item:
    """A placement unit: storages at one common offset (fused in-place steps), or one step's scratch."""
    storages: list
    scratch_step: int = None
    scratch_bytes: int = 0
    offset: int = None

    @property
    def size(self):
        return self.scratch_bytes if self.storages == [] else max(s.size for s in self.storages)

    @property
    def first(self):
        return self.scratch_step if self.storages == [] else min(s.first for s in self.storages)

    def spans(self):
        """(size, first step, last step) of each part."""
        if self.storages == []:
            return [(self.scratch_bytes, self.scratch_step, self.scratch_step)]
        return [(s.size, s.first, s.last) for s in self.storages]


def _storages(sizes, steps, graph_inputs, graph_outputs):
    """{tensor: _Storage} of every tensor a step or the graph uses, views joined with their input."""
    root = {t: t for t in sizes}

    def find(t):
        while root[t] != t:
            t = root[t]
        return t

    for k, step in enumerate(steps):
        for t in (*step.inputs, step.output):
            if t not in sizes:
                raise PlanError(f"step {k} uses tensor {t!r}, which has no size")
        if step.overlap.kind == "view":
            if sizes[step.output] != sizes[step.inputs[0]]:
                raise PlanError(f"step {k}: a view of {sizes[step.inputs[0]]} bytes as {sizes[step.output]}")
            root[find(step.output)] = find(step.inputs[0])
    first = {t: GRAPH_INPUT_STEP for t in graph_inputs}
    last = {t: len(steps) for t in graph_outputs}
    for k, step in enumerate(steps):
        for t in (*step.inputs, step.output):
            first.setdefault(t, k)  # written here, or (never written: not a graph input) first read here
            last[t] = max(last.get(t, k), k)
    storages = {}
    for t in first:
        end = last.get(t, first[t])  # a graph input no step reads
        s = storages.setdefault(find(t), _Storage([], sizes[find(t)], first[t], end))
        s.members.append(t)
        s.first, s.last = min(s.first, first[t]), max(s.last, end)
    return {t: storages[find(t)] for t in first}


def _overlap_exceptions(steps, storage):
    """{(input storage id, output storage id): (step, Overlap)} for the steps whose input is read by no later
    step, so its output may overlap it as the step's rule allows."""
    exceptions = {}
    for k, step in enumerate(steps):
        if step.overlap.kind in ("none", "view"):
            continue
        source, target = storage[step.inputs[0]], storage[step.output]
        if source is not target and source.last == k and target.first == k and step.inputs.count(step.inputs[0]) == 1 \
                and all(storage[t] is not source for t in step.inputs[1:]):
            exceptions[(id(source), id(target))] = step.overlap
    return exceptions


def _live_together(a_first, a_last, b_first, b_last):
    return a_first <= b_last and b_first <= a_last


def _conflicts(item, offset, other, exceptions):
    """Whether ``item`` at ``offset`` breaks a rule with the placed ``other``."""
    parts = item.storages or [None]
    others = other.storages or [None]
    for part, (size, first, last) in zip(parts, item.spans()):
        for placed, (p_size, p_first, p_last) in zip(others, other.spans()):
            if not _live_together(first, last, p_first, p_last):
                continue
            if offset >= other.offset + p_size or other.offset >= offset + size:
                continue  # disjoint bytes
            if part is None or placed is None:
                return True  # scratch overlaps nothing live
            rule = exceptions.get((id(part), id(placed)))
            if rule is not None and rule.allows(offset, other.offset):
                continue  # part is the step's input, placed its output
            rule = exceptions.get((id(placed), id(part)))
            if rule is not None and rule.allows(other.offset, offset):
                continue
            return True
    return False


def _candidates(item, placed, exceptions):
    """Offsets worth trying for ``item``: 0, the ends of what is placed, and the positions the overlap rules
    make exact (in place; an input at the tail of its output)."""
    found = {0}
    for other in placed:
        for size, _, _ in other.spans():
            end = other.offset + size
            found.add(-(-end // ALIGNMENT) * ALIGNMENT)
        for part in item.storages:
            for p in other.storages:
                rule = exceptions.get((id(part), id(p)))  # part is the input, p the output
                if rule is not None:
                    found.add(other.offset + (rule.gap if rule.kind == "gap" else 0))
                rule = exceptions.get((id(p), id(part)))  # part is the output
                if rule is not None:
                    found.add(other.offset - (rule.gap if rule.kind == "gap" else 0))
    if item.storages == []:
        found = {-(-c // ALIGNMENT) * ALIGNMENT for c in found}
    return sorted(c for c in found if c >= 0)


def _place(items, exceptions):
    """First fit in the given order; returns the buffer size."""
    placed = []
    for item in items:
        for offset in _candidates(item, placed, exceptions):
            if not any(_conflicts(item, offset, other, exceptions) for other in placed):
                item.offset = offset
                break
        placed.append(item)
    return max((item.offset + item.size for item in placed), default=0)


def _items(storage, steps, exceptions, fuse_in_place):
    """Placement items: storages (those joined by exactly-in-place steps fused when ``fuse_in_place``) and
    scratches."""
    group = {id(s): [s] for s in storage.values()}
    if fuse_in_place:
        for step in steps:
            source, target = storage[step.inputs[0]], storage[step.output]
            rule = exceptions.get((id(source), id(target)))
            if rule is not None and rule.kind == "same" and group[id(source)] is not group[id(target)]:
                merged = group[id(source)] + group[id(target)]
                for s in merged:
                    group[id(s)] = merged
    unique = {id(g): g for g in group.values()}
    items = [_Item(list(g)) for g in unique.values()]
    items += [_Item([], k, -(-step.scratch // ALIGNMENT) * ALIGNMENT) for k, step in enumerate(steps) if step.scratch > 0]
    return items


def plan(sizes, steps, graph_inputs, graph_outputs):
    """A :class:`Plan` for tensors of ``sizes`` (bytes by tensor id) read and written by ``steps``; graph inputs
    are live from before the first step, graph outputs until after the last."""
    storage = _storages(sizes, steps, graph_inputs, graph_outputs)
    exceptions = _overlap_exceptions(steps, storage)
    best = None
    for fuse_in_place in (True, False):
        for order in (lambda i: (-i.size, i.first), lambda i: (i.first, -i.size)):
            items = sorted(_items(storage, steps, exceptions, fuse_in_place), key=order)
            size = _place(items, exceptions)
            if best is None or size < best[0]:
                best = size, items
    size, items = best
    offsets, scratch = {}, {}
    for item in items:
        if item.storages == []:
            scratch[item.scratch_step] = item.offset
        for s in item.storages:
            for t in s.members:
                offsets[t] = item.offset
    return Plan(size, offsets, scratch)
