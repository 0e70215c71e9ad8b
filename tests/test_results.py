"""The result store (evalcam.results) when the disk fills up: one clear line, the parts already written kept
intact, the previous summary never truncated, and a rerun of the same command finishing with the numbers
of an uninterrupted run."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from conftest import IMAGES, assert_same_numbers, parts
from conftest import small_run_config as config_for

from evalcam import results, runner
from evalcam.results import StorageError
from evalcam.runner import run


def test_full_disk_mid_run_is_one_clear_error_and_a_rerun_completes(tmp_path, monkeypatch, small_reference):
    config = config_for(tmp_path / "runs")
    real_write = results.pq.write_table
    calls = []

    def write_until_full(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) > 1:
            Path(where).write_bytes(b"PAR1 half a file")  # the disk fills up mid-write
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(results.pq, "write_table", write_until_full)
    with pytest.raises(StorageError) as err:
        run(config)
    message = str(err.value)
    assert "\n" not in message and "no space left on device" in message
    assert "1 batch part(s)" in message and "intact" in message and "rerun the same command" in message
    run_dir = runner.run_directory(config)
    assert len(parts(run_dir)) == 1 and not list((run_dir / "per_image").glob(".*tmp"))
    assert not (run_dir / "summary.json").exists()

    monkeypatch.setattr(results.pq, "write_table", real_write)  # space freed
    resumed = run(config)
    assert len(parts(run_dir)) == IMAGES
    assert_same_numbers(resumed.metrics, small_reference)


def test_full_disk_while_finishing_keeps_the_previous_summary(tmp_path, monkeypatch):
    config = config_for(tmp_path / "runs")
    first = run(config)
    summary = (first.run_dir / "summary.json").read_bytes()
    real_write_text = Path.write_text

    def full(self, data, *args, **kwargs):
        if self.name.startswith(".summary.json"):
            real_write_text(self, data[:10], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(StorageError, match=r"summary\.json: no space left on device"):
        run(config)
    assert (first.run_dir / "summary.json").read_bytes() == summary  # not truncated
    assert not list(first.run_dir.glob(".*tmp"))
