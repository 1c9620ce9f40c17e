"""Tests for lightning_modules.evaluation.bss: museval BSS Eval v4, PES/EPS, aggregation, pool."""

from __future__ import annotations

# ffmpeg on PATH before museval -> musdb -> stempeg, which refuses to import without it
import datamodules  # noqa: F401  # isort: skip
import json
import math
import os
import warnings

import jsonschema
import librosa
import museval
import numpy as np
import pytest
import stempeg
import torch

from lightning_modules.evaluation.bss import (
    INF_DB,
    BSSConditioningWarning,
    ParallelEvaluator,
    TrackEvaluationError,
    aggregate,
    check_bss_conditioning,
    evaluate_track,
    silence_scores,
)

RATE = 8000


def _sources(seconds: float = 3.5, seed: int = 0) -> np.ndarray:
    """Two independent broadband sources (well-conditioned for the 512-tap projections)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, int(seconds * RATE))) * np.array([[0.3], [0.2]])


def _leaky(refs: np.ndarray, leak: float = 0.3) -> np.ndarray:
    """Each estimate = its reference + leak * the other reference (pure interference)."""
    return refs + leak * refs[::-1]


# ------------------------------------------------------------------------------------------------
# evaluate_track
# ------------------------------------------------------------------------------------------------


def test_output_follows_museval_json_structure():
    refs = _sources(3.5)
    result = evaluate_track("Artist - Song", refs, _leaky(refs), RATE)

    assert result["name"] == "Artist - Song"
    assert [t["name"] for t in result["targets"]] == ["vocals", "accompaniment"]
    for target in result["targets"]:
        # museval drops the trailing partial window: 3.5 s -> 3 frames of 1 s
        assert len(target["frames"]) == 3 == target["n_frames"]
        assert [f["time"] for f in target["frames"]] == [0.0, 1.0, 2.0]
        assert all(f["duration"] == 1.0 for f in target["frames"])
        assert all(set(f["metrics"]) == {"SDR", "SIR", "SAR", "ISR"} for f in target["frames"])
        assert set(target["median"]) == {"SDR", "SIR", "SAR", "ISR"}
        sdr = [f["metrics"]["SDR"] for f in target["frames"]]
        assert target["median"]["SDR"] == pytest.approx(np.median(sdr))
        assert math.isnan(target["PES"]) and math.isnan(target["EPS"])

    # valid against museval's schema, JSON-serialisable, and readable by museval's own tools
    schema_path = os.path.join(museval.__path__[0], "musdb.schema.json")
    with open(schema_path) as handle:
        jsonschema.validate(result, json.load(handle))
    reloaded = json.loads(json.dumps(result))
    df = museval.aggregate.json2df(reloaded, reloaded["name"])
    assert len(df) == 2 * 3 * 4


def test_frame_count_matches_museval_for_exact_multiple():
    refs = _sources(3.0)
    result = evaluate_track("t", refs, _leaky(refs), RATE, win_seconds=0.5)
    assert len(result["targets"][0]["frames"]) == 6
    assert result["targets"][0]["frames"][1]["time"] == 0.5


def test_perfect_estimates_give_very_high_sdr():
    refs = _sources(2.0)
    result = evaluate_track("perfect", refs, refs.copy(), RATE)
    for target in result["targets"]:
        # museval returns +inf (zero error); stored as INF_DB instead of museval's NaN
        assert target["median"]["SDR"] > 200
        assert target["median"]["SDR"] == pytest.approx(INF_DB, abs=1e-3)


def test_interference_lowers_sir_below_sar():
    refs = _sources(3.0)
    result = evaluate_track("leaky", refs, _leaky(refs, 0.3), RATE)
    for target in result["targets"]:
        med = target["median"]
        assert med["SIR"] < med["SAR"] - 20
        assert 5 < med["SIR"] < 20  # leakage energy around -10 dB
        assert med["SDR"] == pytest.approx(med["SIR"], abs=1.0)


def test_silent_frames_are_nan_and_scored_by_pes():
    refs = _sources(4.0)
    refs[0, RATE : 2 * RATE] = 0.0  # vocals silent in frame 1
    ests = _leaky(refs, 0.1)
    result = evaluate_track("gap", refs, ests, RATE)
    vocals, acc = result["targets"]
    # museval: a silent reference in a frame makes that frame NaN for every target
    for target in (vocals, acc):
        assert math.isnan(target["frames"][1]["metrics"]["SDR"])
        assert not math.isnan(target["frames"][0]["metrics"]["SDR"])
        assert not math.isnan(target["median"]["SDR"])
    assert vocals["n_pes_frames"] == 1
    expected_pes = 10 * np.log10(np.sum(ests[0, RATE : 2 * RATE] ** 2) + 1e-12)
    assert vocals["PES"] == pytest.approx(expected_pes)


def test_entirely_silent_reference_does_not_crash():
    refs = _sources(3.0)
    refs[0] = 0.0
    ests = _leaky(refs, 0.1)
    result = evaluate_track("instrumental", refs, ests, RATE)
    vocals = result["targets"][0]
    assert all(math.isnan(f["metrics"][m]) for f in vocals["frames"] for m in f["metrics"])
    assert all(math.isnan(v) for v in vocals["median"].values())
    assert vocals["n_pes_frames"] == 3
    assert math.isfinite(vocals["PES"])
    assert math.isnan(vocals["EPS"])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r, e: (r, np.where(np.arange(e.size).reshape(e.shape) == 5, np.nan, e)), "NaN"),
        (lambda r, e: (r, np.where(e > 1.0, np.inf, e)), "NaN/inf"),
        (lambda r, e: (r, e[:, :-1]), "shape mismatch"),
        (lambda r, e: (r[:, : RATE // 2], e[:, : RATE // 2]), "fewer than one evaluation window"),
        (lambda r, e: (r[:1], e[:1]), "target rows"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_track(mutate, match):
    refs = _sources(2.0)
    refs, ests = mutate(refs, _leaky(refs))
    with pytest.raises(ValueError, match=match) as info:
        evaluate_track("Bad Track", refs, ests, RATE)
    assert "Bad Track" in str(info.value)


# ------------------------------------------------------------------------------------------------
# PES / EPS
# ------------------------------------------------------------------------------------------------


def _db(x: float) -> float:
    return 10 * math.log10(x + 1e-12)


def test_silence_scores_on_hand_made_frames():
    rate, win = 100, 100  # 1 s windows of 100 samples, 5 frames (+ a dropped partial one)
    ref = np.concatenate([np.zeros(200), np.full(100, 0.5), np.full(100, 0.5), np.ones(100)])
    est = np.concatenate([np.full(100, 0.1), np.ones(100), np.ones(100), np.zeros(200)])
    ref, est = np.append(ref, np.ones(30)), np.append(est, np.zeros(30))  # partial frame: ignored
    scores = silence_scores(ref, est, rate, win_seconds=win / rate)
    # PES: reference silent in frames 0,1; estimate energy 100*0.01 = 1 and 100*1 = 100
    assert scores["n_pes_frames"] == 2
    assert scores["PES"] == pytest.approx((_db(1.0) + _db(100.0)) / 2)
    assert scores["PES"] == pytest.approx(10.0, abs=1e-9)
    # EPS: estimate silent (reference not) in frames 3,4; reference energy 25 and 100
    assert scores["n_eps_frames"] == 2
    assert scores["EPS"] == pytest.approx((_db(25.0) + _db(100.0)) / 2)
    assert scores["n_frames"] == 5


def test_silence_scores_silent_estimate_on_silent_reference_counts_in_pes_only():
    ref = np.concatenate([np.zeros(100), np.ones(100)])
    est = np.zeros(200)
    scores = silence_scores(ref, est, rate=100)
    assert scores["PES"] == pytest.approx(-120.0)  # all-zero frame: 10*log10(1e-12)
    assert scores["n_eps_frames"] == 1
    assert scores["EPS"] == pytest.approx(20.0)


def test_silence_scores_nan_when_no_silent_frames_and_threshold_option():
    ref = np.concatenate([np.full(100, 1e-4), np.ones(100)])  # frame 0 energy 1e-6 -> -60 dB
    est = np.ones(200)
    exact = silence_scores(ref, est, rate=100)
    assert exact["n_pes_frames"] == 0 and exact["n_eps_frames"] == 0
    assert math.isnan(exact["PES"]) and math.isnan(exact["EPS"])
    thresholded = silence_scores(ref, est, rate=100, silence_threshold_db=-50.0)
    assert thresholded["n_pes_frames"] == 1
    assert thresholded["PES"] == pytest.approx(20.0)


# ------------------------------------------------------------------------------------------------
# aggregate
# ------------------------------------------------------------------------------------------------


def _fake_track(name: str, sdr: float, sir: float, pes: float = float("nan")) -> dict:
    frame = {"time": 0, "duration": 1, "metrics": {"SDR": sdr, "SIR": sir, "SAR": 1, "ISR": 2}}
    return {
        "name": name,
        "targets": [
            {
                "name": "vocals",
                "frames": [frame],
                "median": {"SDR": sdr, "SIR": sir, "SAR": 1.0, "ISR": 2.0},
                "PES": pes,
                "EPS": float("nan"),
            }
        ],
    }


def test_aggregate_statistics_against_numpy_with_nan_exclusion():
    sdr = [1.0, 2.0, 4.0, 10.0, float("nan")]
    tracks = [_fake_track(f"t{i}", v, 2 * v, pes=-30.0 - i) for i, v in enumerate(sdr)]
    tracks[0]["targets"][0]["PES"] = float("nan")
    stats = aggregate(tracks, target="vocals")

    x = np.array([1.0, 2.0, 4.0, 10.0])
    assert stats["SDR"]["median"] == pytest.approx(3.0)
    assert stats["SDR"]["mad"] == pytest.approx(np.median(np.abs(x - 3.0)))  # |.| = 2,1,1,7 -> 1.5
    assert stats["SDR"]["mad"] == pytest.approx(1.5)
    assert stats["SDR"]["mean"] == pytest.approx(4.25)
    assert stats["SDR"]["std"] == pytest.approx(np.std(x, ddof=1))
    assert stats["SDR"]["n_tracks"] == 4 and stats["SDR"]["n_excluded"] == 1
    assert stats["SIR"]["median"] == pytest.approx(6.0)
    # PES of t0 is NaN (no silent frame), t1..t4 have -31..-34 (t4's SDR NaN does not matter)
    assert stats["PES"]["n_tracks"] == 4 and stats["PES"]["n_excluded"] == 1
    assert stats["PES"]["median"] == pytest.approx(-32.5)
    assert stats["PES"]["mean"] == pytest.approx(-32.5)
    assert math.isnan(stats["EPS"]["median"]) and stats["EPS"]["n_tracks"] == 0
    assert aggregate(tracks, ddof=0)["SDR"]["std"] == pytest.approx(np.std(x))


def test_aggregate_reduces_plain_museval_json_and_rejects_missing_target():
    track = _fake_track("plain", 3.0, 9.0)
    del track["targets"][0]["median"]
    track["targets"][0]["frames"].append(
        {"time": 1, "duration": 1, "metrics": {"SDR": 5.0, "SIR": math.nan, "SAR": 1, "ISR": 2}}
    )
    stats = aggregate([track])
    assert stats["SDR"]["median"] == pytest.approx(4.0)  # per-track median of frames 3, 5
    assert stats["SIR"]["median"] == pytest.approx(9.0)  # NaN frame ignored
    with pytest.raises(ValueError, match="plain"):
        aggregate([track], target="drums")


def _frames_track(name: str, sdr: list[float]) -> dict:
    """A track in museval's JSON layout with the given SDR per frame (SAR = SDR + 1)."""
    frames = [
        {"time": i, "duration": 1, "metrics": {"SDR": v, "SIR": v, "SAR": v + 1, "ISR": v}}
        for i, v in enumerate(sdr)
    ]
    return {"name": name, "targets": [{"name": "vocals", "frames": frames}]}


