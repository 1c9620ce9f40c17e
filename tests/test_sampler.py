"""Tests of datamodules/sampler.py: vectorised random-mix training batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.conventions import SOURCES, TARGET_SETS, targets_from_sources
from datamodules.sampler import CoherentChunks, ExcerptSampler, RandomMixBatches, RandomMixSampler

CHUNK = 64
LENGTHS = [CHUNK, 3 * CHUNK + 5, 2 * CHUNK - 1, 5 * CHUNK]
# Per track and source a constant; the gain ranges [0.25 v, 1.25 v] of different tracks never
# overlap (factor 10 apart), so a sampled value tells which track it came from.
VALUES = np.array(
    [[10.0**t * (1 + 0.1 * s) for s in range(len(SOURCES))] for t in range(len(LENGTHS))]
)


def _constant_tracks(dtype: torch.dtype = torch.float64):
    """(4, samples) where track t, source s is the constant VALUES[t, s]."""
    audio = torch.cat(
        [
            torch.tensor(VALUES[t], dtype=dtype)[:, None].expand(-1, n)
            for t, n in enumerate(LENGTHS)
        ],
        dim=1,
    ).contiguous()
    lengths = torch.tensor(LENGTHS)
    offsets = torch.cumsum(lengths, 0) - lengths
    return audio, offsets, lengths


def _sampler(dtype: torch.dtype = torch.float64, **kwargs) -> RandomMixSampler:
    audio, offsets, lengths = _constant_tracks(dtype)
    return RandomMixSampler(audio, offsets, lengths, CHUNK, **kwargs)


def _draw(sampler: RandomMixSampler, batch: int, seed: int) -> torch.Tensor:
    """(batch, sources, chunk) of a mono sampler: its one channel."""
    out = sampler.sample(batch, torch.Generator().manual_seed(seed))
    assert out.shape[2] == 1
    return out[:, :, 0]


def _track_of(first: np.ndarray) -> np.ndarray:
    """Track index of every (batch, source) value; asserts it is a track value times a gain in
    [0.25, 1.25] for exactly one track."""
    ratios = first[..., None] / VALUES.T[None]  # (batch, source, track)
    matches = (ratios >= 0.25) & (ratios <= 1.25)
    assert np.all(matches.sum(axis=-1) == 1), first[matches.sum(axis=-1) != 1]
    return matches.argmax(axis=-1)


def _gains(batch: np.ndarray) -> np.ndarray:
    first = batch[..., 0]
    return first / VALUES[_track_of(first), np.arange(len(SOURCES))]


def test_batch_shape_and_dtype() -> None:
    sampler = _sampler(torch.float32)
    batch = sampler.sample(5, torch.Generator().manual_seed(0))
    assert batch.shape == (5, len(SOURCES), 1, CHUNK)  # (batch, sources, channels, chunk)
    assert batch.dtype == torch.float32


def test_every_chunk_lies_inside_one_track_with_gain_in_range() -> None:
    sampler = _sampler()
    batch = _draw(sampler, 400, 1).numpy()
    first = batch[..., 0]
    # constant over the chunk: no chunk crosses a track boundary
    assert np.array_equal(batch, np.broadcast_to(first[..., None], batch.shape))
    tracks = _track_of(first)
    assert set(tracks.flatten().tolist()) == set(range(len(LENGTHS)))  # every track is drawn
    # each source draws its own track (incoherent mixes)
    assert (tracks != tracks[:, :1]).any()


def test_start_positions_cover_exactly_the_valid_ones() -> None:
    """With audio = sample index, a chunk reveals its start; all valid starts and only they
    are drawn."""
    lengths = torch.tensor([10, 7, 12])
    offsets = torch.cumsum(lengths, 0) - lengths
    chunk = 7
    total = int(lengths.sum())
    audio = torch.arange(total, dtype=torch.float64).repeat(2, 1)
    sampler = RandomMixSampler(audio, offsets, lengths, chunk, gain_range=(1.0, 1.0))
    batch = _draw(sampler, 3000, 0)
    starts = batch[..., 0].long()
    assert torch.equal(batch, starts[..., None] + torch.arange(chunk))
    valid = {
        int(o) + p for o, n in zip(offsets, lengths, strict=True) for p in range(int(n) - chunk + 1)
    }
    assert set(starts.flatten().tolist()) == valid


def test_gains_within_range() -> None:
    sampler = _sampler()
    gains = _gains(_draw(sampler, 500, 2).numpy())
    assert gains.min() >= 0.25 - 1e-12
    assert gains.max() <= 1.25 + 1e-12
    assert gains.min() < 0.3 and gains.max() > 1.2  # the whole range is used
    assert len(np.unique(gains)) > 0.9 * gains.size  # one gain per (example, source)
    custom = _draw(_sampler(gain_range=(0.5, 0.75)), 200, 2)
    gains = _gains(custom.numpy())
    assert gains.min() >= 0.5 - 1e-12 and gains.max() <= 0.75 + 1e-12


def test_batches_per_epoch_formula() -> None:
    sampler = _sampler()
    positions = sum(n - CHUNK + 1 for n in LENGTHS)
    for batch_size in (1, 2, 3, 50):
        expected = max(1, positions // (CHUNK * batch_size))
        assert sampler.batches_per_epoch(batch_size) == expected
    assert sampler.batches_per_epoch(1) == positions // CHUNK > 1
    assert sampler.batches_per_epoch(10_000) == 1


def test_short_track_raises_naming_it() -> None:
    audio, offsets, lengths = _constant_tracks()
    lengths = lengths.clone()
    names = ["first", "second", "tiny one", "last"]
    with pytest.raises(ValueError, match="tiny one") as info:
        RandomMixSampler(audio, offsets, lengths, 2 * CHUNK, names=names)
    assert "'second'" not in str(info.value)  # 3 * CHUNK + 5 is long enough
    assert "'first'" in str(info.value)  # CHUNK < 2 * CHUNK
    with pytest.raises(ValueError, match="shorter than one chunk"):
        RandomMixSampler(audio, offsets, lengths, 2 * CHUNK)


def test_targets_from_sources() -> None:
    sources = torch.randn(3, 4, 100)
    assert TARGET_SETS["vocals"] == ("vocals", "accompaniment")
    assert TARGET_SETS["all"] == SOURCES == ("vocals", "drums", "bass", "other")
    vocals = targets_from_sources(sources, "vocals")
    assert vocals.shape == (3, 2, 100)
    assert torch.equal(vocals[:, 0], sources[:, 0])
    torch.testing.assert_close(vocals[:, 1], sources[:, 1] + sources[:, 2] + sources[:, 3])
    assert torch.equal(targets_from_sources(sources, "all"), sources)
    # no batch dimension (full tracks)
    single = targets_from_sources(sources[0], "vocals")
    assert single.shape == (2, 100)
    torch.testing.assert_close(single, vocals[0])
    with pytest.raises(ValueError, match="unknown targets"):
        targets_from_sources(sources, "drums")


@pytest.mark.parametrize("targets", ["vocals", "all"])
def test_random_mix_batches_mixture_is_sum_of_targets(targets: str) -> None:
    audio, offsets, lengths = _constant_tracks(torch.float32)
    audio = audio + torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    sampler = RandomMixSampler(audio, offsets, lengths, CHUNK)
    batches = RandomMixBatches(sampler, batch_size=3, targets=targets, seed=7)
    items = list(batches)
    assert len(items) == len(batches) == sampler.batches_per_epoch(3)
    n_targets = len(TARGET_SETS[targets])
    for item in items:
        assert set(item) == {"mixture", "targets"}
        assert item["mixture"].shape == (3, 1, CHUNK)  # (batch, channels, chunk)
        assert item["targets"].shape == (3, n_targets, 1, CHUNK)
        torch.testing.assert_close(item["mixture"], item["targets"].sum(dim=1))


def _epoch_batches(seed: int, epoch: int, rank: int = 0) -> list[dict[str, torch.Tensor]]:
    batches = RandomMixBatches(
        _sampler(torch.float32), 4, "vocals", seed=seed, epoch=lambda: epoch, rank=rank
    )
    return list(batches)


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["mixture"], y["mixture"]) and torch.equal(x["targets"], y["targets"])
        for x, y in zip(a, b, strict=True)
    )


def test_batches_reproducible_per_seed_and_epoch() -> None:
    reference = _epoch_batches(seed=0, epoch=3)
    assert _same(reference, _epoch_batches(seed=0, epoch=3))
    assert not _same(reference, _epoch_batches(seed=0, epoch=4))
    assert not _same(reference, _epoch_batches(seed=1, epoch=3))
    assert not _same(reference, _epoch_batches(seed=0, epoch=3, rank=1))


def test_epoch_is_read_at_every_pass() -> None:
    epoch = {"value": 0}
    batches = RandomMixBatches(
        _sampler(torch.float32), 4, "all", seed=0, epoch=lambda: epoch["value"]
    )
    first = list(batches)
    assert _same(first, list(batches))  # same epoch, same batches
    epoch["value"] = 1
    second = list(batches)
    assert not _same(first, second)
    fresh = RandomMixBatches(_sampler(torch.float32), 4, "all", seed=0, epoch=lambda: 1)
    assert _same(second, list(fresh))


def test_processes_share_one_epoch_under_ddp() -> None:
    audio = torch.zeros(4, 10_000)
    sampler = RandomMixSampler(audio, torch.tensor([0]), torch.tensor([10_000]), chunk=100)
    single = RandomMixBatches(sampler, batch_size=4, targets="vocals", seed=0)
    shared = RandomMixBatches(sampler, batch_size=4, targets="vocals", seed=0, world_size=4)
    assert len(single) == sampler.batches_per_epoch(4) and len(shared) == len(single) // 4


# -- channels, target lists, coherent chunks ------------------------------------------------


def test_stereo_chunks_keep_both_channels_with_one_gain_per_source() -> None:
    audio, offsets, lengths = _constant_tracks()
    stereo = torch.stack([audio, -2 * audio], dim=1)  # (sources, 2, samples)
    sampler = RandomMixSampler(stereo, offsets, lengths, CHUNK)
    batch = sampler.sample(50, torch.Generator().manual_seed(3))
    assert batch.shape == (50, len(SOURCES), 2, CHUNK)
    torch.testing.assert_close(batch[:, :, 1], -2 * batch[:, :, 0])
    # the left channel is what the same draws give on the mono audio
    mono = RandomMixSampler(audio, offsets, lengths, CHUNK)
    assert torch.equal(_draw(mono, 50, 3), batch[:, :, 0])


def test_batches_of_a_source_list_are_those_sources_in_order() -> None:
    sampler = _sampler(torch.float32)
    batch = next(iter(RandomMixBatches(sampler, 4, ["drums", "vocals"], seed=0)))
    full = next(iter(RandomMixBatches(sampler, 4, "all", seed=0)))
    assert torch.equal(batch["targets"], full["targets"][:, [1, 0]])
    assert torch.equal(batch["mixture"], full["mixture"])  # the mix of all four sources


def _index_tracks(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(4, 2, samples) where every sample holds its own index (source s adds 0.25 s, the right
    channel is negated), so a chunk reveals where it was taken."""
    total = sum(lengths)
    index = torch.arange(total, dtype=torch.float64)
    audio = torch.stack([index + 0.25 * s for s in range(len(SOURCES))])
    stereo = torch.stack([audio, -audio], dim=1)
    lengths_t = torch.tensor(lengths)
    return stereo, torch.cumsum(lengths_t, 0) - lengths_t, lengths_t


