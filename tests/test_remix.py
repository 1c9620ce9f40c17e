"""Tests of datamodules/remix.py: the chimera paper's 0 dB remix (``mixing: remix_0db``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.cache import SplitAudio
from datamodules.remix import (
    FRAME_SECONDS,
    RemixSampler,
    active_frames,
    remix_piece,
    remix_streams,
    silence_removed,
    zero_db,
)

RATE = 1000  # 32 samples per 32 ms frame


def _split(tracks: list[np.ndarray]) -> SplitAudio:
    """A split of (4, samples) tracks back to back."""
    lengths = np.array([t.shape[-1] for t in tracks], dtype=np.int64)
    return SplitAudio(
        audio=np.concatenate(tracks, axis=-1).astype(np.float32),
        names=[f"track {i}" for i in range(len(tracks))],
        offsets=np.cumsum(lengths) - lengths,
        lengths=lengths,
        rate=RATE,
    )


def _track(samples: int, seed: int, silent: slice | None = None) -> np.ndarray:
    audio = np.random.default_rng(seed).uniform(0.1, 1.0, (4, samples)).astype(np.float32)
    if silent is not None:
        audio[0, silent] = 0.0  # a silent stretch of the vocals only
    return audio


def test_silence_detector_removes_an_inserted_silence_and_keeps_the_rest() -> None:
    frame = int(FRAME_SECONDS * RATE)
    track = _track(20 * frame, seed=0, silent=slice(5 * frame, 12 * frame))
    track[0, 15 * frame : 16 * frame] *= 0.02  # -34 dB: quiet, but above -40 dB: kept
    vocals, accompaniment = silence_removed(_split([track]), 0)
    assert vocals.shape == (1, 13 * frame)
    np.testing.assert_array_equal(vocals[0, : 5 * frame], track[0, : 5 * frame])
    np.testing.assert_array_equal(vocals[0, 5 * frame :], track[0, 12 * frame :])
    np.testing.assert_array_equal(accompaniment[0], track[1:].sum(axis=0))  # untouched
    keep = active_frames(np.zeros((2, 100)), RATE)
    assert keep.shape == (100,) and not keep.any()  # a silent source has no active frame


def test_remixed_examples_are_at_0_db_from_independent_tracks() -> None:
    split = _split([_track(3000, seed=s) for s in range(3)])
    sampler = RemixSampler(remix_streams(split), chunk=200)
    batch = sampler.sample(64, torch.Generator().manual_seed(0))
    assert batch.shape == (64, 2, 1, 200)
    energy = batch.double().square().sum(dim=(-2, -1))
    torch.testing.assert_close(energy[:, 1], energy[:, 0], rtol=1e-6, atol=0)
    # vocals chunks are unscaled pieces of the vocals stream; the accompaniment of the same
    # example comes from its own random track and position (found up to its 0 dB gain)
    streams = {
        "vocals": torch.from_numpy(split.audio[0]).double(),
        "accompaniment": torch.from_numpy(split.audio[1:].sum(axis=0)).double(),
    }

    def origin(stream: torch.Tensor, chunk: torch.Tensor) -> int:
        windows = stream.unfold(0, 200, 1)
        windows = windows / windows.norm(dim=1, keepdim=True)
        (start,) = torch.nonzero(
            (windows - chunk.double() / chunk.double().norm()).abs().amax(dim=1) < 1e-6
        )
        return int(start)

    assert torch.equal(
        batch[0, 0, 0].double(),
        streams["vocals"][origin(streams["vocals"], batch[0, 0, 0]) :][:200],
    )
    starts = [
        (origin(streams["vocals"], example[0, 0]), origin(streams["accompaniment"], example[1, 0]))
        for example in batch[:16]
    ]
    tracks = [(v // 3000, a // 3000) for v, a in starts]
    assert any(v != a for v, a in tracks)  # vocals and accompaniment of different tracks
    assert len(set(starts)) == 16 and len({v for v, _ in starts}) > 1


def test_zero_db_leaves_a_silent_accompaniment_alone() -> None:
    vocals = torch.ones(2, 1, 10)
    accompaniment = torch.stack([torch.full((1, 10), 3.0), torch.zeros(1, 10)])
    torch.testing.assert_close(zero_db(vocals, accompaniment), torch.tensor([1 / 3, 1.0]))


def test_test_pieces_are_deterministic_cut_and_at_0_db() -> None:
    split = _split([_track(3000, seed=4, silent=slice(100, 600))])
    piece = remix_piece(split, 0, seconds=2.0)
    assert piece.shape == (2, 1, 2000)
    np.testing.assert_array_equal(piece, remix_piece(split, 0, seconds=2.0))
    energy = np.square(piece.astype(np.float64)).sum(axis=(-2, -1))
    assert energy[1] == pytest.approx(energy[0], rel=1e-6)
    whole = remix_piece(split, 0, seconds=None)
    assert whole.shape[-1] < 3000  # the shorter stream: the vocals lost their silence


def test_a_track_list_with_silent_vocals_throughout_is_refused() -> None:
    track = _track(1000, seed=5)
    track[0] = 0.0
    with pytest.raises(ValueError, match=r"no training track keeps one chunk .* of vocals"):
        remix_streams(_split([track]))
    with pytest.raises(ValueError, match="silent vocals or accompaniment"):
        remix_piece(_split([track]), 0, seconds=1.0)
    short = _split([_track(1000, seed=6)])
    with pytest.raises(ValueError, match=r"no validation track keeps one chunk \(2000"):
        remix_streams(short, chunk=2000, role="validation")


def test_a_near_instrumental_track_is_left_out_of_the_vocals_stream_only() -> None:
    frame = int(FRAME_SECONDS * RATE)
    instrumental = _track(3000, seed=7, silent=slice(2 * frame, 3000))  # 64 ms of vocals
    split = _split([_track(3000, seed=8), instrumental])
    with pytest.warns(UserWarning, match=r"1 training track\(s\) .* of vocals .*\['track 1'\]"):
        streams = remix_streams(split, chunk=200)
    assert streams.vocals_names == ["track 0"]
    assert streams.accompaniment_names == ["track 0", "track 1"]
    assert RemixSampler(streams, chunk=200).sample(4, torch.Generator()).shape == (4, 2, 1, 200)
