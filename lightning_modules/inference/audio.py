"""Reading the audio file a user asks to separate (checkpoint and streamed paths alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 audio and its sample rate; a clear error for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        raise ValueError(f"cannot read {path} as audio: {error}") from error
    if audio.shape[0] == 0:
        raise ValueError(f"{path} holds no samples")
    if not np.isfinite(audio).all():
        raise ValueError(f"{path} contains NaN or inf samples")
    return audio.mean(axis=1), int(rate)