def test_aggregate_counts_excluded_tracks_and_frames_and_pools_frames_for_table_4_3():
    """Hand-made frames: track A has a silent frame (NaN), B a very bad frame, C an all-silent
    estimate (every frame NaN, as evaluate_track writes it). Every number is worked out by hand.
    A few very negative frames pull the pooled mean far below the median while the per-track
    medians do not move: the shape of thesis Table 4.3 (median 5.46, mean 0.26, std 19.41)."""
    nan = float("nan")
    track_a = _frames_track("A", [1.0, 3.0, nan, 7.0])  # median of 1, 3, 7: 3
    track_b = _frames_track("B", [-20.0, 5.0, 6.0, 8.0])  # median 5.5
    refs = _sources(2.0)
    silent = refs.copy()
    silent[0] = 0.0  # the model outputs silence for the vocals of this track
    track_c = json.loads(json.dumps(evaluate_track("C", refs, silent, RATE)))  # 2 NaN frames
    stats = aggregate([track_a, track_b, track_c], target="vocals")
    sdr = stats["SDR"]

    # over tracks: the medians 3 and 5.5; C is skipped (museval's convention) but counted
    assert sdr["n_tracks"] == 2 and sdr["n_excluded"] == 1
    assert sdr["median"] == pytest.approx(4.25)
    assert sdr["mad"] == pytest.approx(1.25)
    assert sdr["mean"] == pytest.approx(4.25)
    assert sdr["std"] == pytest.approx(1.25 * math.sqrt(2))  # ddof=1 over two values

    # over frames: 1, 3, 7, -20, 5, 6, 8 pooled; 1 + 2 NaN frames of 10 are excluded
    assert sdr["n_frames"] == 10 and sdr["n_frames_excluded"] == 3
    assert sdr["n_frames_infinite"] == 0
    assert sdr["frames_median"] == pytest.approx(5.0)
    assert sdr["frames_mad"] == pytest.approx(2.0)  # |x - 5| = 4, 2, 2, 25, 0, 1, 3
    assert sdr["frames_mean"] == pytest.approx(10 / 7)
    # sum of squares 584, so the squared deviations from 10/7 sum to 584 - 7 (10/7)^2
    assert sdr["frames_std"] == pytest.approx(math.sqrt((584 - 100 / 7) / 6))
    assert aggregate([track_a, track_b], ddof=0)["SDR"]["frames_std"] == pytest.approx(
        math.sqrt((584 - 100 / 7) / 7)
    )
    # the other metrics are counted and pooled on their own
    assert stats["SAR"]["frames_median"] == pytest.approx(6.0)
    assert stats["SAR"]["n_frames_excluded"] == 3 and stats["SAR"]["n_excluded"] == 1
    # PES/EPS keep their over-tracks statistics only: C's silent estimate shows up in EPS
    assert "n_frames" not in stats["PES"]
    assert stats["EPS"]["n_tracks"] == 1 and stats["EPS"]["n_excluded"] == 2


