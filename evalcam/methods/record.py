"""One record per method: what the runner tags, the benchmark times, the figure draws and the README lists.

``cost`` classes how many network passes a method needs per image and target, which decides what the
benchmark's ``--quick`` leaves out and what a run warns about before it starts:

- ``free``: no network pass (baselines);
- ``forward``: one forward pass for all targets (CAM, Eigen-CAM);
- ``gradient``: one forward and one backward pass per target (Grad-CAM family, input gradients);
- ``per_channel``: a forward pass per feature channel (Score-CAM; Ablation-CAM without a closed form);
- ``perturbation``: hundreds to thousands of forward passes per image (occlusion, RISE).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Literal

from evalcam.methods.base import Explainer

Cost = Literal["free", "forward", "gradient", "per_channel", "perturbation"]
#: cost classes far above one forward pass per image
EXPENSIVE_COSTS: frozenset[str] = frozenset({"per_channel", "perturbation"})


@dataclass(frozen=True)
class MethodRecord:
    cls: type[Explainer]
    family: str
    paper: str
    cost: Cost
    #: peer implementations timed against this method: (library, class name); library is one of
    #: ``pgc`` (pytorch-grad-cam), ``captum``, ``torchcam``
    peers: tuple[tuple[str, str], ...] = ()

    @property
    def expensive(self) -> bool:
        return self.cost in EXPENSIVE_COSTS

    @property
    def default_params(self) -> dict[str, Any]:
        """Keyword defaults of the class (``conf/method/<name>.yaml`` repeats them; tested)."""
        defaults: dict[str, Any] = {}
        # Subclasses pass **kwargs on to their bases (e.g. every Captum method to the adapter): base
        # defaults first, each subclass's own on top.
        for klass in reversed(self.cls.__mro__):
            if "__init__" not in vars(klass) or klass is object:
                continue
            for name, p in inspect.signature(klass.__init__).parameters.items():
                if p.default is not inspect.Parameter.empty and name not in ("target_layer", "classifier"):
                    defaults[name] = p.default
        return defaults
