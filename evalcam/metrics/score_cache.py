"""Perturbation results that do not depend on the map, kept on disk and shared by the methods of a sweep.

Several metrics perturb an image in ways that do not look at the explanation: occlusion faithfulness's
occlusion map (every window of a grid), infidelity's square removals, faithfulness correlation's random
pixel subsets. What the model says on those copies depends on the network, the image, the class and the
protocol's settings only, so comparing M methods on one model and dataset needs those forwards once, not
M times (they are the whole forward cost of these metrics: ~100-700 copies an image).

One file per (metric, model, input, class, settings, per-image extra): the key hashes the model's name,
weights file and every parameter and buffer value, the exact input tensor, the class, the settings and
anything per image the perturbation derives from (its seed, its baseline row). A changed model,
preprocessing, image, seed or setting therefore never reads a stale result, and a torn or foreign file is
recomputed. Parameters changed in place between two calls (``tensor._version``) are hashed again.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from evalcam.metrics.base import EvalBatch

#: bump when what a cached file means changes, so that old files are not read
CACHE_VERSION = 2

#: ``compute(index)`` -> rows ``[len(index), *shape]`` for the images ``index`` of the batch
Compute = Callable[[torch.Tensor], torch.Tensor]


def _state_signature(model: nn.Module) -> tuple:
    """Every module's class and mode, and where every parameter and buffer lives and how often it was
    written in place: unchanged values keep this tuple, so the (costly) hash of the values is reused."""
    modules = tuple((type(m), m.training) for m in model.modules())
    return modules, tuple((t.data_ptr(), t._version) for t in model.state_dict(keep_vars=True).values())


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The float32 values of ``tensor`` as bytes (for a cache key)."""
    return tensor.detach().float().cpu().contiguous().numpy().tobytes()


class ScoreCache:
    """Map-independent perturbation results of one metric on disk, under ``root`` (see the module doc)."""

    def __init__(self, root: str | Path, kind: str) -> None:
        self.root, self.kind = Path(root), kind
        self._fingerprints: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = (
            weakref.WeakKeyDictionary()
        )

    def fingerprint(self, model: nn.Module) -> str:
        """A hash of ``model``'s structure (its modules, their settings and modes: ``repr``) and every
        parameter and buffer value."""
        signature = _state_signature(model)
        known = self._fingerprints.get(model)
        if known is not None and known[0] == signature:
            return known[1]
        modes = [training for _, training in signature[0]]
        digest = hashlib.sha256(f"{type(model).__qualname__}\n{model!r}\n{modes}".encode())
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        self._fingerprints[model] = (signature, digest.hexdigest())
        return digest.hexdigest()

    def key(
        self,
        batch: EvalBatch,
        model: nn.Module,
        index: int,
        cls: int,
        settings: tuple,
        extra: bytes = b"",
    ) -> str:
        digest = hashlib.sha256()
        bundle = batch.bundle
        identity = (bundle.name, bundle.weights) if bundle is not None else ("", "")
        head = (CACHE_VERSION, self.kind, identity, self.fingerprint(model), int(cls), settings)
        digest.update(repr(head).encode())
        image = batch.inputs[index]
        digest.update(repr(tuple(image.shape)).encode())
        digest.update(tensor_bytes(image))
        digest.update(extra)
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: recompute (and overwrite) it
            return None
        return stored if isinstance(stored, torch.Tensor) else None

    def store(self, key: str, row: torch.Tensor) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(row.detach().cpu().clone(), partial)
        os.replace(partial, path)  # readers never see a half-written file


def cached_rows(
    cache: ScoreCache | None,
    batch: EvalBatch,
    model: nn.Module,
    classes: torch.Tensor,
    settings: tuple,
    shape: Sequence[int],
    compute: Compute,
    extras: Sequence[bytes] | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``[B, *shape]``: each image's row read from ``cache`` or, for the images it lacks (all of them
    without a cache), computed in one ``compute(index)`` call and stored."""
    count, device = len(classes), batch.inputs.device
    rows = torch.zeros(count, *shape, dtype=dtype, device=device)
    todo = list(range(count))
    keys: list[str] = []
    if cache is not None:
        extras = extras if extras is not None else [b""] * count
        keys = [cache.key(batch, model, i, c, settings, extras[i]) for i, c in enumerate(classes.tolist())]
        todo = []
        for i, key in enumerate(keys):
            stored = cache.load(key)
            if stored is None or tuple(stored.shape) != tuple(shape) or stored.dtype != dtype:
                todo.append(i)
            else:
                rows[i] = stored.to(device)
    if todo:
        index = torch.tensor(todo, device=device)
        fresh = compute(index).to(device=device, dtype=dtype)
        rows[index] = fresh
        if cache is not None:
            for i, row in zip(todo, fresh, strict=True):
                cache.store(keys[i], row)
    return rows
