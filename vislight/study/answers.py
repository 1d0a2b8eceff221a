"""The answers file of a study (``study/answers.jsonl``): one JSON object per line, one per answer.

A line (keys in this order; ``time`` is UTC, ISO 8601 to the second)::

    {"participant": "p01", "trial": "3f9a0c12d4e5", "method": "vislight", "class": "disc_bar",
     "summary": 1, "choice": 2, "intruder": 4, "correct": false, "options": 5, "name": "bar",
     "order": 3, "time": "2025-01-31T10:15:02+00:00"}

``choice`` and ``intruder`` are positions among the trial's ``options`` (= k + 1) images, from 0;
``order`` is the trial's rank in the participant's sequence, from 1; ``name`` is what the
participant called the part (as typed, trimmed). Each line is appended by one ``os.write`` of the
whole line to a file opened with ``O_APPEND``, then ``fsync``, under the server's lock: concurrent
participants never interleave, and a killed server leaves at worst one cut last line, which readers
skip (and count).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from vislight.io import write_error

# Keys every answer line has (a line without one of them is skipped as unreadable).
FIELDS = ("participant", "trial", "method", "class", "summary", "choice", "intruder", "correct")


def append_answer(path: Path, answer: dict, newline_first: bool = False) -> None:
    """Append ``answer`` as one line to ``path`` with a single ``os.write``, then ``fsync``
    (``newline_first``: end a cut last line first). Callers serialise calls (one lock)."""
    data = (("\n" if newline_first else "") + json.dumps(answer) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, "the answer was written in part")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None


def ends_cut(path: Path) -> bool:
    """Whether ``path`` is non-empty and its last line lacks its newline (a cut write)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def read_answers(path: Path) -> tuple[list[dict], int]:
    """``(answers, unreadable lines)`` of ``path`` (``[]`` when it does not exist), in file order;
    a line that is not a JSON object with every key of :data:`FIELDS` counts as unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    answers, bad = [], 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            answer = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(answer, dict) and all(k in answer for k in FIELDS):
            answers.append(answer)
        else:
            bad += 1
    return answers, bad
