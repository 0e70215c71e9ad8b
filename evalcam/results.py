"""Per-image results written as the run goes, so an interrupted run resumes where it stopped.

Each batch becomes one Parquet part file, written atomically (temp file + rename), holding the batch's
rows and, in its metadata, every metric's state *for that batch alone*. Metric states are sums, so the
run's state is the sum of its parts' states: a SIGKILL loses at most the batch in flight, a restart
reads back the finished image ids and the exact accumulated state, and parts written by several
processes (``torchrun``) merge the same way. Summation follows the part order, so a resumed run gives
bit-identical numbers to an uninterrupted one.

A write that fails (a full disk, a read-only or vanished folder) leaves no partial part behind and raises
:class:`StorageError`, whose one-line message says where, why, how much is already safe, and that the
same command resumes once the cause is fixed.
"""

from __future__ import annotations

import base64
import errno
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

STATE_KEY = b"evalcam.metric_states"
States = dict[str, dict[str, torch.Tensor]]


class StorageError(OSError):
    """Results could not be written; the message is one line that says what is still intact."""


def storage_error(err: OSError, path: Path, intact: str) -> StorageError:
    """A :class:`StorageError` for ``err`` while writing ``path`` (errno kept for callers that test it)."""
    reason = "no space left on device" if err.errno in (errno.ENOSPC, errno.EDQUOT) else str(err)
    message = (
        f"cannot write {path}: {reason}. {intact} Free space (or fix the folder) and rerun the same "
        f"command to resume"
    )
    return StorageError(err.errno or errno.EIO, message.replace("\n", " "))


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Run ``write(tmp_path)`` then rename onto ``path``: readers see the old file or the whole new one,
    never a truncated one (a full disk mid-write must not destroy an earlier result)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written temp file would only hold on to the scarce space
        raise


class ResultStore:
    def __init__(self, directory: str | Path, rank: int = 0) -> None:
        self.dir = Path(directory)
        self.rank = rank
        self.parts_dir = self.dir / "per_image"
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._next = self._next_index()

    def parts(self) -> list[Path]:
        """All complete parts, from every process, in a fixed order (batch index, then rank)."""
        return sorted(self.parts_dir.glob("part-*.parquet"), key=lambda p: p.stem.split("-")[1:][::-1])

    def _next_index(self) -> int:
        mine = [int(p.stem.split("-")[1]) for p in self.parts() if int(p.stem.split("-")[2]) == self.rank]
        return max(mine, default=-1) + 1

    def done_ids(self) -> set[str]:
        parts = self.parts()
        if not parts:
            return set()
        return set(pq.read_table(parts, columns=["image_id"]).column("image_id").to_pylist())

    def part_ids(self) -> list[tuple[str, list[str]]]:
        """``(part name, its image ids)`` of every complete part, in :meth:`parts` order."""
        return [
            (part.name, pq.read_table(part, columns=["image_id"]).column("image_id").to_pylist())
            for part in self.parts()
        ]

    def load_states(self) -> States | None:
        """Sum of the metric states of all complete parts, or None for a fresh run."""
        total: States | None = None
        for part in self.parts():
            meta = pq.read_schema(part).metadata or {}
            states: States = torch.load(io.BytesIO(base64.b64decode(meta[STATE_KEY])), weights_only=True)
            if total is None:
                total = states
                continue
            for metric, state in states.items():
                for name, value in state.items():
                    total[metric][name] = total[metric][name] + value
        return total

    def append(self, rows: list[dict[str, Any]], states: States) -> Path:
        """Write one batch: its rows and its own (not cumulative) metric states."""
        buffer = io.BytesIO()
        torch.save(states, buffer)
        # from_pylist takes its columns from the first row alone; a skipped image first in its batch
        # (no metric columns) would drop every other row's results.
        columns = list(dict.fromkeys(key for row in rows for key in row))
        table = pa.Table.from_pylist([{key: row.get(key) for key in columns} for row in rows])
        table = table.replace_schema_metadata({STATE_KEY: base64.b64encode(buffer.getvalue())})
        path = self.parts_dir / f"part-{self._next:06d}-{self.rank:03d}.parquet"
        try:
            # Atomic: a part is either complete or absent, so a resumed run never reads half a batch.
            write_atomic(path, lambda tmp: pq.write_table(table, tmp))
        except OSError as err:
            done = len(self.parts())
            raise storage_error(
                err, path, f"The {done} batch part(s) already in {self.parts_dir} are intact."
            ) from err
        self._next += 1
        return path

    def table(self) -> pd.DataFrame:
        parts = self.parts()
        if not parts:
            return pd.DataFrame()
        # Parts may differ in inferred types (a column all-None in one batch); concat per part.
        frames = [pd.read_parquet(p) for p in parts]
        return (
            pd.concat([f for f in frames if len(f)], ignore_index=True)
            if any(len(f) for f in frames)
            else frames[0]
        )