def test_aggregate_keeps_infinite_frames_at_inf_db_and_counts_them():
    """An exactly zero error term: museval's inf (stored as INF_DB, or as Infinity by other
    writers) is kept at +-INF_DB in both the per-track and the pooled statistics, and counted."""
    quantised = 313.0712  # INF_DB as museval's TrackStore quantises it
    track = _frames_track("perfect", [quantised, 1.0, float("nan")])
    old = json.loads(json.dumps(_frames_track("old", [float("inf"), -float("inf"), 2.0])))
    stats = aggregate([track, old])["SDR"]
    assert stats["n_frames"] == 6 and stats["n_frames_excluded"] == 1
    assert stats["n_frames_infinite"] == 3
    # pooled: -INF_DB, 1, 2, 313.0712, INF_DB -> median 2
    assert stats["frames_median"] == pytest.approx(2.0)
    assert stats["frames_mean"] == pytest.approx((quantised + 3.0) / 5, abs=1e-3)
    # per track: (313.0712 + 1) / 2 and median(INF_DB, -INF_DB, 2) = 2
    assert stats["median"] == pytest.approx(((quantised + 1.0) / 2 + 2.0) / 2, abs=1e-3)


def test_aggregate_reads_files_of_earlier_runs_and_museval_itself():
    """museval's own TrackStore JSON (NaN literals, no medians, no PES/EPS) and frames with
    ``null`` values, as other JSON writers store NaN, are aggregated like our files."""
    store = museval.TrackStore(track_name="museval", win=1.0, hop=1.0)
    store.add_target(
        target_name="vocals",
        values={
            "SDR": [2.0, math.nan, 4.0],
            "SIR": [1.0, math.nan, 1.0],
            "SAR": [3.0] * 3,
            "ISR": [5.0] * 3,
        },
    )
    from_museval = {"name": "museval", **json.loads(store.json)}
    with_null = _frames_track("null", [6.0, 8.0])
    with_null["targets"][0]["frames"][1]["metrics"]["SDR"] = None
    stats = aggregate([from_museval, with_null])
    assert stats["SDR"]["n_frames"] == 5 and stats["SDR"]["n_frames_excluded"] == 2
    assert stats["SDR"]["median"] == pytest.approx(4.5)  # per-track medians 3 and 6
    assert stats["SDR"]["frames_median"] == pytest.approx(4.0)  # frames 2, 4, 6
    assert stats["SAR"]["n_frames_excluded"] == 0  # only the null frame's SDR is missing
    assert stats["PES"]["n_tracks"] == 0 and stats["PES"]["n_excluded"] == 2


