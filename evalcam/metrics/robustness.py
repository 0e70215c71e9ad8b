"""Explanations under adversarial noise (Grad-CAM paper, Selvaraju et al. ICCV 2017, Sec. 6: Grad-CAM of the
original class on an adversarial image that fools the network still localizes that class).

For each image, with ``c`` its top-1 predicted class on the clean input:

1. **attack** (untargeted, drives ``c``'s confidence down by ascending the cross-entropy of ``c``):
   FGSM (Goodfellow et al. 2015), ``x' = clip(x + eps * sign(grad))``, and/or PGD (Madry et al. 2018),
   ``steps`` iterations of size ``alpha`` projected on the L-inf ball of radius ``eps``, optional seeded
   random start. ``eps`` and ``alpha`` are in [0, 1] pixel units; the attack runs in pixel space (the
   valid-image box [0, 1]) and feeds ``(x' - mean) / std`` to the network, i.e. it is an attack in the
   normalized input space with per-channel radius ``eps / std``;
2. **success**: the adversarial top-1 class differs from ``c``;
3. the map of the ORIGINAL class ``c`` is recomputed on the adversarial input (``batch.explainer``) and,
   for images whose ``c`` is a ground-truth class, checked as on clean inputs: weak localization (box of
   the largest segment at ``threshold`` = 15% of the max, IoU >= ``iou`` with a GT box of ``c``; helpers of
   :mod:`evalcam.metrics.weak_loc`) and the pointing game (argmax within ``tolerance`` px of ``c``'s
   region, :mod:`evalcam.metrics.regions`). Rates are reported over all such images and over those where
   the attack succeeded (``_fooled``);
4. **similarity** of the clean and adversarial maps at map resolution: Spearman and Pearson correlation.

Batch independence: every image's attack is its own. The cross-entropy is summed, not averaged, so
the gradient of image ``i`` is ``d loss_i / d x_i`` whatever else is in the batch (and the network runs in
eval mode, so no batch statistics couple images); the random start is drawn per image from a generator
seeded with ``(seed, image_id)``. What remains is float round-off: batched convolution kernels sum in an
order that depends on the batch size (relative differences ~1e-7), and the loss gradient of a ReLU/ReLU6
network is discontinuous at the kinks, so a pre-activation lying within round-off of a kink takes the
other branch and flips the sign step of the pixels in its receptive field where the gradient is small.
Measured on 3 ILSVRC val images with EfficientNet-Lite0 (1 PGD step from a random start), batch 1 vs
batch 3: one unit of ``head_act`` of one image changes side, 136 of its 150528 input-gradient signs flip,
and that image's clean-vs-adversarial Spearman moves by 3.6e-3 (Pearson 3.3e-4, probability drop 8e-5). The
attack numbers are therefore bit-reproducible for a fixed batch size and device, and agree across batch
sizes up to such differences; a float64 model would shrink them but costs far more than it is worth.

Degenerate maps: a localization/pointing check on a degenerate map fails; a similarity involving a
constant or non-finite map scores 0 (:mod:`evalcam.metrics.stats`); both are counted in
``degenerate_maps``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.perturbed_scores import model_of, normalization
from evalcam.metrics.pointing import is_flat
from evalcam.metrics.regions import argmax_point, has_region, pointing_hit
from evalcam.metrics.stats import pearson, spearman
from evalcam.metrics.weak_loc import best_iou, map_to_box
from evalcam.requirements import Needs
from evalcam.stats.aggregation import Aggregation, Mean

ATTACKS = ("fgsm", "pgd")


def _input_gradient(
    model: torch.nn.Module, pixels: torch.Tensor, classes: torch.Tensor, mean, std
) -> torch.Tensor:
    """Gradient of the summed cross-entropy of ``classes`` w.r.t. pixel-space inputs (no parameter grads)."""
    with torch.enable_grad():
        x = pixels.detach().requires_grad_(True)
        loss = F.cross_entropy(model((x - mean) / std).float(), classes, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model, pixels, classes, mean, std, eps: float) -> torch.Tensor:
    """One signed-gradient step of size ``eps`` (pixel units) away from ``classes``; returns pixels."""
    grad = _input_gradient(model, pixels, classes, mean, std)
    return (pixels + eps * grad.sign()).clamp(0, 1).detach()


def pgd(
    model, pixels, classes, mean, std, eps: float, alpha: float, steps: int, start: torch.Tensor | None = None
) -> torch.Tensor:
    """L-inf PGD in pixel space: ``steps`` signed steps of ``alpha``, projected on ``|delta| <= eps``."""
    adv = pixels if start is None else (pixels + start.clamp(-eps, eps)).clamp(0, 1)
    for _ in range(int(steps)):
        grad = _input_gradient(model, adv, classes, mean, std)
        adv = adv + alpha * grad.sign()
        adv = (pixels + (adv - pixels).clamp(-eps, eps)).clamp(0, 1).detach()
    return adv


def _image_seed(seed: int, image_id: str) -> int:
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def random_starts(
    image_ids: Sequence[str], shape: Sequence[int], eps: float, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[N, *shape]`` uniform noise in ``[-eps, eps]``, image ``i``'s drawn from a CPU generator seeded with
    ``(seed, image_ids[i])``: the same start for an image in any batch, after any resume, on any device."""
    noise = [
        torch.empty(tuple(shape)).uniform_(
            -eps, eps, generator=torch.Generator().manual_seed(_image_seed(seed, image_id))
        )
        for image_id in image_ids
    ]
    return torch.stack(noise).to(device)


