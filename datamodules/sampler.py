"""Training batches drawn from the in-memory split, vectorised over the batch.

Thesis 3.3.2: every training example mixes, for each source, a random chunk of a random track
with a random gain in U[0.25, 1.25]. Doing that per item (open a file, seek, read) made the
thesis's training data-bound. Here a whole batch is one gather on a (n_sources, channels,
samples) tensor, which can live on the training device.

Every sampler gives (batch, n_sources, channels, chunk), mono included (channels = 1), and
the mixture is the sum over the sources. The mixing modes of ``MUSDBDataModule``:

* ``RandomMixSampler`` (``mixing: random``, the thesis): incoherent random mixes, random gains;
* ``CoherentChunks`` (``mixing: coherent``): a track's own sources at unit gain, on a grid of
  chunks that holds every STFT frame of the split once, shuffled per epoch (frame-level
  epochs);
* ``RemixSampler`` (``mixing: remix_0db``, ``datamodules.remix``): vocals and accompaniment of
  independent random tracks at equal energy (0 dB);
* ``ExcerptSampler``: the overfit protocol of thesis Table 4.4.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import IterableDataset

from datamodules.conventions import SOURCES, targets_from_sources


def _with_channels(audio: torch.Tensor) -> torch.Tensor:
    """(n_sources, samples) -> (n_sources, 1, samples), a view; (n_sources, C, samples) as is."""
    return audio.unsqueeze(1) if audio.dim() == 2 else audio


def check_lengths(lengths: torch.Tensor, chunk: int, names: list[str] | None, what: str) -> None:
    short = [i for i, n in enumerate(lengths.tolist()) if n < chunk]
    if short:
        which = ", ".join(
            f"'{names[i] if names else i}' ({int(lengths[i])} samples)" for i in short
        )
        raise ValueError(
            f"{what} shorter than one chunk of {chunk} samples: {which}; "
            "use a shorter context or drop these tracks"
        )


class UniformStarts:
    """Chunk starts drawn uniformly over every valid position of every track (no chunk
    crosses a track boundary): longer tracks are drawn proportionally more."""

    def __init__(self, offsets: torch.Tensor, lengths: torch.Tensor, chunk: int, device) -> None:
        positions = (lengths - chunk + 1).to(device)
        self.offsets = offsets.to(device)
        self.cumulative = torch.cumsum(positions, 0)

    @property
    def total(self) -> int:
        return int(self.cumulative[-1])

    def draw(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        draw = torch.randint(0, self.total, shape, generator=generator, device=self.offsets.device)
        track = torch.searchsorted(self.cumulative, draw, right=True)
        before = torch.where(track > 0, self.cumulative[(track - 1).clamp(min=0)], 0)
        return self.offsets[track] + (draw - before)


class RandomMixSampler:
    """Draws (batch, n_sources, channels, chunk) random-mix examples from ``audio``
    (n_sources, samples), or (n_sources, channels, samples).

    Chunk starts are uniform over every valid position of every track, so longer tracks are
    drawn proportionally more and an epoch of ``samples / (chunk * batch)`` batches sees about
    all training audio once. Each source picks its own track (incoherent mixes, as in the
    thesis); no chunk crosses a track boundary. A source's gain is the same on every channel.
    With ``channel_swap`` > 0 each source of each example has its two channels swapped with
    that probability (drawn after the gains, so a run without swaps draws what it always did).
    """

    source_names: tuple[str, ...] = SOURCES

    def __init__(
        self,
        audio: torch.Tensor,
        offsets: torch.Tensor,
        lengths: torch.Tensor,
        chunk: int,
        gain_range: tuple[float, float] = (0.25, 1.25),
        names: list[str] | None = None,
        channel_swap: float = 0.0,
    ) -> None:
        check_lengths(lengths, chunk, names, "training tracks")
        self.audio = _with_channels(audio)
        if channel_swap and self.audio.shape[1] != 2:
            raise ValueError(
                f"channel_swap needs stereo audio, got {self.audio.shape[1]} channel(s)"
            )
        self.chunk = chunk
        self.gain_range = gain_range
        self.channel_swap = channel_swap
        self._starts = UniformStarts(offsets, lengths, chunk, audio.device)
        self._cumulative = self._starts.cumulative
        self._arange = torch.arange(chunk, device=audio.device)

    @property
    def device(self) -> torch.device:
        return self.audio.device

    def batches_per_epoch(self, batch_size: int) -> int:
        return max(1, self._starts.total // (self.chunk * batch_size))

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        n_sources, channels = self.audio.shape[:2]
        shape = (batch_size, n_sources)
        start = self._starts.draw(shape, generator)
        index = start[..., None, None] + self._arange  # (batch, n_sources, 1, chunk)
        rows = torch.arange(n_sources, device=self.device)[None, :, None, None]
        lanes = torch.arange(channels, device=self.device)[None, None, :, None]
        low, high = self.gain_range
        gains = low + (high - low) * torch.rand(
            shape, generator=generator, device=self.device, dtype=self.audio.dtype
        )
        if self.channel_swap:
            swap = torch.rand(shape, generator=generator, device=self.device) < self.channel_swap
            lanes = torch.where(swap[..., None, None], 1 - lanes, lanes)
        return self.audio[rows, lanes, index] * gains[..., None, None]


class CoherentChunks:
    """``mixing: coherent``: every example is a chunk of one track, all sources from the same
    position at unit gain (the track's own mix). Chunk starts lie on a grid of
    ``stride`` samples (``context_frames * hop``: consecutive chunks share no STFT frame and
    leave none out; the trailing remainder of a track is dropped), so an epoch shows every
    frame of the split once, in an order shuffled per epoch (frame-level epochs; with one frame
    of context, every frame is one example). The last batch of an epoch may be smaller."""

    source_names: tuple[str, ...] = SOURCES

    def __init__(
        self,
        audio: torch.Tensor,
        offsets: torch.Tensor,
        lengths: torch.Tensor,
        chunk: int,
        stride: int,
        names: list[str] | None = None,
    ) -> None:
        check_lengths(lengths, chunk, names, "training tracks")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.audio = _with_channels(audio)
        self.chunk = chunk
        starts = [
            offset + torch.arange(0, int(length) - chunk + 1, stride)
            for offset, length in zip(offsets.tolist(), lengths.tolist(), strict=True)
        ]
        self.starts = torch.cat(starts).to(audio.device)
        self._arange = torch.arange(chunk, device=audio.device)

    @property
    def device(self) -> torch.device:
        return self.audio.device

    def batches_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        per_rank = len(self.starts) // world_size
        return max(1, -(-per_rank // batch_size))

    def epoch(
        self, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1
    ) -> Iterator[torch.Tensor]:
        """The epoch's batches for one process: one permutation shared by every process (the
        generator is seeded without the rank), each taking its own share."""
        order = torch.randperm(len(self.starts), generator=generator, device=self.device)
        per_rank = len(order) // world_size  # equal shares: DDP processes step together
        mine = self.starts[order[rank * per_rank : (rank + 1) * per_rank]]
        for batch in mine.split(batch_size):
            index = batch[:, None] + self._arange  # (batch, chunk)
            yield self.audio[:, :, index].permute(2, 0, 1, 3)  # (batch, n_sources, C, chunk)


class RandomMixBatches(IterableDataset):
    """One epoch of ready-made batches for a DataLoader with ``batch_size=None``: ``mixture``
    (B, C, chunk) and ``targets`` (B, n_targets, C, chunk).

    ``epoch`` is asked for at the start of every pass, so the batches of epoch e depend only on
    (seed, rank, e): a resumed run draws what an uninterrupted one would have drawn.
    """

    def __init__(
        self,
        sampler: RandomMixSampler | CoherentChunks | ExcerptSampler,
        batch_size: int,
        targets: str | list[str],
        seed: int,
        epoch: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.targets = targets
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        """Batches per process: under DDP the processes share one epoch of audio."""
        if isinstance(self.sampler, CoherentChunks):
            return self.sampler.batches_per_epoch(self.batch_size, self.world_size)
        return max(1, self.sampler.batches_per_epoch(self.batch_size) // self.world_size)

    def _batches(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        if isinstance(self.sampler, CoherentChunks):
            # the permutation must be the same in every process: seeded without the rank
            generator.manual_seed(hash((self.seed, self.epoch())) % (2**63))
            yield from self.sampler.epoch(self.batch_size, generator, self.rank, self.world_size)
            return
        generator.manual_seed(hash((self.seed, self.rank, self.epoch())) % (2**63))
        for _ in range(len(self)):
            yield self.sampler.sample(self.batch_size, generator)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator(device=self.sampler.device)
        for sources in self._batches(generator):
            if self.sampler.source_names == SOURCES:
                targets = targets_from_sources(sources, self.targets, dim=-3)
            else:  # a remix sampler draws its targets (vocals, accompaniment) directly
                targets = sources
            yield {"mixture": sources.sum(dim=1), "targets": targets}


class ExcerptSampler:
    """The overfit protocol of thesis Table 4.4: every example is a chunk of one short excerpt,
    all sources from the same position (a real mix) at unit gain, no augmentation.

    ``shift`` is the temporal variation: a chunk starts uniformly within the first
    ``shift * chunk`` samples of the excerpt (0: always the same frames).
    """

    source_names: tuple[str, ...] = SOURCES

    def __init__(self, audio: torch.Tensor, chunk: int, shift: float = 0.0) -> None:
        if audio.shape[-1] < chunk:
            raise ValueError(
                f"the overfit excerpt has {audio.shape[-1]} samples, fewer than one chunk ({chunk})"
            )
        if shift < 0:
            raise ValueError(f"shift must be >= 0, got {shift}")
        self.audio = _with_channels(audio)
        self.chunk = chunk
        self.max_start = min(audio.shape[-1] - chunk, int(shift * chunk))
        self._arange = torch.arange(chunk, device=audio.device)

    @property
    def device(self) -> torch.device:
        return self.audio.device

    def batches_per_epoch(self, batch_size: int) -> int:
        return 1  # one batch of the excerpt per epoch: epochs count passes over the example

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        starts = torch.randint(
            0, self.max_start + 1, (batch_size,), generator=generator, device=self.device
        )
        index = starts[:, None] + self._arange  # (batch, chunk)
        return self.audio[:, :, index].permute(2, 0, 1, 3)  # (batch, n_sources, C, chunk)
