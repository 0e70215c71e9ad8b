"""Incremental re-inference for occlusion: re-compute only what a patch can change.

Masking one window of the input changes, in each convolutional layer, only the window's receptive-field
cone; everything outside it equals the clean pass. Following Nakandala et al., "Incremental and
Approximate Inference for Faster Occlusion-based Deep CNN Explanations" (SIGMOD 2019, "Krypton"), the
clean pass is run once and cached node by node (a ``torch.fx`` trace), then each occluded copy
re-computes every layer only on the box of outputs its changed inputs reach:

* point-wise layers (batch norm in eval mode, activations, dropout in eval mode) run on the box only;
* additions of two feature maps run on the union of the operands' boxes;
* zero padding shifts the box;
* convolutions and max pooling run on the input crop that feeds the affected outputs, with their padding
  applied explicitly so the crop sees exactly what the full layer sees.

Once a box covers more than ``dense_fraction`` of its map (receptive fields grow with depth), or at any
operation not listed above (global pooling, reshapes, linear layers, ...), the full tensor is rebuilt
from the cache and the rest of the network runs as usual, on all windows at once. The result is the
same network function evaluated on the same inputs, equal to a plain forward up to float round-off of
different kernel tilings.

One call scores many copies: of one cached image or of several (``rows``), with one box for all or one box
per copy (of one size; boxes of different sizes are grown to the largest). Crops are cut per copy and each
layer then runs once for all copies, which is how the same step of several images' games is taken at once.

Its sibling :mod:`evalcam.models.graph_tail` re-runs, for an edit of one *layer's output*, only the graph
nodes after that layer (Ablation-CAM).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import operator
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import fx, nn

#: ``(y0, y1, x0, x1)``, half-open, in the coordinates of a map's last two axes
Box = tuple[int, int, int, int]

_POINTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)
_POINTWISE_FUNCTIONS = {
    torch.relu,
    F.relu,
    F.relu6,
    F.silu,
    F.hardswish,
    F.gelu,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


class ChainCache(dict):
    """A clean-pass cache that owns its tensors, so :meth:`IncrementalModel.advance` may write into it."""


@dataclass
class Patched:
    """A feature map equal to the clean pass's ``clean`` except on its copies' boxes.

    Copy ``j`` (``patch[j]``) is clean row ``rows[j]`` with ``boxes[j]`` replaced by ``patch[j]``; all boxes
    have one size, and a single box is shared by every copy. ``rows`` ``None``: copy ``j`` is row ``j``
    when ``clean`` has a row per copy, else row 0 (several copies of one cached image share its values).
    Per-copy boxes let one call step copies whose changes sit at different places (the same step of
    several images' games), so each layer runs once for all of them.
    """

    clean: torch.Tensor
    boxes: tuple[Box, ...]
    patch: torch.Tensor
    rows: tuple[int, ...] | None = None

    @property
    def box(self) -> Box:
        """The box of copy 0 (every copy's box has its size)."""
        return self.boxes[0]

    @property
    def shared(self) -> bool:
        return len(self.boxes) == 1 and self.rows is None

    def per_copy(self) -> tuple[Box, ...]:
        return self.boxes * self.patch.shape[0] if len(self.boxes) == 1 else self.boxes

    def row_list(self) -> tuple[int, ...]:
        """Clean row of every copy."""
        if self.rows is not None:
            return self.rows
        copies = self.patch.shape[0]
        return tuple(range(copies)) if self.clean.shape[0] == copies else (0,) * copies

    def like(self, clean: torch.Tensor, boxes: tuple[Box, ...], patch: torch.Tensor) -> Patched:
        """A map of the same copies (same rows) with other values."""
        return Patched(clean, boxes, patch, self.rows)

    def crop(self, boxes: Box | tuple[Box, ...], pad_value: float = 0.0) -> torch.Tensor:
        """Every copy's values on its box of ``boxes`` (one shared box, or one per copy, of one size);
        parts outside the map read ``pad_value`` (the explicit padding of a convolution or pooling,
        written in place rather than by a second copy)."""
        if isinstance(boxes[0], int):
            boxes = (boxes,)  # type: ignore[assignment]
        if self.shared and len(boxes) == 1:
            return self._crop_shared(boxes[0], pad_value)  # type: ignore[arg-type]
        return _gather(self.clean, self.row_list(), boxes, pad_value, self)  # type: ignore[arg-type]

    def _crop_shared(self, box: Box, pad_value: float) -> torch.Tensor:
        y0, y1, x0, x1 = box
        height, width = self.clean.shape[-2:]
        inside = (max(y0, 0), min(y1, height), max(x0, 0), min(x1, width))
        clean = self.clean[..., inside[0] : inside[1], inside[2] : inside[3]]
        if inside == box:
            out = self._batched(clean).clone()
        else:
            copies = max(self.clean.shape[0], self.patch.shape[0])
            shape = (copies, *self.clean.shape[1:-2], y1 - y0, x1 - x0)
            out = self.clean.new_full(shape, pad_value)
            out[..., inside[0] - y0 : inside[1] - y0, inside[2] - x0 : inside[3] - x0] = clean
        overlap = _intersect(self.box, inside)
        if overlap is not None:
            oy0, oy1, ox0, ox1 = overlap
            py0, px0 = self.box[0], self.box[2]
            out[..., oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] = self.patch[
                ..., oy0 - py0 : oy1 - py0, ox0 - px0 : ox1 - px0
            ]
        return out

    def _batched(self, clean: torch.Tensor) -> torch.Tensor:
        # Several copies of one cached image share its clean values (a batch of 1, broadcast).
        if clean.shape[0] == 1 and self.patch.shape[0] > 1:
            return clean.expand(self.patch.shape[0], *clean.shape[1:])
        return clean

    def dense(self) -> torch.Tensor:
        if self.shared:
            out = self._batched(self.clean).clone()
            y0, y1, x0, x1 = self.box
            out[..., y0:y1, x0:x1] = self.patch
            return out
        rows = self.row_list()
        out = self.clean.index_select(0, torch.tensor(rows, device=self.clean.device))
        _put(out, range(len(rows)), self.per_copy(), self.patch)
        return out

    def write_back(self) -> None:
        """Write every copy's patch into its clean row (:meth:`IncrementalModel.advance`)."""
        if self.box[1] <= self.box[0] or self.box[3] <= self.box[2]:
            return
        if self.shared:
            y0, y1, x0, x1 = self.box
            self.clean[..., y0:y1, x0:x1] = self.patch
        else:
            _put(self.clean, self.row_list(), self.per_copy(), self.patch)


def _gather(
    clean: torch.Tensor,
    rows: Sequence[int],
    boxes: tuple[Box, ...],
    pad_value: float,
    patched: Patched | None = None,
) -> torch.Tensor:
    """``[n, C, h, w]``: copy ``j`` of ``clean`` row ``rows[j]`` (with ``patched``'s patch where it has one)
    on ``boxes[j]`` (one shared box or one per copy, all of one size), ``pad_value`` outside the map.

    One slice copy per copy and source: measured on Lite0's maps (4 copies, 20x20 crops of 32x112x112)
    ~3x faster than one advanced-indexing gather, ~10x for the writes of :func:`_put`."""
    copies = len(rows)
    boxes = boxes * copies if len(boxes) == 1 else boxes
    height, width = clean.shape[-2:]
    y0, y1, x0, x1 = boxes[0]
    channels_last = clean.dim() == 4 and clean.is_contiguous(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    shape = (copies, *clean.shape[1:-2], y1 - y0, x1 - x0)
    out = torch.empty(shape, dtype=clean.dtype, device=clean.device, memory_format=layout)
    patches = patched.per_copy() if patched is not None and patched.patch.numel() else None
    for j, (row, (y0, y1, x0, x1)) in enumerate(zip(rows, boxes, strict=True)):
        inside = (max(y0, 0), min(y1, height), max(x0, 0), min(x1, width))
        if inside != (y0, y1, x0, x1):
            out[j].fill_(pad_value)
        if inside[0] < inside[1] and inside[2] < inside[3]:
            out[j, ..., inside[0] - y0 : inside[1] - y0, inside[2] - x0 : inside[3] - x0] = clean[
                row, ..., inside[0] : inside[1], inside[2] : inside[3]
            ]
        if patches is None:
            continue
        overlap = _intersect(patches[j], inside)
        if overlap is not None:
            oy0, oy1, ox0, ox1 = overlap
            py0, px0 = patches[j][0], patches[j][2]
            out[j, ..., oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] = patched.patch[  # type: ignore[union-attr]
                j, ..., oy0 - py0 : oy1 - py0, ox0 - px0 : ox1 - px0
            ]
    return out


def _put(target: torch.Tensor, rows: Sequence[int], boxes: Sequence[Box], patch: torch.Tensor) -> None:
    """``target[rows[j]]`` on ``boxes[j]`` (inside the map) = ``patch[j]``, for every copy ``j``, in place."""
    for j, (row, (y0, y1, x0, x1)) in enumerate(zip(rows, boxes, strict=True)):
        target[row, ..., y0:y1, x0:x1] = patch[j]


def _intersect(a: Box, b: Box) -> Box | None:
    y0, y1, x0, x1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def _window_outputs(
    lo: int, hi: int, length: int, kernel: int, stride: int, pad: int, dilation: int
) -> tuple[int, int] | None:
    """The outputs ``[o0, o1)`` that changed inputs ``[lo, hi)`` of a sliding window reach along one axis."""
    out_len = (length + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    o0 = max(0, math.ceil((lo + pad - dilation * (kernel - 1)) / stride))
    o1 = min(out_len, (hi - 1 + pad) // stride + 1)
    return (o0, o1) if o0 < o1 else None


def _window_inputs(o0: int, o1: int, kernel: int, stride: int, pad: int, dilation: int) -> tuple[int, int]:
    """The input span ``[i0, i1)`` (padding coordinates included) that computes outputs ``[o0, o1)``."""
    return o0 * stride - pad, (o1 - 1) * stride - pad + dilation * (kernel - 1) + 1


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed CPU ops on one intra-op thread.

    An incremental pass is hundreds of kernels on small crops; splitting each across threads costs more in
    synchronisation than it saves. Measured on EfficientNet-Lite0, one 224 px image, 45 px windows, a
    2-core host with other jobs running: 69 s CPU / 106 s wall with 2 threads against 4.1 s / 12 s with
    one (full forwards of the same copies: 9.5 s CPU with one thread)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def workers(device: torch.device, items: int) -> int:
    """How many Python workers :func:`spread` runs ``items`` independent incremental jobs on: the intra-op
    threads torch was given, on the CPU."""
    return max(1, min(torch.get_num_threads(), items)) if device.type == "cpu" else 1


_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def spread(work: Callable[[_Item], _Result], items: Sequence[_Item], device: torch.device) -> list[_Result]:
    """``[work(item) for item in items]``, the items on :func:`workers` Python threads of one intra-op
    thread each. An incremental pass is hundreds of small kernels, which one intra-op thread runs best
    (:func:`one_thread`), but the kernels release the GIL: independent jobs (groups of images) on two
    workers ran Lite0's occlusion squares 1.7-2.0x faster than on one, with the same outputs. ``work`` must
    only write to what its item owns (rows of an output, its own counters)."""

    def guarded(item: _Item) -> _Result:
        with torch.no_grad():  # grad mode is per thread: a worker's must be set there
            return work(item)

    count = workers(device, len(items))
    if count <= 1:
        return [guarded(item) for item in items]
    with one_thread(), ThreadPoolExecutor(count) as pool:  # one_thread before the workers start: no race
        return list(pool.map(guarded, items))


def _one_thread(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_thread():
            return method(*args, **kwargs)

    return wrapper


class IncrementalModel:
    """Scores occluded copies of a batch by re-computing only the changed part of each layer.

    ``IncrementalModel.build(model)`` traces ``model`` with ``torch.fx`` (``None`` if it cannot be traced);
    :meth:`clean_pass` caches every node's value on a batch, and :meth:`occluded` then scores one rectangular
    window of that batch at a time.
    """

    def __init__(self, traced: fx.GraphModule, dense_fraction: float = 0.5) -> None:
        self.traced = traced
        self.dense_fraction = float(dense_fraction)
        self.modules = {name: _out_of_place(module) for name, module in traced.named_modules()}
        self.nodes = list(traced.graph.nodes)
        #: nodes whose value is computed from the input (the others are parameters and constants)
        self.batched: set[fx.Node] = set()
        for node in self.nodes:
            if node.op == "placeholder" or any(n in self.batched for n in node.all_input_nodes):
                self.batched.add(node)

    @classmethod
    def build(cls, model: nn.Module, dense_fraction: float = 0.5) -> IncrementalModel | None:
        try:
            traced = fx.symbolic_trace(model)
        except Exception:
            return None
        if sum(node.op == "placeholder" for node in traced.graph.nodes) != 1:
            return None
        return cls(traced, dense_fraction)

    # --- clean pass ---

    @torch.no_grad()
    def clean_pass(self, inputs: torch.Tensor) -> dict[fx.Node, Any]:
        """Every node's value on the clean batch."""
        values: dict[fx.Node, Any] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                values[node] = inputs
            elif node.op == "output":
                values[node] = fx.node.map_arg(node.args[0], values.__getitem__)
            else:
                values[node] = self._run(node, values)
        return values

    @torch.no_grad()
    def chain_pass(self, inputs: torch.Tensor) -> ChainCache:
        """A :meth:`clean_pass` that :meth:`advance` may write into: it runs on its own copy of ``inputs``.

        :meth:`clean_pass` caches the caller's tensor itself, and :meth:`advance` writes each step's pixels
        into the cached input: on a view of the caller's batch that overwrote the batch's images (the RISE
        deletion chain left the deleted pixels in the images insertion then inserted)."""
        return ChainCache(self.clean_pass(inputs.clone()))

    def image_cache(self, cache: dict[fx.Node, Any], row: int) -> dict[fx.Node, Any]:
        """The :meth:`clean_pass` cache of image ``row`` alone, cut out of a batch's cache (views)."""
        batch = self.input_of(cache).shape[0]
        out: dict[fx.Node, Any] = {}
        for node in self.nodes:
            value = cache[node]
            # Parameters and constants are shared; only values computed from the batch have its rows.
            if node in self.batched and isinstance(value, torch.Tensor) and value.shape[:1] == (batch,):
                value = value[row : row + 1]
            out[node] = value
        return out

    def _run(self, node: fx.Node, values: dict[fx.Node, Any]) -> Any:
        """The node's ordinary result given dense argument values."""
        args = fx.node.map_arg(node.args, values.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, values.__getitem__)
        if node.op == "get_attr":
            target: Any = self.traced
            for part in str(node.target).split("."):
                target = getattr(target, part)
            return target
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_function":
            # In-place ops would overwrite cached clean values that later passes read.
            if kwargs.get("inplace"):
                kwargs = {**kwargs, "inplace": False}
            target = operator.add if node.target is operator.iadd else node.target
            return target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            name = str(node.target)
            if name.endswith("_") and not name.startswith("_") and hasattr(torch.Tensor, name[:-1]):
                name = name[:-1]
            return getattr(args[0], name)(*args[1:], **kwargs)
        raise ValueError(f"cannot run fx node {node.op} {node.target}")

    # --- occluded passes ---

    def output_of(self, cache: dict[fx.Node, Any]) -> Any:
        """The model's output in a :meth:`clean_pass` cache."""
        return cache[self.nodes[-1]]

    @torch.no_grad()
    def occluded(self, cache: dict[fx.Node, Any], box: Box, fill: torch.Tensor) -> Any:
        """The model's output on the cached batch with input ``box`` set to ``fill`` ``[1, C, 1, 1]``."""
        x = self.input_of(cache)
        y0, y1, x0, x1 = box
        return self.patched(cache, box, fill.to(x.dtype).expand(x.shape[0], x.shape[1], y1 - y0, x1 - x0))

    def input_of(self, cache: dict[fx.Node, Any]) -> torch.Tensor:
        """The batch a :meth:`clean_pass` cache was computed on."""
        return next(cache[node] for node in self.nodes if node.op == "placeholder")

    @torch.no_grad()
    @_one_thread
    def patched(
        self,
        cache: dict[fx.Node, Any],
        box: Box | Sequence[Box],
        patch: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> Any:
        """The model's output on the cached batch with its input on ``box`` replaced by ``patch``
        ``[n, C, h, w]`` (any values: a fill, noise, a blurred copy, a mix of pixels).

        ``box`` is one box for every copy, or one per copy (all of one size); ``rows`` names the cached
        image of every copy (default: copy ``j`` is image ``j``, or image 0 of a one-image cache)."""
        values = self._pass(cache, box, patch, rows)
        return values[self.nodes[-1]]

    @torch.no_grad()
    @_one_thread
    def advance(
        self,
        cache: dict[fx.Node, Any],
        box: Box | Sequence[Box],
        patch: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> Any:
        """Like :meth:`patched`, and then make ``cache`` the cache of the copies: each copy's changed maps
        are written into its cached row on their boxes (in place), or replace the row where they ran
        densely. Cumulative games step from one copy to the next this way, each step re-computing only
        the cone of the pixels it adds; the same step of several images runs as one call with one box per
        image (``rows``: the cached image of every copy, each at most once). ``cache`` must come from
        :meth:`chain_pass`."""
        if not isinstance(cache, ChainCache):
            raise TypeError("advance writes into its cache: start the chain with chain_pass, not clean_pass")
        if rows is None and patch.shape[0] != self.input_of(cache).shape[0]:
            raise ValueError("advance: one copy per cached image, or rows naming the image of every copy")
        index = None if rows is None else self._check_rows(patch.shape[0], rows)
        values = self._pass(cache, box, patch, rows)
        output = values.pop(self.nodes[-1])
        # Written only after the pass: every step above read the previous copy's values.
        for node, value in values.items():
            if value is cache[node]:
                continue
            if isinstance(value, Patched):
                value.write_back()
            elif index is None:
                cache[node] = value
            else:
                cache[node] = _replace_rows(cache[node], index, value)
        return output

    @torch.no_grad()
    def refresh_rows(self, cache: ChainCache, rows: torch.Tensor, inputs: torch.Tensor) -> Any:
        """Make rows ``rows`` of a :meth:`chain_pass` cache the clean pass of ``inputs`` (a chain that
        resumes after a step it could not take incrementally); returns their output."""
        index = self._check_rows(inputs.shape[0], rows)
        fresh = self.clean_pass(inputs.clone())
        for node in self.nodes:
            if fresh[node] is not cache[node] and node in self.batched:
                cache[node] = _replace_rows(cache[node], index, fresh[node])
        return self.output_of(fresh)

    @staticmethod
    def _check_rows(copies: int, rows: torch.Tensor) -> torch.Tensor:
        index = rows.detach().cpu().long()
        if index.numel() != copies or index.unique().numel() != copies:
            raise ValueError("rows must name a distinct cached image for every copy")
        return index

    def _pass(
        self,
        cache: dict[fx.Node, Any],
        box: Box | Sequence[Box],
        patch: torch.Tensor,
        rows: torch.Tensor | None,
    ) -> dict[fx.Node, Any]:
        """Every node's value on the copies (:class:`Patched` where it differs from the cache on boxes)."""
        shared = isinstance(box[0], int)
        boxes: tuple[Box, ...] = (tuple(box),) if shared else tuple(map(tuple, box))  # type: ignore[arg-type]
        if len(boxes) not in (1, patch.shape[0]) or len({(b[1] - b[0], b[3] - b[2]) for b in boxes}) != 1:
            raise ValueError("boxes: one shared box, or one per copy, all of one size")
        x = self.input_of(cache)
        index = None if rows is None else rows.to(x.device).long()
        row_ids = None if rows is None else tuple(int(r) for r in rows.tolist())
        values: dict[fx.Node, Any] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                values[node] = Patched(cache[node], boxes, patch.to(cache[node].dtype), row_ids)
            elif node.op == "output":
                values[node] = fx.node.map_arg(
                    node.args[0], lambda n: self._dense_input(n, values, cache, index)
                )
            elif all(values[n] is cache[n] for n in node.all_input_nodes):
                values[node] = cache[node]
            else:
                values[node] = self._step(node, values, cache, index)
        return values

    def _dense_input(
        self, node: fx.Node, values: dict[fx.Node, Any], cache: dict[fx.Node, Any], rows: torch.Tensor | None
    ) -> Any:
        """``node``'s value with a row per copy: a patched map made whole, or the cached rows of the copies
        (``rows`` given) where it did not change."""
        value = values[node]
        if isinstance(value, Patched):
            return value.dense()
        if (
            rows is not None
            and value is cache[node]
            and node in self.batched
            and isinstance(value, torch.Tensor)
            and value.dim() > 0
            and value.shape[0] == self.input_of(cache).shape[0]
        ):
            return value.index_select(0, rows)
        return value

    def _step(
        self, node: fx.Node, values: dict[fx.Node, Any], clean: dict[fx.Node, Any], rows: torch.Tensor | None
    ) -> Any:
        incremental = self._incremental(node, values, clean)
        if incremental is not None:
            return incremental
        dense = {n: self._dense_input(n, values, clean, rows) for n in node.all_input_nodes}
        return self._run(node, dense)

    def _incremental(
        self, node: fx.Node, values: dict[fx.Node, Any], clean: dict[fx.Node, Any]
    ) -> Patched | None:
        """The node's value as a :class:`Patched` map, or ``None`` if it must run densely."""
        out = clean[node]
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            return None
        args = [values[a] if isinstance(a, fx.Node) else a for a in node.args]
        # A tensor that differs from the clean pass everywhere cannot be cropped like a clean one.
        if any(
            isinstance(a, fx.Node) and values[a] is not clean[a] and not isinstance(values[a], Patched)
            for a in node.args
        ):
            return None
        first = args[0] if args else None
        if not isinstance(first, Patched):
            if node.target in _ADD_FUNCTIONS and len(args) == 2:
                return self._add(args, out)
            return None
        result = self._apply_rule(node, first, args, out)
        if result is not None and self._too_big(result):
            return None
        return result

    def _apply_rule(
        self, node: fx.Node, x: Patched, args: Sequence[Any], out: torch.Tensor
    ) -> Patched | None:
        """Run ``node`` on the changed region of ``x`` if an incremental rule covers it."""
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            if len(args) != 1:
                return None
            if _pointwise_module(module) and not node.kwargs:
                return self._pointwise(x, out, module)
            if isinstance(module, nn.ZeroPad2d):
                return self._shift(x, out, module.padding)
            window = _sliding_window_op(module)
            if window is None:
                return None
            fn, pad_value = window
            return self._window(
                x, out, module.kernel_size, module.stride, module.padding, module.dilation, fn, pad_value
            )
        if node.op != "call_function":
            return None
        if node.target in _POINTWISE_FUNCTIONS and len(args) == 1:
            fn, kwargs = node.target, dict(node.kwargs)
            return self._pointwise(x, out, lambda t: fn(t, **kwargs))  # type: ignore[operator]
        if node.target in _ADD_FUNCTIONS and len(args) == 2 and not node.kwargs:
            return self._add(args, out)
        if node.target in (torch.conv2d, F.conv2d) and not node.kwargs:
            return self._conv_function(x, out, args)
        return None

    def _too_big(self, value: Patched) -> bool:
        y0, y1, x0, x1 = value.box  # every copy's box has this size
        height, width = value.clean.shape[-2:]
        return (y1 - y0) * (x1 - x0) > self.dense_fraction * height * width

    @staticmethod
    def _pointwise(
        x: Patched, out: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> Patched | None:
        if out.shape != x.clean.shape:
            return None
        return x.like(out, x.boxes, fn(x.patch))

    @staticmethod
    def _shift(x: Patched, out: torch.Tensor, padding: Sequence[int]) -> Patched | None:
        left, _, top, _ = (int(p) for p in padding)
        if min(padding) < 0:
            return None
        boxes = tuple((y0 + top, y1 + top, x0 + left, x1 + left) for y0, y1, x0, x1 in x.boxes)
        return x.like(out, boxes, x.patch)

    @staticmethod
    def _add(args: Sequence[Any], out: torch.Tensor) -> Patched | None:
        a, b = args
        if not all(isinstance(v, Patched | torch.Tensor) for v in (a, b)):
            return None
        if any(isinstance(v, torch.Tensor) and v.shape != out.shape for v in (a, b)):
            return None
        if any(isinstance(v, Patched) and v.clean.shape != out.shape for v in (a, b)):
            return None
        patched = [v for v in (a, b) if isinstance(v, Patched)]
        if not patched:
            return None
        if all(v.shared for v in patched):
            box = patched[0].box if len(patched) == 1 else _union(patched[0].box, patched[1].box)
            y0, y1, x0, x1 = box
            crops = [v.crop(box) if isinstance(v, Patched) else v[..., y0:y1, x0:x1] for v in (a, b)]
            return Patched(out, (box,), crops[0] + crops[1])
        first = patched[0]
        copies = first.patch.shape[0]
        per_copy = [v.per_copy() for v in patched]
        unions = [boxes[0] if len(per_copy) == 1 else _union(*boxes) for boxes in zip(*per_copy, strict=True)]
        boxes = one_size(unions, out.shape[-2], out.shape[-1])
        rows = first.row_list()
        crops = [v.crop(boxes) if isinstance(v, Patched) else _gather(v, rows, boxes, 0.0) for v in (a, b)]
        if any(c.shape[0] != copies for c in crops):
            return None
        return first.like(out, boxes, crops[0] + crops[1])

    def _conv_function(self, x: Patched, out: torch.Tensor, args: Sequence[Any]) -> Patched | None:
        weight = args[1]
        bias = args[2] if len(args) > 2 else None
        stride = _pair(args[3]) if len(args) > 3 else (1, 1)
        padding = _pair(args[4]) if len(args) > 4 else (0, 0)
        dilation = _pair(args[5]) if len(args) > 5 else (1, 1)
        groups = args[6] if len(args) > 6 else 1
        if (
            not isinstance(weight, torch.Tensor)
            or isinstance(bias, Patched)
            or None in (stride, padding, dilation)
        ):
            return None
        kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
        return self._window(
            x,
            out,
            kernel,
            stride,
            padding,
            dilation,
            lambda t: F.conv2d(t, weight, bias, stride, 0, dilation, groups),
            0.0,
        )

    @staticmethod
    def _window(
        x: Patched,
        out: torch.Tensor,
        kernel: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        fn: Callable[[torch.Tensor], torch.Tensor],
        pad_value: float,
    ) -> Patched | None:
        kernel, stride, padding, dilation = (_pair(v) for v in (kernel, stride, padding, dilation))
        if None in (kernel, stride, padding, dilation):
            return None
        height, width = x.clean.shape[-2:]
        copies = x.patch.shape[0]
        (ky, kx), (sy, sx), (py, px), (dy, dx) = kernel, stride, padding, dilation  # type: ignore[misc]
        outputs: list[Box | None] = []
        for y0, y1, x0, x1 in x.boxes:
            rows = _window_outputs(y0, y1, height, ky, sy, py, dy)
            cols = _window_outputs(x0, x1, width, kx, sx, px, dx)
            outputs.append(None if rows is None or cols is None else (*rows, *cols))
        if all(o is None for o in outputs):
            # No output reads a changed input (e.g. a strided 1x1 convolution skips them).
            empty = out[..., :0, :0] if x.shared else out.new_empty((copies, out.shape[1], 0, 0))
            return x.like(out, ((0, 0, 0, 0),), empty)
        boxes = one_size([o or (0, 0, 0, 0) for o in outputs], out.shape[-2], out.shape[-1])
        inputs = tuple(
            (*_window_inputs(oy0, oy1, ky, sy, py, dy), *_window_inputs(ox0, ox1, kx, sx, px, dx))
            for oy0, oy1, ox0, ox1 in boxes
        )
        patch = fn(x.crop(inputs if len(inputs) > 1 else inputs[0], pad_value))
        oy0, oy1, ox0, ox1 = boxes[0]
        if patch.shape[-2:] != (oy1 - oy0, ox1 - ox0) or patch.shape[:2] != (copies, out.shape[1]):
            return None
        return x.like(out, boxes, patch)


def one_size(boxes: Sequence[Box], height: int, width: int) -> tuple[Box, ...]:
    """``boxes`` grown to the size of the largest (inside a ``height`` x ``width`` map): copies stepped in
    one call need crops of one size. Re-computing a few unchanged values on the margin is harmless."""
    if len(set(boxes)) == 1:
        return (boxes[0],)
    h = max(b[1] - b[0] for b in boxes)
    w = max(b[3] - b[2] for b in boxes)
    out = []
    for y0, _, x0, _ in boxes:
        y0, x0 = max(0, min(y0, height - h)), max(0, min(x0, width - w))
        out.append((y0, y0 + h, x0, x0 + w))
    return tuple(out)


def _replace_rows(old: Any, rows: torch.Tensor, new: Any) -> Any:
    """``old`` (a cached value with a row per image) with rows ``rows`` replaced by ``new``'s."""
    everything = isinstance(old, torch.Tensor) and old.dim() > 0 and rows.numel() == old.shape[0]
    if everything and bool((rows == torch.arange(old.shape[0])).all()):
        return new
    if not (isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor)):
        return old  # sizes and other values derived from the shapes, which do not change
    if old.dim() == 0 or new.shape != (rows.numel(), *old.shape[1:]):
        raise ValueError(f"cannot write {tuple(new.shape)} into rows of a cached {tuple(old.shape)}")
    try:
        old[rows.to(old.device)] = new.to(old.dtype)  # a chain's cache owns its tensors
        return old
    except RuntimeError:  # a broadcast view (one memory location for several elements)
        out = old.clone()
        out[rows.to(old.device)] = new.to(old.dtype)
        return out


def _sliding_window_op(
    module: nn.Module,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], float] | None:
    """The op a convolution or max-pool applies to an explicitly padded crop, and its pad value."""
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        conv = module
        return (
            lambda x: F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups),
            0.0,
        )
    if isinstance(module, nn.MaxPool2d) and not module.ceil_mode:
        pool = module
        return lambda x: F.max_pool2d(x, pool.kernel_size, pool.stride, 0, pool.dilation), -math.inf
    return None


def _pointwise_module(module: nn.Module) -> bool:
    if isinstance(module, nn.BatchNorm2d):
        return not module.training or not module.track_running_stats
    if isinstance(module, nn.Dropout | nn.Dropout2d):
        return not module.training
    return isinstance(module, _POINTWISE_MODULES)


def _out_of_place(module: nn.Module) -> nn.Module:
    """A shallow copy with ``inplace=False`` (the model itself is left as it is)."""
    if getattr(module, "inplace", False) is True:
        module = copy.copy(module)
        module.inplace = False
    return module


_CACHE: weakref.WeakKeyDictionary[nn.Module, IncrementalModel | None] = weakref.WeakKeyDictionary()


def incremental_model(model: nn.Module) -> IncrementalModel | None:
    """The (cached) incremental executor of ``model``, or ``None`` if ``torch.fx`` cannot trace it."""
    if model not in _CACHE:
        _CACHE[model] = IncrementalModel.build(model)
    return _CACHE[model]
