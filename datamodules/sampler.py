"""Random-mix training batches drawn from the in-memory split, vectorised over the batch.

Thesis 3.3.2: every training example mixes, for each source, a random chunk of a random track
with a random gain in U[0.25, 1.25]. Doing that per item (open a file, seek, read) made the
thesis's training data-bound. Here a whole batch is one gather on a (n_sources, samples)
tensor, which can live on the training device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import IterableDataset

from datamodules.conventions import targets_from_sources


class RandomMixSampler:
    """Draws (batch, n_sources, chunk) random-mix examples from ``audio`` (n_sources, samples).

    Chunk starts are uniform over every valid position of every track, so longer tracks are
    drawn proportionally more and an epoch of ``samples / (chunk * batch)`` batches sees about
    all training audio once. Each source picks its own track (incoherent mixes, as in the
    thesis); no chunk crosses a track boundary.
    """

    def __init__(
        self,
        audio: torch.Tensor,
        offsets: torch.Tensor,
        lengths: torch.Tensor,
        chunk: int,
        gain_range: tuple[float, float] = (0.25, 1.25),
        names: list[str] | None = None,
    ) -> None:
        short = [i for i, n in enumerate(lengths.tolist()) if n < chunk]
        if short:
            which = ", ".join(
                f"'{names[i] if names else i}' ({int(lengths[i])} samples)" for i in short
            )
            raise ValueError(
                f"training tracks shorter than one chunk of {chunk} samples: {which}; "
                "use a shorter context or drop these tracks"
            )
        self.audio = audio
        self.chunk = chunk
        self.gain_range = gain_range
        positions = (lengths - chunk + 1).to(audio.device)
        self._track_offsets = offsets.to(audio.device)
        self._cumulative = torch.cumsum(positions, 0)
        self._arange = torch.arange(chunk, device=audio.device)

    @property
    def device(self) -> torch.device:
        return self.audio.device

    def batches_per_epoch(self, batch_size: int) -> int:
        return max(1, int(self._cumulative[-1]) // (self.chunk * batch_size))

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        n_sources = self.audio.shape[0]
        shape = (batch_size, n_sources)
        total = int(self._cumulative[-1])
        draw = torch.randint(0, total, shape, generator=generator, device=self.device)
        track = torch.searchsorted(self._cumulative, draw, right=True)
        before = torch.where(track > 0, self._cumulative[(track - 1).clamp(min=0)], 0)
        start = self._track_offsets[track] + (draw - before)
        index = start[..., None] + self._arange  # (batch, n_sources, chunk)
        rows = torch.arange(n_sources, device=self.device)[None, :, None]
        low, high = self.gain_range
        gains = low + (high - low) * torch.rand(
            shape, generator=generator, device=self.device, dtype=self.audio.dtype
        )
        return self.audio[rows, index] * gains[..., None]


class RandomMixBatches(IterableDataset):
    """One epoch of ready-made batches for a DataLoader with ``batch_size=None``.

    ``epoch`` is asked for at the start of every pass, so the batches of epoch e depend only on
    (seed, rank, e): a resumed run draws what an uninterrupted one would have drawn.
    """

    def __init__(
        self,
        sampler: RandomMixSampler,
        batch_size: int,
        targets: str,
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
        return max(1, self.sampler.batches_per_epoch(self.batch_size) // self.world_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator(device=self.sampler.device)
        generator.manual_seed(hash((self.seed, self.rank, self.epoch())) % (2**63))
        for _ in range(len(self)):
            sources = self.sampler.sample(self.batch_size, generator)
            yield {
                "mixture": sources.sum(dim=1),
                "targets": targets_from_sources(sources, self.targets),
            }


class ExcerptSampler:
    """The overfit protocol of thesis Table 4.4: every example is a chunk of one short excerpt,
    all sources from the same position (a real mix) at unit gain, no augmentation.

    ``shift`` is the temporal variation: a chunk starts uniformly within the first
    ``shift * chunk`` samples of the excerpt (0: always the same frames).
    """

    def __init__(self, audio: torch.Tensor, chunk: int, shift: float = 0.0) -> None:
        if audio.shape[1] < chunk:
            raise ValueError(
                f"the overfit excerpt has {audio.shape[1]} samples, fewer than one chunk ({chunk})"
            )
        if shift < 0:
            raise ValueError(f"shift must be >= 0, got {shift}")
        self.audio = audio
        self.chunk = chunk
        self.max_start = min(audio.shape[1] - chunk, int(shift * chunk))
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
        return self.audio[:, index].transpose(0, 1)  # (batch, n_sources, chunk)
