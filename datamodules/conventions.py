"""What the data and the models must agree on: STFT framing and the names of sources and targets.

The lowest floor of the suite: ``datamodules`` cuts chunks with it, and ``lightning_modules``
(STFT, separators) frames and names them with it, so neither package imports the other's
internals. Thesis Section 3.3.2: a 2048-sample STFT with a hop of 512 samples; the companion
papers use others (``STFTConfig``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHANNELS",
    "HOP",
    "N_FFT",
    "SOURCES",
    "TARGET_SETS",
    "WINDOWS",
    "STFTConfig",
    "check_channels",
    "chunk_samples",
    "stft_config",
    "target_names",
    "targets_from_sources",
]

N_FFT: int = 2048
"""STFT frame (and window) length in samples (thesis Section 3.3.2)."""

HOP: int = 512
"""STFT hop size in samples (thesis Section 3.3.2)."""

#: Analysis windows an ``STFTConfig`` can name (periodic, as ``torch.*_window(periodic=True)``).
WINDOWS: tuple[str, ...] = ("hann", "hamming")


@dataclass(frozen=True)
class STFTConfig:
    """The STFT of a row: set on the DataModule (``data.stft``), linked into the model.

    Defaults are the thesis's (2048 / 512, periodic Hann, DC bin dropped: 1024 bins), so every
    thesis config means what it meant. Sams-Net: ``n_fft=4096, hop=1024, window=hamming,
    keep_dc=true`` (2049 bins).
    """

    n_fft: int = N_FFT
    hop: int = HOP
    win_length: int | None = None  # None: n_fft (a shorter window is zero-padded to n_fft)
    window: str = "hann"
    keep_dc: bool = False

    def __post_init__(self) -> None:
        if self.n_fft < 2 or self.hop < 1:
            raise ValueError(f"STFT n_fft={self.n_fft}, hop={self.hop}: need n_fft >= 2, hop >= 1")
        if self.window not in WINDOWS:
            raise ValueError(f"STFT window {self.window!r}: expected one of {WINDOWS}")
        if self.win_length is not None and not 1 <= self.win_length <= self.n_fft:
            raise ValueError(f"STFT win_length={self.win_length}: must lie in [1, n_fft]")
        if self.hop >= self.window_length:  # frames must overlap, or the iSTFT cannot invert
            raise ValueError(
                f"STFT hop={self.hop}: must be shorter than the window ({self.window_length} "
                "samples) for the overlap-add of the inverse STFT"
            )

    @property
    def window_length(self) -> int:
        return self.win_length or self.n_fft

    @property
    def bins(self) -> int:
        """Frequency bins the models see: ``n_fft // 2`` without DC, ``n_fft // 2 + 1`` with."""
        return self.n_fft // 2 + int(self.keep_dc)


def stft_config(value: STFTConfig | Mapping[str, Any] | None) -> STFTConfig:
    """An ``STFTConfig`` from what a constructor gets: the config itself, its fields as a dict
    (LightningCLI's saved hyper-parameters), or None (the thesis's STFT)."""
    if value is None:
        return STFTConfig()
    if isinstance(value, STFTConfig):
        return value
    unknown = sorted(set(value) - set(STFTConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"STFT options {unknown} unknown: expected n_fft, hop, win_length, window, keep_dc"
        )
    return STFTConfig(**value)


#: Channel counts of the data and the models: the thesis's mono downmix, or stereo.
CHANNELS: tuple[int, ...] = (1, 2)


def check_channels(channels: int) -> int:
    """``channels`` if it is one of ``CHANNELS``, else a ValueError naming the option."""
    if channels not in CHANNELS:
        raise ValueError(f"channels must be 1 (mono downmix) or 2 (stereo), got {channels!r}")
    return channels


#: MUSDB18's stems, in the order of every (4, samples) array of the suite (the decoded cache).
SOURCES: tuple[str, ...] = ("vocals", "drums", "bass", "other")

#: What a batch carries besides the mixture: vocals + accompaniment (sum of the others), or all.
#: A list of MUSDB sources (``[vocals, drums]``) is a target set too: those sources, in order.
TARGET_SETS: dict[str, tuple[str, ...]] = {
    "vocals": ("vocals", "accompaniment"),
    "all": SOURCES,
}


def target_names(targets: str | Sequence[str]) -> tuple[str, ...]:
    """The names of a target set, in the order of the batch's ``targets``."""
    if isinstance(targets, str):
        if targets not in TARGET_SETS:
            raise ValueError(f"unknown targets '{targets}', expected one of {sorted(TARGET_SETS)}")
        return TARGET_SETS[targets]
    names = tuple(targets)
    unknown = [name for name in names if name not in SOURCES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"targets {list(names)}: a list of distinct MUSDB sources {SOURCES}")
    return names


def chunk_samples(frames: int, n_fft: int = N_FFT, hop: int = HOP) -> int:
    """Samples whose non-centred STFT has exactly ``frames`` frames: ``n_fft + (frames-1)*hop``.

    Training chunks are cut to this length so that ``stft(chunk, center=False)`` yields the
    thesis' context sizes without padding (64 frames -> 34,304 samples = 1.072 s at 32 kHz;
    8 frames -> 5,632 samples = 176 ms).
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return n_fft + (frames - 1) * hop


def targets_from_sources(
    sources: torch.Tensor, targets: str | Sequence[str], dim: int = -2
) -> torch.Tensor:
    """Sources in ``SOURCES`` order along ``dim`` -> the target set along the same axis (a name
    of ``TARGET_SETS``, or a list of sources): (..., 4, T) -> (..., n_targets, T), or with a
    channel axis, ``dim=-3``: (..., 4, C, T) -> (..., n_targets, C, T)."""
    # torch on use only: the data set's writers (synthetic.py, cache.py) import this module
    # and never need torch
    import torch

    names = target_names(targets)
    if not isinstance(targets, str):
        index = torch.tensor([SOURCES.index(name) for name in names], device=sources.device)
        return torch.index_select(sources, dim, index)
    if targets == "all":
        return sources
    vocals = sources.narrow(dim, 0, 1)
    rest = sources.narrow(dim, 1, sources.shape[dim] - 1).sum(dim, keepdim=True)
    return torch.cat([vocals, rest], dim)
