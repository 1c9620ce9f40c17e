"""What the data and the models must agree on: STFT framing and the names of sources and targets.

The lowest floor of the suite: ``datamodules`` cuts chunks with it, and ``lightning_modules``
(STFT, separators) frames and names them with it, so neither package imports the other's
internals. Thesis Section 3.3.2: a 2048-sample STFT with a hop of 512 samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["HOP", "N_FFT", "SOURCES", "TARGET_SETS", "chunk_samples", "targets_from_sources"]

N_FFT: int = 2048
"""STFT frame (and window) length in samples (thesis Section 3.3.2)."""

HOP: int = 512
"""STFT hop size in samples (thesis Section 3.3.2)."""

#: MUSDB18's stems, in the order of every (4, samples) array of the suite (the decoded cache).
SOURCES: tuple[str, ...] = ("vocals", "drums", "bass", "other")

#: What a batch carries besides the mixture: vocals + accompaniment (sum of the others), or all.
TARGET_SETS: dict[str, tuple[str, ...]] = {
    "vocals": ("vocals", "accompaniment"),
    "all": SOURCES,
}


def chunk_samples(frames: int, n_fft: int = N_FFT, hop: int = HOP) -> int:
    """Samples whose non-centred STFT has exactly ``frames`` frames: ``n_fft + (frames-1)*hop``.

    Training chunks are cut to this length so that ``stft(chunk, center=False)`` yields the
    thesis' context sizes without padding (64 frames -> 34,304 samples = 1.072 s at 32 kHz;
    8 frames -> 5,632 samples = 176 ms).
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return n_fft + (frames - 1) * hop


def targets_from_sources(sources: torch.Tensor, targets: str) -> torch.Tensor:
    """(..., 4, T) sources in ``SOURCES`` order -> (..., n_targets, T) for the named target set."""
    # torch on use only: the data set's writers (synthetic.py, cache.py) import this module
    # and never need torch
    import torch

    if targets == "all":
        return sources
    if targets == "vocals":
        vocals = sources[..., 0:1, :]
        return torch.cat([vocals, sources[..., 1:, :].sum(dim=-2, keepdim=True)], dim=-2)
    raise ValueError(f"unknown targets '{targets}', expected one of {sorted(TARGET_SETS)}")
