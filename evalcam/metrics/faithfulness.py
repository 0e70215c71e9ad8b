"""Faithfulness as rank correlation with occlusion sensitivity (Grad-CAM paper, Selvaraju et al. ICCV 2017,
"Faithfulness vs. Interpretability": rank correlation between the method's map and patch-occlusion maps,
the occlusion map being the drop in the class score when a patch is masked; Zeiler & Fergus 2014).

For the top-1 predicted class ``c`` of each image:

1. every ``patch_size`` x ``patch_size`` window on a ``stride`` grid of the network input is filled with
   ``fill`` (default: the mean colour, 0 in normalized input space); the grid's last row/column is
   aligned to the border so every pixel is covered;
2. ``drop = score_c(image) - score_c(occluded)`` with ``score`` the pre-softmax class score (``logit``,
   as in Grad-CAM) or the softmax probability (``prob``);
3. the occlusion map at a pixel is the mean drop of the windows covering it (captum ``Occlusion``'s
   convention);
4. the method's map is upsampled bilinearly to the input and the Spearman rank correlation (average ranks
   for ties, ``scipy.stats.spearmanr``) over all pixels is the image's score; ``spearman`` is the mean.

The paper does not state the patch size or stride; both are parameters (defaults 45 and 15 px on a
224 px input). Occluded copies are scored by :func:`evalcam.methods.occlusion.occluded_outputs`: on the
CPU (``incremental: auto``) each re-computes only the part of each layer its window can reach, reusing the
clean pass elsewhere (exact up to float round-off, 4-5x faster than full forwards on EfficientNet-Lite0);
on GPUs and with ``incremental=false``, full copies run ``chunk_size`` per forward.
With ``cache_dir`` set, occlusion maps are kept on disk (:class:`OcclusionCache`) and shared by every run
that scores the same model, images and classes (the methods of a sweep).
A constant or non-finite map (method or occlusion) has no ranking: it scores 0 and is counted in
``degenerate_maps`` (see :mod:`evalcam.metrics.stats`).
"""

from __future__ import annotations

import hashlib
import os
import weakref
from pathlib import Path
from typing import Any, ClassVar

import torch

from evalcam.maps import upsample
from evalcam.methods.occlusion import occluded_outputs, occlusion_boxes, spread_drops, use_incremental
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.perturbed_scores import class_scores, fill_value, model_of, normalization
from evalcam.metrics.stats import flat_maps, spearman
from evalcam.models.incremental import Box

#: bump when the occlusion map's definition changes, so that old cached maps are not read
CACHE_VERSION = 1


def occlusion_map(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    boxes: list[Box],
    fill: torch.Tensor,
    score: str = "logit",
    chunk_size: int = 64,
    incremental: bool | str = False,
) -> torch.Tensor:
    """``[B, H, W]`` mean drop of ``score`` of ``classes`` over the occlusion windows covering each pixel.

    ``incremental``: re-compute only each window's receptive-field cone (:mod:`evalcam.models.incremental`)
    where the model can be traced; otherwise every occluded copy is a full forward, ``chunk_size`` per call.
    """
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    clean, occluded = occluded_outputs(model, inputs, boxes, fill, chunk_size, incremental)
    count = len(boxes)
    clean_scores = class_scores(clean, classes, score).double()
    occluded_scores = class_scores(occluded.flatten(0, 1), classes.repeat_interleave(count), score).double()
    drops = clean_scores[:, None] - occluded_scores.view(-1, count).to(clean_scores.device)
    return spread_drops(drops, boxes, size)