# ------------------------------------------------------------------------------------------------
# ParallelEvaluator
# ------------------------------------------------------------------------------------------------


def _tracks(n: int = 3):
    out = []
    for i in range(n):
        refs = _sources(3.0, seed=10 + i)
        out.append((f"Track {i}", refs, _leaky(refs, 0.2 + 0.1 * i)))
    return out


def _numbers(tree) -> list:
    """Numeric leaves of a JSON-like tree in a fixed order (keys/strings checked separately)."""
    if isinstance(tree, dict):
        return [x for key in sorted(tree) for x in _numbers(tree[key])]
    if isinstance(tree, list):
        return [x for item in tree for x in _numbers(item)]
    return [float(tree)] if isinstance(tree, (int, float)) else []


def _assert_same_results(got: list, expected: list) -> None:
    """Same structure and numbers; BLAS threading may move the last quantisation digit."""

    def shape(r: dict) -> list:
        return [sorted(r), [(t["name"], len(t["frames"]), sorted(t)) for t in r["targets"]]]

    assert [shape(r) for r in got] == [shape(r) for r in expected]
    np.testing.assert_allclose(
        _numbers(got), _numbers(expected), rtol=1e-6, atol=2e-5, equal_nan=True
    )


def test_parallel_evaluator_writes_json_and_matches_inline(tmp_path):
    tracks = _tracks(3)
    with ParallelEvaluator(n_workers=0, progress=False) as inline:
        for name, refs, ests in tracks:
            inline.submit(name, refs, ests, RATE, out_dir=tmp_path / "inline")
        expected = inline.results()

    with ParallelEvaluator(n_workers=2) as parallel:
        for name, refs, ests in tracks:
            parallel.submit(name, refs, ests, RATE, out_dir=tmp_path / "parallel")
        got = parallel.results()

    assert [r["name"] for r in got] == [name for name, _, _ in tracks]
    _assert_same_results(got, expected)
    for result in got:
        with open(tmp_path / "parallel" / f"{result['name']}.json") as handle:
            assert json.dumps(json.load(handle)) == json.dumps(result)  # file == returned dict
    assert sorted(p.name for p in (tmp_path / "parallel").iterdir()) == sorted(
        f"{name}.json" for name, _, _ in tracks
    )  # no temporary files left behind


