"""Source activity confidence and the selection of each training track's most active stretch.

Thesis 3.3.1 takes 150 s of every training track "based on the activity of all sources", with
the activation-confidence tool of MedleyDB (Bittner et al. 2014): the signal is half-wave
rectified, compressed, smoothed, down-sampled and passed through a logistic function. This
module implements that recipe on mono sources and picks the window where the sources are,
on average, most confidently active.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve

#: Defaults of MedleyDB's activation confidence (window 4096 at 44.1 kHz, ~93 ms; logistic
#: threshold 0.15 and slope 20 on the normalised, compressed envelope).
WINDOW_SECONDS = 4096 / 44100
THETA = 0.15
SLOPE = 20.0


def activity_confidence(
    sources: np.ndarray,
    rate: int,
    window_seconds: float = WINDOW_SECONDS,
    theta: float = THETA,
    slope: float = SLOPE,
) -> np.ndarray:
    """Confidence in [0, 1] that each source is active, one value per half window.

    ``sources`` is (n_sources, samples), mono. Returns (n_sources, frames) with a hop of half a
    window. Each source's envelope is normalised by its own maximum, so a quiet but present
    source still counts as active, and a silent one stays at the logistic floor.
    """
    if sources.ndim != 2:
        raise ValueError(f"sources must be (n_sources, samples), got shape {sources.shape}")
    window = max(2, int(round(window_seconds * rate)))
    hop = window // 2
    compressed = np.sqrt(np.maximum(sources, 0.0))  # half-wave rectify, then compress
    kernel = np.hanning(window)
    kernel /= kernel.sum()
    smoothed = fftconvolve(compressed, kernel[None, :], mode="same", axes=1)[:, ::hop]
    peak = smoothed.max(axis=1, keepdims=True)
    normalised = np.divide(smoothed, peak, out=np.zeros_like(smoothed), where=peak > 0)
    return 1.0 / (1.0 + np.exp(-slope * (normalised - theta)))


def most_active_window(sources: np.ndarray, rate: int, seconds: float | None) -> tuple[int, int]:
    """Start and length in samples of the ``seconds``-long stretch where all sources are most
    active (highest mean confidence over sources and time). Tracks shorter than ``seconds``,
    or ``seconds=None``, give the whole track."""
    total = sources.shape[1]
    length = total if seconds is None else int(round(seconds * rate))
    if length >= total:
        return 0, total
    confidence = activity_confidence(sources, rate).mean(axis=0)
    hop = max(2, int(round(WINDOW_SECONDS * rate))) // 2
    frames = max(1, length // hop)
    if frames >= len(confidence):
        return 0, length
    window_sums = np.convolve(confidence, np.ones(frames), mode="valid")
    start = int(np.argmax(window_sums)) * hop
    return min(start, total - length), length
