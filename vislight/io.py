"""Atomic writes: a file is either absent or complete, never half written (killed runs resume).

A write that fails (full disk, read-only or unwritable folder) removes its temporary file and raises
:class:`WriteError`, whose message names the path and the fix; ``python -m vislight`` prints it as
one line.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class WriteError(OSError):
    """A file of the run could not be written; the message names the path and what to do."""


# errno values that mean "this file system will not take the file" (not a bug of the run).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def write_error(path: Path, error: OSError) -> WriteError:
    """The :class:`WriteError` for ``error`` met while writing ``path``."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free space there or point paths.output_dir (and masks.cache_dir) at another disk"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make that folder writable or pass paths.output_dir=DIR on a writable file system"
    else:
        fix = "check that folder, or pass paths.output_dir=DIR elsewhere"
    return WriteError(
        error.errno,
        f"cannot write {path}: {reason}; {fix}, then rerun the same command (finished work is kept)",
    )


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(binary file)`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    data = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable).encode()
    atomic_write(path, lambda f: f.write(data))


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically."""
    buf = io.BytesIO()  # serialised first: a failed write is then a plain OSError
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))


def _jsonable(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
