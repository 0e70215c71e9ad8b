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
from dataclasses import dataclass
from typing import Any

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
    """A feature map equal to the clean pass's ``clean`` except on ``box``, where it is ``patch``."""

    clean: torch.Tensor
    box: Box
    patch: torch.Tensor

    def crop(self, box: Box, pad_value: float = 0.0) -> torch.Tensor:
        """The map's values on ``box``; parts of ``box`` outside the map read ``pad_value`` (the explicit
        padding of a convolution or pooling, written in place rather than by a second copy)."""
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
        out = self._batched(self.clean).clone()
        y0, y1, x0, x1 = self.box
        out[..., y0:y1, x0:x1] = self.patch
        return out


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


def _window_geometry(
    lo: int, hi: int, length: int, kernel: int, stride: int, pad: int, dilation: int
) -> tuple[int, int, int, int] | None:
    """For changed inputs ``[lo, hi)`` of a sliding window along one axis: the affected outputs
    ``[o0, o1)`` and the input span ``[i0, i1)`` (padding coordinates included) that computes them."""
    out_len = (length + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    o0 = max(0, math.ceil((lo + pad - dilation * (kernel - 1)) / stride))
    o1 = min(out_len, (hi - 1 + pad) // stride + 1)
    if o0 >= o1:
        return None
    return o0, o1, o0 * stride - pad, (o1 - 1) * stride - pad + dilation * (kernel - 1) + 1


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
    def patched(self, cache: dict[fx.Node, Any], box: Box, patch: torch.Tensor) -> Any:
        """The model's output on the cached batch with its input on ``box`` replaced by ``patch``
        ``[B, C, y1 - y0, x1 - x0]`` (any values: a fill, noise, a blurred copy, a mix of pixels)."""
        values: dict[fx.Node, Any] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                values[node] = Patched(cache[node], box, patch.to(cache[node].dtype))
            elif node.op == "output":
                return fx.node.map_arg(node.args[0], lambda n: _dense(values[n]))
            elif all(values[n] is cache[n] for n in node.all_input_nodes):
                values[node] = cache[node]
            else:
                values[node] = self._step(node, values, cache)
        raise ValueError("traced graph has no output")

    @torch.no_grad()
    @_one_thread
    def advance(self, cache: dict[fx.Node, Any], box: Box, patch: torch.Tensor) -> Any:
        """Like :meth:`patched` for a cache of one image and one copy, and then make ``cache`` the cache of
        that copy: changed maps are written into the cached tensors on their boxes (in place) or replaced
        where they ran densely. Cumulative games step from one copy to the next this way, each step
        re-computing only the cone of the pixels it adds. ``cache`` must come from :meth:`chain_pass`."""
        if not isinstance(cache, ChainCache):
            raise TypeError("advance writes into its cache: start the chain with chain_pass, not clean_pass")
        values: dict[fx.Node, Any] = {}
        output: Any = None
        for node in self.nodes:
            if node.op == "placeholder":
                values[node] = Patched(cache[node], box, patch.to(cache[node].dtype))
            elif node.op == "output":
                output = fx.node.map_arg(node.args[0], lambda n: _dense(values[n]))
            elif all(values[n] is cache[n] for n in node.all_input_nodes):
                values[node] = cache[node]
            else:
                values[node] = self._step(node, values, cache)
        # Written only after the pass: every step above read the previous copy's values.
        for node, value in values.items():
            if value is cache[node]:
                continue
            if isinstance(value, Patched):
                y0, y1, x0, x1 = value.box
                if y1 > y0 and x1 > x0:
                    value.clean[..., y0:y1, x0:x1] = value.patch
            else:
                cache[node] = value
        return output

    def _step(self, node: fx.Node, values: dict[fx.Node, Any], clean: dict[fx.Node, Any]) -> Any:
        incremental = self._incremental(node, values, clean)
        if incremental is not None:
            return incremental
        dense = {n: _dense(values[n]) for n in node.all_input_nodes}
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
        y0, y1, x0, x1 = value.box
        height, width = value.clean.shape[-2:]
        return (y1 - y0) * (x1 - x0) > self.dense_fraction * height * width

    @staticmethod
    def _pointwise(
        x: Patched, out: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> Patched | None:
        if out.shape != x.clean.shape:
            return None
        return Patched(out, x.box, fn(x.patch))

    @staticmethod
    def _shift(x: Patched, out: torch.Tensor, padding: Sequence[int]) -> Patched | None:
        left, _, top, _ = (int(p) for p in padding)
        if min(padding) < 0:
            return None
        y0, y1, x0, x1 = x.box
        return Patched(out, (y0 + top, y1 + top, x0 + left, x1 + left), x.patch)

    @staticmethod
    def _add(args: Sequence[Any], out: torch.Tensor) -> Patched | None:
        a, b = args
        if not all(isinstance(v, Patched | torch.Tensor) for v in (a, b)):
            return None
        if any(isinstance(v, torch.Tensor) and v.shape != out.shape for v in (a, b)):
            return None
        if any(isinstance(v, Patched) and v.clean.shape != out.shape for v in (a, b)):
            return None
        boxes = [v.box for v in (a, b) if isinstance(v, Patched)]
        if not boxes:
            return None
        box = boxes[0] if len(boxes) == 1 else _union(*boxes)
        y0, y1, x0, x1 = box
        crops = [v.crop(box) if isinstance(v, Patched) else v[..., y0:y1, x0:x1] for v in (a, b)]
        return Patched(out, box, crops[0] + crops[1])

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
        spans = []
        for axis, length in ((0, height), (1, width)):
            geometry = _window_geometry(
                x.box[2 * axis],
                x.box[2 * axis + 1],
                length,
                kernel[axis],
                stride[axis],
                padding[axis],
                dilation[axis],  # type: ignore[index]
            )
            if geometry is None:
                return Patched(out, (0, 0, 0, 0), out[..., :0, :0])
            spans.append(geometry)
        (oy0, oy1, iy0, iy1), (ox0, ox1, ix0, ix1) = spans
        patch = fn(x.crop((iy0, iy1, ix0, ix1), pad_value))
        copies = x.patch.shape[0]
        if patch.shape[-2:] != (oy1 - oy0, ox1 - ox0) or patch.shape[:2] != (copies, out.shape[1]):
            return None
        return Patched(out, (oy0, oy1, ox0, ox1), patch)


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


def _dense(value: Any) -> Any:
    return value.dense() if isinstance(value, Patched) else value


_CACHE: weakref.WeakKeyDictionary[nn.Module, IncrementalModel | None] = weakref.WeakKeyDictionary()


def incremental_model(model: nn.Module) -> IncrementalModel | None:
    """The (cached) incremental executor of ``model``, or ``None`` if ``torch.fx`` cannot trace it."""
    if model not in _CACHE:
        _CACHE[model] = IncrementalModel.build(model)
    return _CACHE[model]
