"""Per-image results written as the run goes, so an interrupted run resumes where it stopped.

Each batch becomes one Parquet part file written atomically (temp file + rename) that holds the batch's
rows and, in its metadata, every metric's cumulative state after that batch. A SIGKILL can therefore
lose at most the batch in flight: on restart the last complete part gives both the finished image ids
and the exact accumulator state, and the run continues to the same numbers an uninterrupted run gives.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

STATE_KEY = b"evalcam.metric_states"


class ResultStore:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.parts_dir = self.dir / "per_image"
        self.parts_dir.mkdir(parents=True, exist_ok=True)

    def parts(self) -> list[Path]:
        return sorted(self.parts_dir.glob("part-*.parquet"))

    def done_ids(self) -> set[str]:
        parts = self.parts()
        if not parts:
            return set()
        return set(pq.read_table(parts, columns=["image_id"]).column("image_id").to_pylist())

    def load_states(self) -> dict[str, dict[str, torch.Tensor]] | None:
        """Metric states after the last complete part, or None for a fresh run."""
        parts = self.parts()
        if not parts:
            return None
        meta = pq.read_schema(parts[-1]).metadata or {}
        raw = base64.b64decode(meta[STATE_KEY])
        return torch.load(io.BytesIO(raw), weights_only=True)

    def append(self, rows: list[dict[str, Any]], states: dict[str, dict[str, torch.Tensor]]) -> Path:
        parts = self.parts()
        index = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        buffer = io.BytesIO()
        torch.save(states, buffer)
        table = pa.Table.from_pylist(rows)
        table = table.replace_schema_metadata({STATE_KEY: base64.b64encode(buffer.getvalue())})
        path = self.parts_dir / f"part-{index:06d}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic: a part is either complete or absent
        return path

    def table(self) -> pd.DataFrame:
        parts = self.parts()
        if not parts:
            return pd.DataFrame()
        # Parts may differ in inferred types (a column all-None in one batch); concat per part.
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
