"""The part of a network after one layer, cut out of its ``torch.fx`` graph, so perturbation methods
(Ablation-CAM) re-run only the layers that an edit of that layer's output can change.

:meth:`GraphTail.trace` symbolically traces the model; the *tail* is every graph node that depends on the
target layer's output. :meth:`GraphTail.prepare` runs the whole graph once on a batch and keeps the
*boundary*: values computed before the layer that the tail still reads (skip connections, shapes).
Calling the prepared tail with ``count`` edited copies of the layer's output ``[count * B, ...]`` (copy-major,
as :meth:`AblationCAM._ablated_copies` lays them out) evaluates only the tail nodes, the batch-shaped
boundary tensors tiled ``count`` times.

Tracing is not possible for every model (data-dependent control flow); a layer that is called more than
once per forward pass has no single cut. Both give ``None`` and the caller falls back to re-running the
whole model. :meth:`PreparedTail.verify` also re-checks, on the batch at hand, that the tail applied to the
unedited output reproduces the model's own logits; a tail that captured a batch-size-dependent value (an
``x.size(0)`` taken before the cut) fails that check instead of returning wrong scores.

Its sibling :mod:`evalcam.models.incremental` cuts the other way: it re-runs, for an edit of the *input*,
only the receptive-field cone of the edited pixels (occlusion, compact deletion steps).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn


class _Recorder(fx.Interpreter):
    """Runs the whole graph and keeps the values of ``keep`` on the way (the others are freed as usual)."""

    def __init__(self, module: fx.GraphModule, keep: set[fx.Node]) -> None:
        super().__init__(module)
        self.keep, self.kept = keep, {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n in self.keep:
            self.kept[n] = value
        return value


class _CutTracer(fx.Tracer):
    """Keeps the target layer a single ``call_module`` node even when it is a container (a whole block)."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.layer or super().is_leaf_module(m, module_qualified_name)


class GraphTail:
    """A traced model split at ``layer``; see the module docstring."""

    def __init__(self, module: fx.GraphModule, cut: fx.Node) -> None:
        self.module, self.cut = module, cut
        tail = {cut}
        for node in module.graph.nodes:  # topological order: inputs come before their users
            if any(arg in tail for arg in node.all_input_nodes):
                tail.add(node)
        self.tail = tail
        self.boundary = {arg for node in tail for arg in node.all_input_nodes if arg not in tail}

    @classmethod
    def trace(cls, model: nn.Module, layer: str) -> GraphTail | None:
        """The split of ``model`` at its submodule ``layer``; None if it cannot be traced or cut there."""
        try:
            module = fx.GraphModule(model, _CutTracer(layer).trace(model))
        except Exception:  # any tracing failure means "no graph": the caller re-runs the whole model
            return None
        calls = [n for n in module.graph.nodes if n.op == "call_module" and n.target == layer]
        if len(calls) != 1:
            return None
        split = cls(module, calls[0])
        if not any(n.op == "output" for n in split.tail):
            return None
        return split

    def prepare(self, images: torch.Tensor) -> PreparedTail:
        """Run the full graph on ``images``; returns the tail bound to this batch's boundary values."""
        recorder = _Recorder(self.module, self.boundary)
        recorder.run(images)
        return PreparedTail(self, recorder.kept, images.shape[0])


class PreparedTail:
    def __init__(self, split: GraphTail, kept: dict[fx.Node, Any], batch: int) -> None:
        self.split, self.batch, self.boundary = split, batch, kept

    def _tile(self, node: fx.Node, value: Any, count: int) -> Any:
        # Parameters and buffers (get_attr) are shared by every copy; batch-shaped values are per image.
        if node.op == "get_attr" or not isinstance(value, torch.Tensor):
            return value
        if value.ndim == 0 or value.shape[0] != self.batch:
            return value
        return value.repeat(count, *([1] * (value.ndim - 1)))

    def __call__(self, copies: torch.Tensor) -> torch.Tensor:
        """Logits ``[count * B, ...]`` of the edited layer outputs ``copies`` ``[count * B, ...]``."""
        count = copies.shape[0] // self.batch
        env: dict[fx.Node, Any] = {
            # Placeholders for the nodes before the cut: Interpreter.run skips nodes already in env.
            node: None
            for node in self.split.module.graph.nodes
            if node not in self.split.tail
        }
        env.update({node: self._tile(node, value, count) for node, value in self.boundary.items()})
        env[self.split.cut] = copies
        return fx.Interpreter(self.split.module).run(initial_env=env)

    def verify(self, activation: torch.Tensor, logits: torch.Tensor, rtol: float = 1e-4) -> bool:
        """Whether two unedited copies of the layer's output ``activation`` give back ``logits``, the
        model's own output on the batch (so a graph traced before a submodule was swapped is caught too).

        ``activation`` is passed in rather than recorded here because an in-place op after the layer
        (``ReLU(inplace=True)``) would overwrite a recorded value; ``capture_activations`` keeps it intact.
        """
        twice = activation.detach().repeat(2, *([1] * (activation.ndim - 1)))
        try:
            out = self(twice)
        except Exception:  # a tail that cannot run on a tiled batch is not usable
            return False
        expected = logits.detach().float().repeat(2, 1)
        if not isinstance(out, torch.Tensor) or out.shape != expected.shape:
            return False
        scale = expected.abs().amax().clamp_min(1e-6)
        return bool(((out.float() - expected).abs().amax() <= rtol * scale).item())
