"""``mixing: remix_0db``: the DSD100-remix protocol of the chimera paper (spec chimera-blstm.md,
B.5 and B-3/B-4), on the splits of ``MUSDBDataModule``.

* Silence removal (B-3): vocals and accompaniment (drums + bass + other) of every track are cut
  into 32 ms frames; a frame is silent when its energy (over all channels) is more than 40 dB
  below the loudest frame of that source in that track. Silent frames are removed from the two
  sources independently and what remains is concatenated per track, "so that the vocals and
  accompaniment fully overlap".
* Training (B-4): vocals and accompaniment chunks from independent random tracks and positions
  (no chunk crosses a track), the accompaniment scaled to the vocals' energy over the chunk
  (0 dB SNR, the vocals keep their level).
* Validation: a fixed set of such remixes of the validation tracks, drawn once with the seed.
* Test: one piece per test track, its own silence-removed vocals and accompaniment, the first
  ``seconds`` of each (the shorter stream's length at most), at 0 dB over the whole piece.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from datamodules.cache import SplitAudio
from datamodules.sampler import UniformStarts, check_lengths

#: B-3's proposal: 32 ms frames, silent below -40 dB of the source's loudest frame.
FRAME_SECONDS = 0.032
SILENCE_DB = 40.0
#: The two sources of a remix, in the order of the target set "vocals".
REMIX_SOURCES: tuple[str, ...] = ("vocals", "accompaniment")


def active_frames(
    signal: np.ndarray,
    rate: int,
    frame_seconds: float = FRAME_SECONDS,
    below_db: float = SILENCE_DB,
) -> np.ndarray:
    """Boolean per sample of a (channels, samples) signal: False in 32 ms frames whose energy is
    more than ``below_db`` under the loudest frame's (all False for a silent signal)."""
    frame = max(1, int(round(frame_seconds * rate)))
    samples = signal.shape[-1]
    n_frames = -(-samples // frame)
    padded = np.zeros((signal.shape[0], n_frames * frame), dtype=np.float64)
    padded[:, :samples] = signal
    energy = np.square(padded).reshape(signal.shape[0], n_frames, frame).sum(axis=(0, 2))
    loudest = energy.max()
    if loudest <= 0:
        return np.zeros(samples, dtype=bool)
    keep = energy >= loudest * 10.0 ** (-below_db / 10.0)
    return np.repeat(keep, frame)[:samples]


@dataclass(frozen=True)
class RemixStreams:
    """Silence-removed vocals and accompaniment of a split, each (channels, samples) with the
    tracks back to back; the tracks whose stream is empty are left out of that stream."""

    vocals: np.ndarray
    vocals_offsets: np.ndarray
    vocals_lengths: np.ndarray
    vocals_names: list[str]
    accompaniment: np.ndarray
    accompaniment_offsets: np.ndarray
    accompaniment_lengths: np.ndarray
    accompaniment_names: list[str]


def _source_pair(split: SplitAudio, index: int) -> tuple[np.ndarray, np.ndarray]:
    sources = np.asarray(split.sources_of(index), dtype=np.float32)  # (4, C, samples)
    return sources[0], sources[1:].sum(axis=0)


def silence_removed(split: SplitAudio, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(vocals, accompaniment) of one track, each (channels, samples) with its silent frames
    removed (B-3)."""
    vocals, accompaniment = _source_pair(split, index)
    return (
        vocals[:, active_frames(vocals, split.rate)],
        accompaniment[:, active_frames(accompaniment, split.rate)],
    )


def remix_streams(split: SplitAudio, chunk: int = 1, role: str = "training") -> RemixStreams:
    """The silence-removed streams of every track of ``split``. A track whose vocals or
    accompaniment keep less than one ``chunk`` (a near-instrumental track) is left out of that
    stream with a warning naming it (B-4: use what remains); none left is an error."""
    parts: dict[str, list[tuple[str, np.ndarray]]] = {name: [] for name in REMIX_SOURCES}
    short: dict[str, list[str]] = {name: [] for name in REMIX_SOURCES}
    for index, name in enumerate(split.names):
        for source, audio in zip(REMIX_SOURCES, silence_removed(split, index), strict=True):
            (parts[source] if audio.shape[-1] >= chunk else short[source]).append((name, audio))
    fields = {}
    for source, kept in parts.items():
        left_out = [name for name, _ in short[source]]
        if not kept:
            raise ValueError(
                f"mixing remix_0db: no {role} track keeps one chunk ({chunk} samples) of "
                f"{source} after silence removal ({left_out}); a 0 dB remix needs both"
            )
        if left_out:
            warnings.warn(
                f"mixing remix_0db: {len(left_out)} {role} track(s) keep less than one chunk "
                f"({chunk} samples) of {source} after silence removal and are left out of its "
                f"stream: {left_out}",
                stacklevel=2,
            )
        lengths = np.array([audio.shape[-1] for _, audio in kept], dtype=np.int64)
        fields[source] = np.concatenate([audio for _, audio in kept], axis=-1)
        fields[f"{source}_offsets"] = np.cumsum(lengths) - lengths
        fields[f"{source}_lengths"] = lengths
        fields[f"{source}_names"] = [name for name, _ in kept]
    return RemixStreams(**fields)


def zero_db(vocals: torch.Tensor, accompaniment: torch.Tensor) -> torch.Tensor:
    """The gain that brings ``accompaniment`` to the energy of ``vocals``, over the last two
    axes (channels, samples); 1 where the accompaniment is silent."""
    energy_v = vocals.double().square().sum(dim=(-2, -1))
    energy_a = accompaniment.double().square().sum(dim=(-2, -1))
    gain = torch.where(energy_a > 0, (energy_v / energy_a.clamp_min(1e-300)).sqrt(), 1.0)
    return gain.to(vocals.dtype)


class RemixSampler:
    """(batch, 2, channels, chunk) examples: (vocals, accompaniment) of independent random
    tracks and positions at 0 dB; the mixture is their sum."""

    source_names: tuple[str, ...] = REMIX_SOURCES

    def __init__(self, streams: RemixStreams, chunk: int, device: torch.device | str = "cpu"):
        self.chunk = chunk
        self._audio, self._starts = [], []
        for source in REMIX_SOURCES:
            lengths = torch.from_numpy(getattr(streams, f"{source}_lengths"))
            names = getattr(streams, f"{source}_names")
            check_lengths(lengths, chunk, names, f"silence-removed {source} of training tracks")
            offsets = torch.from_numpy(getattr(streams, f"{source}_offsets"))
            self._audio.append(torch.from_numpy(getattr(streams, source)).to(device))
            self._starts.append(UniformStarts(offsets, lengths, chunk, device))
        self._arange = torch.arange(chunk, device=device)

    @property
    def device(self) -> torch.device:
        return self._audio[0].device

    def batches_per_epoch(self, batch_size: int) -> int:
        return max(1, self._starts[0].total // (self.chunk * batch_size))

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        chunks = []
        for audio, starts in zip(self._audio, self._starts, strict=True):
            index = starts.draw((batch_size,), generator)[:, None] + self._arange
            chunks.append(audio[:, index].transpose(0, 1))  # (batch, C, chunk)
        vocals, accompaniment = chunks
        accompaniment = accompaniment * zero_db(vocals, accompaniment)[:, None, None]
        return torch.stack([vocals, accompaniment], dim=1)


def remix_piece(split: SplitAudio, index: int, seconds: float | None) -> np.ndarray:
    """(2, channels, samples): a test track's own silence-removed vocals and accompaniment, the
    first ``seconds`` of each (None: as long as the shorter), the accompaniment at 0 dB."""
    vocals, accompaniment = silence_removed(split, index)
    length = min(vocals.shape[-1], accompaniment.shape[-1])
    if seconds is not None:
        length = min(length, int(round(seconds * split.rate)))
    if length == 0:
        raise ValueError(
            f"mixing remix_0db: test track '{split.names[index]}' has silent vocals or "
            "accompaniment throughout; a 0 dB piece needs both"
        )
    vocals = torch.from_numpy(np.ascontiguousarray(vocals[:, :length]))
    accompaniment = torch.from_numpy(np.ascontiguousarray(accompaniment[:, :length]))
    return torch.stack([vocals, accompaniment * zero_db(vocals, accompaniment)]).numpy()