class AdversarialRobustness(Metric):
    name = "robustness"
    needs = Needs(labels=True, boxes=True, multi_label="top-1 class checked when it is any label")
    # Explanation quality under attack: higher overlap and similarity are better. The attack's success
    # rate and probability drop measure the network, not the method: no direction.
    higher_is_better: ClassVar[dict[str, bool]] = {
        "clean_iou": True,
        "clean_loc_acc": True,
        "clean_pointing_acc": True,
        **{
            f"{attack}_{key}": True
            for attack in ("fgsm", "pgd")
            for key in (
                "iou",
                "loc_acc",
                "pointing_acc",
                "loc_acc_fooled",
                "pointing_acc_fooled",
                "spearman",
                "pearson",
            )
        },
    }
    pred_topk = 1
    _quantities = (
        "images",
        "success",
        "prob_drop",
        "evaluable",
        "iou_sum",
        "loc",
        "point",
        "fooled_evaluable",
        "fooled_loc",
        "fooled_point",
        "spearman",
        "pearson",
        "degenerate",
    )

    def __init__(
        self,
        device: torch.device | str = "cpu",
        attacks: Sequence[str] = ATTACKS,
        eps: float = 4 / 255,
        steps: int = 10,
        alpha: float = 1 / 255,
        random_start: bool = False,
        seed: int | None = 0,  # None: not resolved from the run's seed (evalcam.stats.seed); 0
        threshold: float = 0.15,
        iou: float = 0.5,
        tolerance: float = 15,
    ) -> None:
        super().__init__(device)
        self.attacks = [attacks] if isinstance(attacks, str) else list(attacks)
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(f"unknown attack(s) {unknown}; available: {', '.join(ATTACKS)}")
        self.eps, self.steps, self.alpha = float(eps), int(steps), float(alpha)
        self.random_start, self.seed = bool(random_start), int(seed or 0)
        self.threshold, self.iou, self.tolerance = float(threshold), float(iou), float(tolerance)
        for q in self._quantities:
            self.add_state(q, torch.zeros(len(self.attacks), dtype=torch.float64))
        for q in ("clean_iou", "clean_loc", "clean_point"):
            self.add_state(q, torch.zeros((), dtype=torch.float64))

    def _start(self, batch: EvalBatch, like: torch.Tensor) -> torch.Tensor | None:
        if not self.random_start:
            return None
        ids = [s.image_id for s in batch.samples]
        return random_starts(ids, like.shape[1:], self.eps, self.seed, like.device)

    def _checks(self, cam: torch.Tensor, sample, cls: int) -> tuple[float, bool, bool, bool]:
        """(IoU, localized, pointed, degenerate) for a map of ``cls`` on ``sample``."""
        up = upsample(cam, sample.size).cpu()
        flat = is_flat(cam) or is_flat(up)  # the map as returned (resampling ripples a constant one), then up
        box = None if flat else map_to_box(up, self.threshold)
        iou = best_iou(box, sample.boxes.get(cls))
        pointed = (not flat) and pointing_hit(argmax_point(up), sample, cls, self.tolerance)
        return iou, iou >= self.iou, pointed, box is None or flat

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        model = model_of(batch)
        mean, std = normalization(batch)
        inputs = batch.inputs
        pixels = (inputs * std + mean).clamp(0, 1)
        classes = batch.pred_classes[:, 0].to(inputs.device)
        clean_maps = batch.pred_maps[:, 0]
        with torch.no_grad():
            clean_prob = model(inputs).float().softmax(-1).gather(1, classes[:, None]).squeeze(1)
        evaluable = [
            int(c) in s.labels and has_region(s, int(c))
            for s, c in zip(batch.samples, classes.tolist(), strict=True)
        ]
        records: list[dict[str, Any]] = [{} for _ in batch.samples]
        for i, sample in enumerate(batch.samples):
            if evaluable[i]:
                iou, loc, point, _ = self._checks(clean_maps[i], sample, int(classes[i]))
                self.clean_iou = self.clean_iou + iou
                self.clean_loc = self.clean_loc + float(loc)
                self.clean_point = self.clean_point + float(point)
                records[i].update(self.record(clean_iou=iou, clean_loc=loc, clean_point=point))
            records[i].update(self.record(evaluable=evaluable[i]))

        for a, attack in enumerate(self.attacks):
            if attack == "fgsm":
                adv = fgsm(model, pixels, classes, mean, std, self.eps)
            else:
                adv = pgd(
                    model,
                    pixels,
                    classes,
                    mean,
                    std,
                    self.eps,
                    self.alpha,
                    self.steps,
                    self._start(batch, pixels),
                )
            adv_inputs = (adv - mean) / std
            explanation = batch.explainer.explain(adv_inputs, classes)
            adv_maps = explanation.maps[:, 0]
            adv_logits = explanation.logits.float()
            adv_prob = adv_logits.softmax(-1).gather(1, classes[:, None]).squeeze(1)
            success = adv_logits.argmax(-1) != classes
            rho, rho_ok = spearman(clean_maps, adv_maps)
            r, r_ok = pearson(clean_maps, adv_maps)
            counts = dict.fromkeys(self._quantities, 0.0)
            counts["images"] = float(len(batch.samples))
            counts["success"] = float(success.sum())
            counts["prob_drop"] = float((clean_prob - adv_prob).sum())
            counts["spearman"] = float(rho.sum())
            counts["pearson"] = float(r.sum())
            counts["degenerate"] = float((~(rho_ok & r_ok)).sum())
            for i, sample in enumerate(batch.samples):
                rec = records[i]
                rec.update(
                    self.record(
                        {
                            f"{attack}_success": bool(success[i]),
                            f"{attack}_prob_drop": float(clean_prob[i] - adv_prob[i]),
                            f"{attack}_spearman": float(rho[i]),
                            f"{attack}_pearson": float(r[i]),
                        }
                    )
                )
                if not evaluable[i]:
                    continue
                iou, loc, point, degenerate = self._checks(adv_maps[i], sample, int(classes[i]))
                counts["evaluable"] += 1
                counts["iou_sum"] += iou
                counts["loc"] += loc
                counts["point"] += point
                counts["degenerate"] += degenerate
                if bool(success[i]):
                    counts["fooled_evaluable"] += 1
                    counts["fooled_loc"] += loc
                    counts["fooled_point"] += point
                rec.update(
                    self.record({f"{attack}_iou": iou, f"{attack}_loc": loc, f"{attack}_point": point})
                )
            for q, value in counts.items():
                state = getattr(self, q).clone()
                state[a] += value
                setattr(self, q, state)
        return records

    def aggregations(self, keys: Iterable[str]) -> dict[str, Aggregation]:
        # Localization and pointing rates run over the evaluable images only: their records are absent
        # elsewhere, and the _fooled rates over those where the attack succeeded.
        known: dict[str, Aggregation] = {
            "clean_iou": Mean(self.column("clean_iou")),
            "clean_loc_acc": Mean(self.column("clean_loc")),
            "clean_pointing_acc": Mean(self.column("clean_point")),
        }
        for a in self.attacks:
            col = self.column(a)
            known |= {
                f"{a}_success_rate": Mean(f"{col}_success"),
                f"{a}_prob_drop": Mean(f"{col}_prob_drop"),
                f"{a}_spearman": Mean(f"{col}_spearman"),
                f"{a}_pearson": Mean(f"{col}_pearson"),
                f"{a}_iou": Mean(f"{col}_iou"),
                f"{a}_loc_acc": Mean(f"{col}_loc"),
                f"{a}_pointing_acc": Mean(f"{col}_point"),
                f"{a}_loc_acc_fooled": Mean(f"{col}_loc", where=f"{col}_success"),
                f"{a}_pointing_acc_fooled": Mean(f"{col}_point", where=f"{col}_success"),
            }
        return {k: known[k] for k in keys if k in known}

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        evaluable = self.evaluable[0] if len(self.attacks) else torch.zeros(())
        out["clean_iou"] = safe_ratio(self.clean_iou, evaluable)
        out["clean_loc_acc"] = safe_ratio(self.clean_loc, evaluable)
        out["clean_pointing_acc"] = safe_ratio(self.clean_point, evaluable)
        for a, attack in enumerate(self.attacks):
            n = self.images[a]
            out[f"{attack}_success_rate"] = safe_ratio(self.success[a], n)
            out[f"{attack}_prob_drop"] = safe_ratio(self.prob_drop[a], n)
            out[f"{attack}_iou"] = safe_ratio(self.iou_sum[a], self.evaluable[a])
            out[f"{attack}_loc_acc"] = safe_ratio(self.loc[a], self.evaluable[a])
            out[f"{attack}_pointing_acc"] = safe_ratio(self.point[a], self.evaluable[a])
            out[f"{attack}_loc_acc_fooled"] = safe_ratio(self.fooled_loc[a], self.fooled_evaluable[a])
            out[f"{attack}_pointing_acc_fooled"] = safe_ratio(self.fooled_point[a], self.fooled_evaluable[a])
            out[f"{attack}_spearman"] = safe_ratio(self.spearman[a], n)
            out[f"{attack}_pearson"] = safe_ratio(self.pearson[a], n)
            out[f"{attack}_fooled_evaluable"] = float(self.fooled_evaluable[a])
        out["images"] = float(self.images[0])
        out["evaluable"] = float(evaluable)
        out["degenerate_maps"] = float(self.degenerate.sum())
        return out