def test_coherent_chunks_show_every_frame_once_per_epoch_at_unit_gain() -> None:
    stride, chunk = 4, 10  # e.g. 2 frames of hop 4 on a window of 6: chunk = 6 + 4
    stereo, offsets, lengths = _index_tracks([30, 23])
    sampler = CoherentChunks(stereo, offsets, lengths, chunk, stride)
    batches = RandomMixBatches(sampler, batch_size=3, targets="all", seed=1)
    items = list(batches)
    assert len(items) == len(batches) == -(-len(sampler.starts) // 3)
    starts = []
    for item in items:
        targets = item["targets"]
        assert targets.shape[1:] == (4, 2, chunk) and targets.shape[0] <= 3
        # one position for all sources (the track's own mix) at unit gain: source s holds
        # sample index + 0.25 s on the left channel, its negative on the right
        left = targets[:, :, 0]
        torch.testing.assert_close(
            left - left[:, :1],
            torch.full_like(left, 0.25) * torch.arange(4.0, dtype=torch.float64)[:, None],
        )
        torch.testing.assert_close(targets[:, :, 1], -left)
        starts += targets[:, 0, 0, 0].long().tolist()
    # chunks start on the stride grid of each track and never cross into the next track
    expected = [0, 4, 8, 12, 16, 20] + [30 + p for p in (0, 4, 8, 12)]
    assert sorted(starts) == expected
    assert starts != expected  # shuffled
    epoch_two = list(RandomMixBatches(sampler, 3, "all", seed=1, epoch=lambda: 1))
    assert epoch_two[0]["mixture"].shape[1:] == (2, chunk)
    firsts = [int(i["targets"][0, 0, 0, 0]) for i in epoch_two]
    assert firsts != [int(i["targets"][0, 0, 0, 0]) for i in items]  # a new order per epoch


def test_coherent_chunks_split_one_permutation_between_processes() -> None:
    stereo, offsets, lengths = _index_tracks([41])
    sampler = CoherentChunks(stereo, offsets, lengths, chunk=5, stride=5)  # 8 chunks
    seen = []
    for rank in range(3):
        batches = RandomMixBatches(sampler, 2, "vocals", seed=0, rank=rank, world_size=3)
        assert len(batches) == 1  # 8 // 3 = 2 chunks each, one batch of 2
        seen += [int(b["targets"][j, 0, 0, 0]) for b in batches for j in range(2)]
    assert len(set(seen)) == 6  # equal, disjoint shares; the 2 left over are dropped


def test_coherent_chunks_refuse_a_track_shorter_than_a_chunk() -> None:
    stereo, offsets, lengths = _index_tracks([30, 4])
    with pytest.raises(ValueError, match="shorter than one chunk"):
        CoherentChunks(stereo, offsets, lengths, chunk=10, stride=4, names=["a", "short"])


def test_excerpt_sampler_gives_channels_too() -> None:
    stereo, _, _ = _index_tracks([40])
    batch = ExcerptSampler(stereo, chunk=8, shift=1.0).sample(6, torch.Generator().manual_seed(0))
    assert batch.shape == (6, 4, 2, 8)
    assert (batch[:, 0, 0, 0] <= 8).all()  # starts within shift * chunk


def test_channel_swap_flips_whole_sources_with_its_probability() -> None:
    """With channel_swap each source of each example is either the plain draw or the plain
    draw with its channels exchanged (same track, start and gain: the swap is drawn after them),
    about half of them swapped at p = 0.5, none at p = 0."""
    audio, offsets, lengths = _constant_tracks()
    stereo = torch.stack([audio, -2 * audio], dim=1)  # left and right tell themselves apart
    plain = RandomMixSampler(stereo, offsets, lengths, CHUNK).sample(
        400, torch.Generator().manual_seed(5)
    )
    swapping = RandomMixSampler(stereo, offsets, lengths, CHUNK, channel_swap=0.5)
    batch = swapping.sample(400, torch.Generator().manual_seed(5))
    flags = torch.zeros(batch.shape[:2], dtype=torch.bool)
    for b in range(batch.shape[0]):
        for s in range(batch.shape[1]):
            if torch.equal(batch[b, s], plain[b, s].flip(0)):
                flags[b, s] = True
            else:
                assert torch.equal(batch[b, s], plain[b, s])
    # 400 fair coin flips per source: 200 +- 4 standard deviations (10 each), for every source
    assert ((flags.sum(dim=0) > 160) & (flags.sum(dim=0) < 240)).all(), flags.sum(dim=0)
    never = RandomMixSampler(stereo, offsets, lengths, CHUNK, channel_swap=0.0)
    assert torch.equal(never.sample(400, torch.Generator().manual_seed(5)), plain)


def test_channel_swap_needs_stereo() -> None:
    audio, offsets, lengths = _constant_tracks()
    with pytest.raises(ValueError, match="channel_swap needs stereo"):
        RandomMixSampler(audio, offsets, lengths, CHUNK, channel_swap=0.5)
