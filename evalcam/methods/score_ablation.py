"""Gradient-free CAMs whose channel weights come from extra forward passes, batched over channels in
memory-bounded chunks (``chunk_size`` = network inputs per extra forward pass).

- Score-CAM (Wang et al., CVPR-W 2020): channel ``k``'s weight is the increase in confidence
  ``C(A_k) = f(X * H_k) - f(X_b)`` (Sec. 3.2, Def. 2), ``H_k`` the upsampled activation min-max scaled to
  [0, 1] and ``f`` the target's softmax probability (Sec. 3.3 / the authors' code).
- Ablation-CAM (Desai & Ramaswamy, WACV 2020, Eq. 4): ``w_k = (y - y_k) / y`` where ``y_k`` is the score
  with channel ``k`` of the target layer set to zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from evalcam.methods.base import (
    CAMExplainer,
    Explanation,
    TargetFn,
    Targets,
    capture_activations,
    merge_layers,
    resolve_targets,
)
from evalcam.methods.cam import LinearHeadProbe
from evalcam.methods.hooks import forward_hooks
from evalcam.models.graph_tail import GraphTail, PreparedTail
from evalcam.models.layers import resolve_layer


def column_scores(
    outputs: torch.Tensor, classes: torch.Tensor | None, score_fns: list[TargetFn], score: str = "logit"
) -> torch.Tensor:
    """Scores ``[m, B, K]`` of the targets for ``m`` variants of each of the ``B`` images (``outputs`` is
    ``[m, B, num_classes]``), read from the raw outputs (``"logit"``), their softmax (``"prob"``) or their
    sigmoid (``"sigmoid"``, multi-label models). Callable targets see one ``[B, num_classes]`` slice at a
    time, exactly the batch layout they were written for."""
    outputs = outputs.float()
    if score == "prob":
        outputs = outputs.softmax(-1)
    elif score == "sigmoid":
        outputs = outputs.sigmoid()
    elif score != "logit":
        raise ValueError(f"unknown score {score!r}; use 'prob', 'sigmoid' or 'logit'")
    if classes is not None:
        return outputs.gather(2, classes[None].expand(outputs.shape[0], -1, -1))
    return torch.stack([torch.stack([fn(o).float() for fn in score_fns], -1) for o in outputs])


def _substitute(replacement: torch.Tensor) -> Callable:
    """Forward hook that replaces a layer's output (the ablated copies) in the caller's dtype."""

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return replacement.to(output.dtype)

    return hook


def _per_column(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """``[B, K, h, w]`` per layer -> merged ``[B, K, h, w]``."""
    columns = per_layer[0].shape[1]
    return torch.stack([merge_layers([m[:, k] for m in per_layer]) for k in range(columns)], 1)


class ScoreCAM(CAMExplainer):
    """Score-CAM. Defaults follow the paper: ``score="prob"`` (post-softmax target probability),
    ``baseline="zeros"`` (``X_b = X * 0``, the all-zero network input, i.e. the limit of the masking), and
    the confidence increases used directly as weights. A callable target receives the softmax
    probabilities when ``score="prob"`` and the logits when ``score="logit"``.

    ``channel_softmax=True`` applies a softmax over channels to the weights; with ``score="logit"``,
    ``baseline="none"`` this is pytorch-grad-cam's ``ScoreCAM``, and with ``baseline="input"`` (``X_b = X``)
    torchcam's. ``align_corners`` is for the activations' bilinear upsampling (pytorch-grad-cam's
    ``nn.UpsamplingBilinear2d`` uses ``True``; the authors' code and torchcam ``False``).
    """

    name = "scorecam"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | Sequence[str],
        chunk_size: int = 64,
        score: str = "prob",
        baseline: str = "zeros",
        channel_softmax: bool = False,
        align_corners: bool = False,
        reshape: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        relu: bool = True,
        autocast: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, relu=relu, autocast=autocast)
        if score not in ("prob", "logit"):
            raise ValueError(f"Score-CAM score must be 'prob' or 'logit', got {score!r}")
        if baseline not in ("zeros", "input", "none"):
            raise ValueError(f"Score-CAM baseline must be 'zeros', 'input' or 'none', got {baseline!r}")
        self.chunk_size, self.score, self.baseline = int(chunk_size), score, baseline
        self.channel_softmax, self.align_corners = channel_softmax, align_corners

    def _scores(
        self, outputs: torch.Tensor, classes: torch.Tensor | None, fns: list[TargetFn]
    ) -> torch.Tensor:
        return column_scores(outputs, classes, fns, self.score)

    def zero_image_scores(
        self, images: torch.Tensor, classes: torch.Tensor | None, fns: list[TargetFn]
    ) -> torch.Tensor:
        """``[B, K]`` target scores of the all-zero network input, one forward pass for the batch."""
        with self._autocast():
            zero = self.model(torch.zeros_like(images[:1]))
        return self._scores(zero.expand(images.shape[0], -1)[None], classes, fns)[0]

    def masked_scores(
        self,
        images: torch.Tensor,
        acts: torch.Tensor,
        classes: torch.Tensor | None,
        fns: list[TargetFn],
        zero: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, C, K]`` target scores of the images masked by each channel's normalised activation;
        ``zero`` (:meth:`zero_image_scores`) when the caller has it already."""
        if classes is None:
            return self._masked_scores_dense(images, acts, fns)
        b, c = acts.shape[:2]
        flat = acts.flatten(2)
        varying = flat.amax(2) > flat.amin(2)
        # A constant channel carries no spatial information, so its mask is all zeros (as in
        # pytorch-grad-cam) and the masked input is the all-zero image whatever the channel: one forward
        # pass serves all of them. Behind a ReLU half of the channels are dead, so this halves the cost.
        if zero is None:
            zero = self.zero_image_scores(images, classes, fns)
        scores = zero[:, None, :].expand(b, c, -1).clone()
        pairs = varying.nonzero()  # (image, channel) pairs that need their own forward pass
        for start in range(0, len(pairs), self.chunk_size):
            image_idx, channel_idx = pairs[start : start + self.chunk_size].unbind(1)
            part = F.interpolate(
                acts[image_idx, channel_idx][:, None],
                size=images.shape[-2:],
                mode="bilinear",
                align_corners=self.align_corners,
            )
            low = part.amin(dim=(2, 3), keepdim=True)
            span = part.amax(dim=(2, 3), keepdim=True) - low
            masks = (part - low) / span.clamp_min(torch.finfo(part.dtype).tiny)
            with self._autocast():
                outputs = self.model((masks * images[image_idx]).to(images.dtype))
            scores[image_idx, channel_idx] = self._scores(outputs[None], classes[image_idx], fns)[0]
        return scores

    def _masked_scores_dense(
        self, images: torch.Tensor, acts: torch.Tensor, fns: list[TargetFn]
    ) -> torch.Tensor:
        """Callable targets see whole ``[B, num_classes]`` batches, so every pass holds all B images."""
        b, c = acts.shape[:2]
        per_forward = max(1, self.chunk_size // b)
        scores = []
        for start in range(0, c, per_forward):
            part = F.interpolate(
                acts[:, start : start + per_forward],
                size=images.shape[-2:],
                mode="bilinear",
                align_corners=self.align_corners,
            )
            low = part.amin(dim=(2, 3), keepdim=True)
            span = part.amax(dim=(2, 3), keepdim=True) - low
            masks = torch.where(span > 0, (part - low) / torch.where(span > 0, span, 1.0), 0.0)
            masked = masks.transpose(0, 1)[:, :, None] * images[None]  # [m, B, channels, H, W]
            with self._autocast():
                outputs = self.model(masked.flatten(0, 1).to(images.dtype))
            scores.append(self._scores(outputs.view(masked.shape[0], b, -1), None, fns))
        return torch.cat(scores).transpose(0, 1)

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        images = images.to(self.device)
        with torch.no_grad():
            with capture_activations(self.model, self.layers) as store, self._autocast():
                logits = self.model(images)
            classes, fns = resolve_targets(targets, logits)
            # The zero image is both the paper's baseline and the masked input of every constant channel.
            zero = None
            if self.baseline == "zeros" or classes is not None:
                zero = self.zero_image_scores(images, classes, fns)
            if self.baseline == "zeros":
                base = zero
            elif self.baseline == "input":
                base = self._scores(logits[None], classes, fns)[0]
            else:
                base = None
            per_layer = []
            for name in self.layers:
                acts = self._spatial(store.activations[name]).float()
                increase = self.masked_scores(images, acts, classes, fns, zero)
                if base is not None:
                    increase = increase - base[:, None, :]
                weights = increase.softmax(1) if self.channel_softmax else increase
                maps = torch.einsum("bck,bchw->bkhw", weights, acts)
                per_layer.append(F.relu(maps) if self.relu else maps)
        return Explanation(maps=_per_column(per_layer), logits=logits.float(), classes=classes)


class AblationCAM(CAMExplainer):
    """Ablation-CAM. How the ablated scores ``y_k`` are obtained (``mode``):

    - ``"analytic"``: for a GAP+FC head right after the target layer (``classifier``, checked on the
      forward pass) zeroing channel ``k`` changes the logits by exactly ``-W[:, k] * mean_ij A_k``: no
      extra forward pass at all.
    - ``"tail"``: ``tail(raw_activation) -> logits`` re-runs only the layers after the target.
    - ``"graph"``: the same without a hand-written tail: the model is traced with ``torch.fx`` and only the
      graph nodes that depend on the target layer are evaluated on the ablated copies, the values they
      read from before the layer (skip connections) computed once per batch
      (:mod:`evalcam.models.graph_tail`). Checked on every batch: the cut graph must give back the
      model's logits on unablated copies.
    - ``"rerun"``: last resort for models ``torch.fx`` cannot trace: the whole model re-runs on chunks of
      ablated copies while a forward hook substitutes the target layer's output.
    - ``"auto"`` (default): analytic when the head checks out, else tail when given, else graph when the
      model traces and the check passes, else rerun.

    The ablated channel is dim 1 of the layer's raw output, or its last dim when ``reshape`` is set
    (token layers ``[B, T, C]``, as pytorch-grad-cam's ``AblationLayerVit``). The target layer must run once
    per forward pass.
    """

    name = "ablationcam"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | Sequence[str],
        classifier: str | None = None,
        mode: str = "auto",
        tail: Callable[[torch.Tensor], torch.Tensor] | None = None,
        chunk_size: int = 64,
        reshape: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        relu: bool = True,
        autocast: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, relu=relu, autocast=autocast)
        if mode not in ("auto", "analytic", "tail", "graph", "rerun"):
            raise ValueError(f"Ablation-CAM mode must be auto, analytic, tail, graph or rerun, got {mode!r}")
        if mode == "analytic" and (not classifier or len(self.layers) != 1):
            raise ValueError(
                "Ablation-CAM mode=analytic needs classifier=<final nn.Linear> and one target layer"
            )
        if mode == "tail" and tail is None:
            raise ValueError("Ablation-CAM mode=tail needs tail=<callable: layer output -> logits>")
        self.classifier, self.mode, self.tail, self.chunk_size = classifier, mode, tail, int(chunk_size)
        self.last_mode: str | None = None  # the path the last call took (for logs and tests)
        # Traced splits of the current model by layer name; dropped when ``self.model`` is swapped.
        self._splits: dict[str, GraphTail | None] = {}
        self._splits_of: nn.Module | None = None

    def _ablated_copies(self, raw: torch.Tensor, start: int, count: int) -> torch.Tensor:
        """``[count * B, ...]``: copy ``j`` of every image has channel ``start + j`` zeroed."""
        copies = raw.detach().unsqueeze(0).repeat(count, *([1] * raw.ndim))
        index = torch.arange(count, device=raw.device)
        if self.reshape is None:
            copies[index, :, start + index] = 0
        else:
            copies[index, ..., start + index] = 0
        return copies.flatten(0, 1)

    def _forward_scores(
        self,
        images: torch.Tensor,
        raw: torch.Tensor,
        layer: nn.Module,
        classes: torch.Tensor | None,
        fns: list[TargetFn],
        channels: int,
        mode: str,
        graph: PreparedTail | None = None,
    ) -> torch.Tensor:
        b = images.shape[0]
        per_forward = max(1, self.chunk_size // b)
        scores = []
        for start in range(0, channels, per_forward):
            count = min(per_forward, channels - start)
            copies = self._ablated_copies(raw, start, count)
            with self._autocast():
                if mode == "tail":
                    assert self.tail is not None
                    outputs = self.tail(copies)
                elif mode == "graph":
                    assert graph is not None
                    outputs = graph(copies)
                else:
                    with forward_hooks([(layer, _substitute(copies))]):
                        outputs = self.model(images.repeat(count, *([1] * (images.ndim - 1))))
            scores.append(column_scores(outputs.view(count, b, -1), classes, fns))
        return torch.cat(scores).transpose(0, 1)

    def _analytic_scores(
        self,
        logits: torch.Tensor,
        acts: torch.Tensor,
        weight: torch.Tensor,
        classes: torch.Tensor | None,
        fns: list[TargetFn],
    ) -> torch.Tensor:
        means = acts.mean(dim=(2, 3))  # [B, C]
        if classes is not None:
            rows = weight[classes]  # [B, K, C]
            base = logits.float().gather(1, classes)  # [B, K]
            return base[:, None, :] - rows.transpose(1, 2) * means[:, :, None]
        scores = []
        for start in range(0, means.shape[1], max(1, self.chunk_size)):
            part = slice(start, start + max(1, self.chunk_size))
            shift = weight[:, part].T[:, None, :] * means[:, part].T[:, :, None]  # [m, B, N]
            scores.append(column_scores(logits.float()[None] - shift, classes, fns))
        return torch.cat(scores).transpose(0, 1)

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        images = images.to(self.device)
        probe = None
        if self.mode in ("auto", "analytic") and self.classifier and len(self.layers) == 1:
            probe = LinearHeadProbe(self.model, self.classifier)
        with torch.no_grad():
            with (
                capture_activations(self.model, self.layers) as store,
                probe.hooks() if probe else nullcontext(),
                self._autocast(),
            ):
                logits = self.model(images)
            classes, fns = resolve_targets(targets, logits)
            scores = column_scores(logits[None], classes, fns)[0]  # [B, K]
            # Ablation-CAM divides by the score; guard an exact zero only (keeps the sign of y).
            denominator = torch.where(scores == 0, torch.finfo(scores.dtype).tiny, scores)
            per_layer = []
            for name in self.layers:
                raw = store.activations[name]
                acts = self._spatial(raw).float()
                mode = self._choose_mode(probe, acts, logits)
                if mode == "analytic":
                    assert probe is not None
                    weight = probe.module.weight.detach().float()
                    ablated = self._analytic_scores(logits, acts, weight, classes, fns)
                else:
                    graph = None
                    if mode in ("graph", "auto"):
                        graph = self._graph_tail(name, images, raw, logits)
                        if graph is None and mode == "graph":
                            raise ValueError(
                                f"Ablation-CAM mode=graph: {type(self.model).__name__} cannot be traced and "
                                f"cut at {name!r} with torch.fx; use mode=rerun or pass tail="
                            )
                        mode = "graph" if graph is not None else "rerun"
                        self.last_mode = mode
                    layer = resolve_layer(self.model, name)
                    ablated = self._forward_scores(
                        images, raw, layer, classes, fns, acts.shape[1], mode, graph
                    )
                weights = (scores[:, None, :] - ablated) / denominator[:, None, :]
                maps = torch.einsum("bck,bchw->bkhw", weights, acts)
                per_layer.append(F.relu(maps) if self.relu else maps)
        return Explanation(maps=_per_column(per_layer), logits=logits.float(), classes=classes)

    def _graph_tail(
        self, name: str, images: torch.Tensor, raw: torch.Tensor, logits: torch.Tensor
    ) -> PreparedTail | None:
        """The model cut after layer ``name``, bound to this batch and checked on it; None if unusable."""
        if self._splits_of is not self.model:
            self._splits, self._splits_of = {}, self.model
        # A cached graph goes stale when a submodule of the same model object is replaced; the check
        # against the model's own logits catches that, and the model is traced afresh once.
        for fresh in (name not in self._splits, True):
            if fresh:
                self._splits[name] = GraphTail.trace(self.model, name)
            split = self._splits[name]
            if split is None:
                return None
            with self._autocast():
                prepared = split.prepare(images)
                if prepared.verify(raw, logits, rtol=3e-2 if self.autocast is not None else 1e-4):
                    return prepared
            if fresh:
                break
        self._splits[name] = None  # cut but wrong on this model (e.g. reads the batch size): re-run it whole
        return None

    def _choose_mode(self, probe: LinearHeadProbe | None, acts: torch.Tensor, logits: torch.Tensor) -> str:
        mode = self.mode
        if mode in ("auto", "analytic"):
            problem = (
                probe.problem(acts, logits, loose=self.autocast is not None) if probe else "no classifier"
            )
            if problem is None:
                mode = "analytic"
            elif mode == "analytic":
                raise ValueError(
                    f"Ablation-CAM mode=analytic needs a GAP+FC head after the target layer: {problem}"
                )
            else:
                # "auto" still: explain() tries the traced graph before re-running the whole model.
                mode = "tail" if self.tail is not None else "auto"
        self.last_mode = mode
        return mode