@pytest.mark.parametrize("n_workers", [0, 2])
def test_parallel_evaluator_reraises_worker_error_with_track_name(tmp_path, n_workers):
    not_a_dir = tmp_path / "occupied"
    not_a_dir.write_text("a file where the output directory should be")
    (name, refs, ests), (bad_name, bad_refs, bad_ests) = _tracks(2)
    with pytest.raises(TrackEvaluationError, match="Track 1") as info:
        with ParallelEvaluator(n_workers=n_workers, progress=False) as evaluator:
            evaluator.submit(name, refs, ests, RATE, out_dir=tmp_path / "ok")
            evaluator.submit(bad_name, bad_refs, bad_ests, RATE, out_dir=not_a_dir)
            evaluator.results()
    assert info.value.track_name == "Track 1"
    assert isinstance(info.value.__cause__, OSError)


def test_parallel_evaluator_validates_at_submit():
    refs = _sources(2.0)
    with ParallelEvaluator(n_workers=0, progress=False) as evaluator:
        with pytest.raises(ValueError, match="Broken"):
            evaluator.submit("Broken", refs, np.full_like(refs, np.nan), RATE)
        with pytest.raises(ValueError, match="file name"):
            evaluator.submit("../escape", refs, refs, RATE, out_dir=".")
        evaluator.submit("Fine", refs, _leaky(refs), RATE)
        with pytest.raises(ValueError, match="twice"):
            evaluator.submit("Fine", refs, _leaky(refs), RATE)
    with pytest.raises(ValueError, match="fork"):
        ParallelEvaluator(n_workers=1, mp_context="fork")