class OcclusionCache:
    """Occlusion maps on disk, one file per (model, input, class, protocol settings).

    The occlusion map depends on the network, the image and the class, not on the method being scored, so
    the runs of a method sweep over one model and dataset compute it once (it is ~170 forwards per image,
    the whole cost of this metric). The key hashes the model's name, weights file and parameter values and
    the exact input tensor, so a changed model or preprocessing never reads a stale map.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._fingerprints: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()

    def _fingerprint(self, model: torch.nn.Module) -> str:
        if model not in self._fingerprints:
            digest = hashlib.sha256()
            for name, tensor in sorted(model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprints[model] = digest.hexdigest()
        return self._fingerprints[model]

    def key(self, batch: EvalBatch, model: torch.nn.Module, index: int, cls: int, settings: tuple) -> str:
        digest = hashlib.sha256()
        bundle = batch.bundle
        identity = (bundle.name, bundle.weights) if bundle is not None else ("", "")
        digest.update(repr((CACHE_VERSION, identity, self._fingerprint(model), cls, settings)).encode())
        image = batch.inputs[index].detach().float().cpu().contiguous()
        digest.update(repr(tuple(image.shape)).encode())
        digest.update(image.numpy().tobytes())
        return digest.hexdigest()

    def load(self, key: str) -> torch.Tensor | None:
        path = self.root / key[:2] / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: recompute (and overwrite) it
            return None

    def store(self, key: str, occlusion: torch.Tensor) -> None:
        path = self.root / key[:2] / f"{key}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(occlusion.detach().cpu(), partial)
        os.replace(partial, path)  # readers never see a half-written map


class OcclusionFaithfulness(Metric):
    name = "faithfulness"
    higher_is_better: ClassVar[dict[str, bool]] = {"spearman": True}
    pred_topk = 1

    def __init__(
        self,
        device: torch.device | str = "cpu",
        patch_size: int = 45,
        stride: int = 15,
        fill: str | float = "mean",
        score: str = "logit",
        chunk_size: int = 64,
        incremental: bool | str = "auto",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(device)
        self.patch_size, self.stride = int(patch_size), int(stride)
        use_incremental(incremental, torch.device("cpu"))  # reject a bad value now, not mid-run
        self.incremental = incremental
        self.cache = OcclusionCache(cache_dir) if cache_dir else None
        self.fill, self.score, self.chunk_size = fill, score, int(chunk_size)
        for state in ("spearman_sum", "images", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        inputs = batch.inputs
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        mean, std = normalization(batch)
        classes = batch.pred_classes[:, 0].to(inputs.device)
        model, fill = model_of(batch), fill_value(self.fill, mean, std)
        count = len(classes)
        keys: list[str | None] = [None] * count
        occlusion = torch.zeros(count, *size, dtype=torch.float64, device=inputs.device)
        todo = list(range(count))
        if self.cache is not None:
            settings = (self.patch_size, self.stride, self.score, fill.tolist())
            keys = [self.cache.key(batch, model, i, int(c), settings) for i, c in enumerate(classes.tolist())]
            todo = []
            for i, key in enumerate(keys):
                stored = self.cache.load(key)
                if stored is None or tuple(stored.shape) != size:
                    todo.append(i)
                else:
                    occlusion[i] = stored.to(occlusion.device)
        if todo:
            index = torch.tensor(todo, device=inputs.device)
            fresh = occlusion_map(
                model,
                inputs[index],
                classes[index],
                occlusion_boxes(size, self.patch_size, self.stride),
                fill,
                self.score,
                self.chunk_size,
                self.incremental,
            )
            occlusion[index] = fresh
            for i, row in zip(todo, fresh, strict=True):
                if self.cache is not None and keys[i] is not None:
                    self.cache.store(keys[i], row)
        cams = upsample(batch.pred_maps[:, 0].to(inputs.device), size)
        rho, valid = spearman(cams, occlusion)
        # A constant map is judged before resampling, which leaves float ripples a ranking would order.
        valid = valid & ~flat_maps(batch.pred_maps[:, 0]).to(valid.device)
        rho = torch.where(valid, rho, torch.zeros_like(rho))
        self.spearman_sum = self.spearman_sum + rho.sum().to(self.device)
        self.images = self.images + len(rho)
        self.degenerate = self.degenerate + (~valid).sum().to(self.device)
        return [
            self.record({"spearman": float(r), "class": int(c), "degenerate": not bool(v)})
            for r, c, v in zip(rho.tolist(), classes.tolist(), valid.tolist(), strict=True)
        ]

    def compute(self) -> dict[str, float]:
        return {
            "spearman": safe_ratio(self.spearman_sum, self.images),
            "images": float(self.images),
            "degenerate_maps": float(self.degenerate),
        }
