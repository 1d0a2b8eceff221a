"""SIGTERM / SIGINT stop a run promptly and resumably; file-system errors end with one line."""

from __future__ import annotations

import errno
import json
import os
import signal
import time

import pytest
from helpers import (
    compose_job_config,
    kill_when,
    no_partial_files,
    popen_vislight,
    run_vislight,
    tiny_args,
)

from vislight.__main__ import run_or_exit
from vislight.io import WriteError, write_json
from vislight.output_folder import check_writable_folder


def _stop_line(log) -> str:
    lines = [line for line in log.read_text().splitlines() if line.startswith("vislight:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_sigterm_stops_a_long_mask_batch_within_seconds(tmp_path, tiny_cache):
    """One batch of every image at the paper's schedule (450 iterations, no early stopping) takes
    far longer than 10 s here; SIGTERM stops it at the next iteration, writes none of its masks
    and exits 143."""
    out, log = tmp_path / "run", tmp_path / "term.log"
    args = tiny_args(
        out, tiny_cache, "masks.batch_size=18", "masks.smooth.iterations=300",
        "masks.sharp.iterations=150", "masks.early_stopping.enabled=false",
    )  # fmt: skip
    proc = popen_vislight(args, log)
    started = []

    def in_masks() -> bool:
        return log.exists() and "stage masks" in log.read_text(errors="replace")

    def trigger() -> bool:
        if in_masks() and not started:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > 1.0

    assert kill_when(proc, trigger, 0.0, sig=signal.SIGTERM)
    stopped = time.monotonic() - started[0] - 1.0
    assert proc.returncode == 143, log.read_text()[-3000:]
    assert stopped < 10, stopped
    line = _stop_line(log)
    assert line.startswith("vislight: stopped by SIGTERM during the masks stage; finished: "), line
    assert "classifier, evaluate" in line and line.endswith("Rerun the same command to resume.")
    assert not list(out.glob("masks/*/*.npz"))  # the batch in flight was dropped, not half written
    no_partial_files(out)


def test_sigint_stops_at_a_safe_point_and_the_rerun_resumes(tmp_path, tiny_cache, tiny_reference):
    out, log = tmp_path / "run", tmp_path / "int.log"
    args = tiny_args(out, tiny_cache)
    proc = popen_vislight(args, log)
    assert kill_when(
        proc, lambda: len(list(out.glob("masks/*/*.npz"))) >= 1, 0.0, sig=signal.SIGINT
    )
    assert proc.returncode == 130, log.read_text()[-3000:]
    line = _stop_line(log)
    assert line.startswith("vislight: stopped by SIGINT during the masks stage"), line
    assert "Traceback" not in log.read_text()
    assert not no_partial_files(out)  # nothing half written, not even a temporary file
    finished = len(list(out.glob("masks/*/*.npz")))
    rerun = run_vislight(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mask"]["reused"] == finished
    assert (out / "summaries.json").read_bytes() == (tiny_reference / "summaries.json").read_bytes()


def test_an_unwritable_output_folder_is_one_line(tmp_path, capsys):
    proc = run_vislight("paths.output_dir=/proc/vislight-x", "logger=none", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("vislight: error: paths.output_dir='/proc/vislight-x' cannot be used")
    assert line.endswith("pass paths.output_dir=DIR, a folder you can write to"), line
    blocker = tmp_path / "file"  # a folder under a file: the same check, in this process
    blocker.write_text("")
    with pytest.raises(SystemExit) as stop:
        check_writable_folder(blocker / "run", "paths.output_dir")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and "(Not a directory)" in line, line


def test_a_full_disk_during_the_masks_ends_with_one_line_and_no_partial_file(
    tmp_path, tiny_cache, monkeypatch, capsys
):
    """The disk fills up after two mask files: exit 1 with a line naming the file and the fix; the
    finished masks are complete, nothing half written is left, and a rerun resumes from them."""
    import vislight.io as vio

    real_fsync, masks_written = vio.os.fsync, []

    def fsync(fd):  # the file system is full from the third mask file on
        if ".npz." in os.readlink(f"/proc/self/fd/{fd}"):
            masks_written.append(fd)
            if len(masks_written) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    out = tmp_path / "run"
    args = tiny_args(out, tiny_cache, "masks.batch_size=1", "stages=[classifier,evaluate,masks]")
    with monkeypatch.context() as m:
        m.setattr(vio.os, "fsync", fsync)
        with pytest.raises(SystemExit) as stop:
            run_or_exit(compose_job_config(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vislight:")]
    assert stop.value.code == 1 and len(lines) == 1, err
    assert "cannot write " in lines[0] and ".npz: No space left on device; free space" in lines[0]
    assert lines[0].endswith("then rerun the same command (finished work is kept)")
    assert not no_partial_files(out) and len(list(out.glob("masks/*/*.npz"))) == 2
    metrics = run_or_exit(compose_job_config(args))
    assert metrics["mask"]["reused"] == 2 and metrics["mask"]["computed"] > 0


def test_a_failed_atomic_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "a" / "m.json"
    monkeypatch.setattr(
        "vislight.io.os.fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
    )
    with pytest.raises(WriteError, match=r"cannot write .*m.json: full; free space"):
        write_json(target, {"x": 1})
    assert list((tmp_path / "a").iterdir()) == []