# ------------------------------------------------------------------------------------------------
# sanity on real, band-limited audio (MUSDB18 excerpt shipped with stempeg)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_stem() -> tuple[np.ndarray, int]:
    """(vocals, accompaniment) mono at 44.1 kHz; stems are mixture, drums, bass, other, vocals."""
    stems, rate = stempeg.read_stems(stempeg.example_stem_path())
    mono = stems.mean(axis=-1)
    return np.stack([mono[4], mono[1:4].sum(axis=0)]).astype(np.float64), int(rate)


def _oracle_wiener(refs: np.ndarray, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """Oracle Wiener mask (alpha = 2) applied to the mixture, periodic Hann STFT."""
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    spec = torch.stft(
        torch.from_numpy(refs), n_fft, hop, window=window, center=True, return_complex=True
    )
    power = spec.abs() ** 2
    mask = power / power.sum(dim=0).clamp_min(1e-20)
    est = torch.istft(mask * spec.sum(dim=0), n_fft, hop, window=window, length=refs.shape[-1])
    return est.numpy()


def _oracle_scores(real_stem, res_type: str) -> tuple[dict, float]:
    refs44, rate44 = real_stem
    refs = librosa.resample(refs44, orig_sr=rate44, target_sr=32000, res_type=res_type)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_track(f"stempeg example ({res_type})", refs, _oracle_wiener(refs), 32000)
    flagged = any(issubclass(w.category, BSSConditioningWarning) for w in caught)
    assert flagged == (result["bss_gram_condition"] > 1e12)
    return result["targets"][0]["median"], result["bss_gram_condition"]


def test_oracle_mask_on_real_stem_gives_plausible_sir_sar(real_stem):
    vocals, condition = _oracle_scores(real_stem, "polyphase")
    # measured: SDR 8.85, SIR 21.13, SAR 9.78, condition 2.3e8
    assert vocals["SDR"] > 5
    assert vocals["SIR"] > vocals["SDR"] + 5
    assert vocals["SAR"] > 5
    assert condition < 1e12


def test_soxr_resampling_breaks_bss_projections_and_is_detected(real_stem):
    """Pins the trap: soxr_hq leaves no energy near Nyquist, museval's 512-tap least squares
    become singular and SIR/SAR collapse while SDR still looks fine. Resample with polyphase."""
    vocals, condition = _oracle_scores(real_stem, "soxr_hq")
    # measured: SDR 8.85, SIR 0.44, SAR 0.07, ISR -17.2, condition 1.6e15
    assert vocals["SDR"] > 5
    assert vocals["SIR"] < vocals["SDR"]
    assert condition > 1e12


def test_check_bss_conditioning_on_broadband_and_silent_references():
    refs = _sources(2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_bss_conditioning(refs) < 1e3
    refs[1] = 0.0
    assert check_bss_conditioning(refs, warn=False) == math.inf


# ------------------------------------------------------------------------------------------------
# several channels and targets (issue #11)
# ------------------------------------------------------------------------------------------------


def _stereo_sources(seconds: float = 2.5, n: int = 3, seed: int = 3) -> np.ndarray:
    """(n targets, 2 channels, T) independent broadband sources, channels correlated."""
    rng = np.random.default_rng(seed)
    left = rng.standard_normal((n, int(seconds * RATE)))
    right = 0.6 * left + 0.4 * rng.standard_normal(left.shape)
    return np.stack([left, right], axis=1) * 0.2


def test_stereo_targets_are_evaluated_together_as_museval_does():
    refs = _stereo_sources()
    ests = refs + 0.2 * refs[[1, 2, 0]] + 0.01 * np.sin(np.arange(refs.shape[-1]) / 7)
    names = ("vocals", "drums", "bass")
    result = evaluate_track("st", refs, ests, RATE, target_names=names)
    assert [t["name"] for t in result["targets"]] == list(names)
    sdr, isr, sir, sar = museval.evaluate(
        np.moveaxis(refs, 1, 2),
        np.moveaxis(ests, 1, 2),
        win=RATE,
        hop=RATE,
        mode="v4",
        padding=False,
    )
    for i, target in enumerate(result["targets"]):
        for name, values in (("SDR", sdr), ("SIR", sir), ("ISR", isr), ("SAR", sar)):
            got = [frame["metrics"][name] for frame in target["frames"]]
            np.testing.assert_allclose(got, values[i], atol=1e-4)
    assert math.isfinite(result["bss_gram_condition"])  # (3 x 2 x 512) rows, all channels


def test_one_channel_is_exactly_the_mono_evaluation():
    refs = _sources()
    ests = _leaky(refs)
    mono = evaluate_track("m", refs, ests, RATE)
    one = evaluate_track("m", refs[:, None], ests[:, None], RATE)
    assert json.dumps(one) == json.dumps(mono)


def test_stereo_silence_needs_every_channel_silent():
    reference = np.ones((2, 3 * RATE))
    reference[:, RATE : 2 * RATE] = 0.0  # second frame silent on both channels
    reference[0, 2 * RATE :] = 0.0  # third frame silent on the left only
    estimate = np.full_like(reference, 0.5)
    scores = silence_scores(reference, estimate, RATE)
    assert scores["n_pes_frames"] == 1
    # the estimate's energy over both channels of the silent frame: 2 * RATE * 0.25
    assert scores["PES"] == pytest.approx(10 * np.log10(2 * RATE * 0.25 + 1e-12))


def test_stereo_inputs_are_validated_naming_the_track():
    refs = _stereo_sources()
    with pytest.raises(ValueError, match="track 'x'.*shape mismatch"):
        evaluate_track("x", refs, refs[:, :1], RATE, target_names=("a", "b", "c"))
    with pytest.raises(ValueError, match=r"track 'x'.*\(n_targets, T\) or \(n_targets, C, T\)"):
        evaluate_track("x", refs[None], refs[None], RATE, target_names=("a",))
