"""Atomic file writes: a reader (another process, a crash, a kill -9) sees the old file or the
new one, never half of one.

The data goes to a temporary file in the target's own folder (``os.replace`` is atomic only
within one file system), is flushed and fsynced, then renamed over the target. On any failure
the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_atomic", "write_json_atomic"]


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


#: Read once at import (setting the umask is process-wide, so not at every write).
_UMASK = _read_umask()


def _publish(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, give it the mode a plain ``open(path, "w")`` would have (mkstemp makes it
    0600: results would become unreadable to the group), and rename it over ``path``."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK
    with open(tmp, "r+b") as handle:  # the writer may have closed, or replaced, the file
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a file name (an exporter, a
    library's ``save``); when the block ends without an exception, the file there is fsynced and
    renamed to ``path``. On an exception it is deleted and ``path`` is untouched.

    The temporary name keeps ``path``'s suffix, since some writers choose the format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; creates the parent folder."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write then os.replace, so a reader (or a crash) never sees a half-written file.

    NaN and infinities are kept (museval writes NaN for silent frames); numpy scalars are
    written as floats.
    """
    write_atomic(path, json.dumps(payload, indent=2, allow_nan=True, default=float))
