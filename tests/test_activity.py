"""Tests of datamodules/activity.py: activity confidence and most-active-window selection."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.activity import (
    SLOPE,
    THETA,
    WINDOW_SECONDS,
    activity_confidence,
    most_active_window,
)

RATE = 8000
FLOOR = 1.0 / (1.0 + np.exp(SLOPE * THETA))  # logistic value of a silent source
WINDOW = int(round(WINDOW_SECONDS * RATE))  # smoothing window in samples
HOP = WINDOW // 2


def _sine(freq: float, seconds: float, amplitude: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return amplitude * np.sin(2 * np.pi * freq * t)


def _active_stretch(
    seconds: float, start: float, stop: float, n_sources: int = 4, seed: int = 0
) -> np.ndarray:
    """(n_sources, samples) of exact silence except noise in [start, stop) seconds."""
    rng = np.random.default_rng(seed)
    sources = np.zeros((n_sources, int(seconds * RATE)))
    a, b = int(start * RATE), int(stop * RATE)
    sources[:, a:b] = 0.5 * rng.standard_normal((n_sources, b - a))
    return sources


def test_confidence_floor_on_silence_and_near_one_on_loud_signal() -> None:
    silent = np.zeros(3 * RATE)
    loud = _sine(220.0, 3.0)
    noise = 0.3 * np.random.default_rng(0).standard_normal(3 * RATE)
    confidence = activity_confidence(np.stack([silent, loud, noise]), RATE)
    assert confidence.shape == (3, int(np.ceil(3 * RATE / HOP)))
    np.testing.assert_allclose(confidence[0], FLOOR, rtol=1e-6)
    assert FLOOR < 0.05
    assert confidence[1].min() > 0.99
    assert confidence[2].min() > 0.99
    assert np.all((confidence >= 0) & (confidence <= 1))


def test_quiet_but_present_source_counts_as_active() -> None:
    """Each source is normalised by its own peak: a -60 dB source is still active."""
    quiet = _sine(330.0, 2.0, amplitude=1e-3)
    confidence = activity_confidence(quiet[None, :], RATE)
    assert confidence.min() > 0.99


def test_confidence_follows_activity_in_time() -> None:
    sources = _active_stretch(6.0, 2.0, 4.0, n_sources=1)
    confidence = activity_confidence(sources, RATE)[0]
    centres = np.arange(len(confidence)) * HOP / RATE
    inside = (centres > 2.0 + WINDOW_SECONDS) & (centres < 4.0 - WINDOW_SECONDS)
    outside = (centres < 2.0 - WINDOW_SECONDS) | (centres > 4.0 + WINDOW_SECONDS)
    assert confidence[inside].min() > 0.99
    assert confidence[outside].max() < FLOOR + 1e-3


def test_confidence_rejects_one_dimensional_input() -> None:
    with pytest.raises(ValueError, match="n_sources, samples"):
        activity_confidence(np.zeros(RATE), RATE)


@pytest.mark.parametrize("start", [5.0, 0.0, 7.0, 2.3])
def test_most_active_window_finds_the_loud_stretch(start: float) -> None:
    sources = _active_stretch(10.0, start, start + 3.0)
    begin, length = most_active_window(sources, RATE, 3.0)
    assert length == 3 * RATE
    assert 0 <= begin <= sources.shape[1] - length
    assert abs(begin - start * RATE) <= WINDOW, (begin / RATE, start)
    # the chosen window holds (nearly) all of the active audio
    energy = (sources**2).sum()
    chosen = (sources[:, begin : begin + length] ** 2).sum()
    assert chosen / energy > 0.95


def test_most_active_window_weighs_all_sources() -> None:
    """Vocals alone active in 1-4 s, the three others in 6-9 s: the latter wins."""
    rng = np.random.default_rng(3)
    sources = np.zeros((4, 10 * RATE))
    sources[0, 1 * RATE : 4 * RATE] = rng.standard_normal(3 * RATE)
    sources[1:, 6 * RATE : 9 * RATE] = rng.standard_normal((3, 3 * RATE))
    begin, length = most_active_window(sources, RATE, 3.0)
    assert length == 3 * RATE
    assert abs(begin - 6 * RATE) <= WINDOW


@pytest.mark.parametrize("seconds", [None, 10.0, 12.5, 100.0])
def test_most_active_window_whole_track_when_short_or_none(seconds: float | None) -> None:
    sources = _active_stretch(10.0, 5.0, 8.0)
    assert most_active_window(sources, RATE, seconds) == (0, 10 * RATE)
