"""The fast BSS Eval v4 (lightning_modules.evaluation.fast_bss) against museval itself, frame by
frame, in the same process: real audio (the MUSDB18 excerpt shipped with stempeg) at 32 and
44.1 kHz, the suite's synthetic tracks, and adversarial cases, with two mono and four stereo
targets. museval is the reference; nothing here re-derives the fast code's formulas."""

from __future__ import annotations

# ffmpeg on PATH before museval -> musdb -> stempeg, which refuses to import without it
import datamodules  # noqa: F401  # isort: skip
import math

import librosa
import museval
import numpy as np
import pytest
import stempeg

from datamodules.synthetic import generate_track
from lightning_modules.evaluation.bss import (
    DEFAULT_MAX_CONDITION,
    ParallelEvaluator,
    check_bss_conditioning,
    evaluate_track,
)
from lightning_modules.evaluation.fast_bss import bss_eval_v4

TOL_DB = 0.01
EPS = float(np.finfo(np.float64).eps)
METRICS = ("SDR", "ISR", "SIR", "SAR")  # museval's order


def _museval(refs: np.ndarray, ests: np.ndarray, win: int) -> np.ndarray:
    def layout(x: np.ndarray) -> np.ndarray:
        return x[..., None] if x.ndim == 2 else np.moveaxis(x, 1, 2)

    return np.stack(
        museval.evaluate(layout(refs), layout(ests), win=win, hop=win, mode="v4", padding=False)
    )


def _noise_floor_db(refs: np.ndarray) -> float:
    """Above this, a museval value is float64 rounding of the projections (error energy at most
    (cond(G) eps)^2 of the signal's), 30 dB below the point where rounding moves it by 0.01 dB."""
    cond = check_bss_conditioning(refs, warn=False)
    return -20.0 * math.log10(max(cond, 1.0) * EPS) - 30.0


def _assert_matches(refs: np.ndarray, ests: np.ndarray, win: int, metrics=METRICS) -> np.ndarray:
    """fast == museval frame by frame: same NaN frames, within TOL_DB below the noise floor,
    both at or above (floor - 20 dB) where museval is above it (a numerically perfect term)."""
    expected = _museval(refs, ests, win)
    got = bss_eval_v4(refs, ests, win)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    floor = _noise_floor_db(refs)
    for i, metric in enumerate(METRICS):
        if metric not in metrics:
            continue
        e, g = expected[i], got[i]
        exact = np.isfinite(e) & (e < floor)
        assert np.all(np.abs(g[exact] - e[exact]) <= TOL_DB), (
            f"{metric}: max |fast - museval| {np.max(np.abs(g[exact] - e[exact])):.4g} dB"
        )
        perfect = ~np.isnan(e) & ~exact
        assert np.all(g[perfect] >= floor - 20.0), (metric, e[perfect], g[perfect])
    return got


# ------------------------------------------------------------------------------------------------
# signals
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stem() -> tuple[np.ndarray, int]:
    """drums, bass, other, vocals of the stempeg excerpt, stereo (4, 2, T) at 44.1 kHz, 3.3 s."""
    stems, rate = stempeg.read_stems(stempeg.example_stem_path())
    return np.moveaxis(stems[1:5, : int(3.3 * rate)], 2, 1).astype(np.float64), int(rate)


def _pair(sources: np.ndarray) -> np.ndarray:
    """(vocals, accompaniment) mono from (drums, bass, other, vocals) stereo."""
    return np.stack([sources[3], sources[:3].sum(axis=0)]).mean(axis=1)


def _estimate(refs: np.ndarray, seed: int = 0) -> np.ndarray:
    """A plausible separation: leak of the other sources and white noise at -50 dB."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(refs.shape) * refs.std() * 10 ** (-50 / 20)
    return 0.8 * refs + 0.2 * refs.mean(axis=0, keepdims=True) + noise


def _synthetic(rate: int = 32000, seconds: float = 3.2) -> np.ndarray:
    track = generate_track(1, 0, duration=seconds, rate=rate)
    return np.stack([track[k].T for k in ("drums", "bass", "other", "vocals")]) / 32768.0


def _noise_sources(n_targets: int, channels: int, win: int, seed: int = 1) -> np.ndarray:
    shape = (n_targets, win * 3 + 123) if channels == 1 else (n_targets, channels, win * 3 + 123)
    return np.random.default_rng(seed).standard_normal(shape)


# ------------------------------------------------------------------------------------------------
# real audio
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [44100, 32000])
def test_real_stem_two_mono_targets_match_museval(stem, rate):
    sources, native = stem
    pair = _pair(sources)
    if rate != native:
        pair = librosa.resample(pair, orig_sr=native, target_sr=rate, res_type="polyphase")
    got = _assert_matches(pair, _estimate(pair), rate)
    assert got.shape == (4, 2, 3)  # trailing 0.3 s dropped


@pytest.mark.parametrize(
    "rate",
    [
        pytest.param(
            44100,
            marks=pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason="measured: SIR differs from museval by up to 0.15 dB while museval moves "
                "by 0.03 dB under the 1e-13 perturbation (SDR matches); not equivalent here",
            ),
        ),
        32000,
    ],
)
def test_real_stem_four_stereo_targets_sdr_matches_and_projections_within_museval_spread(
    stem, rate
):
    """Four stereo MUSDB18 targets leave museval's Gram matrix numerically singular (condition
    3e15 at 44.1 kHz, 2e12 at 32 kHz: the AAC-coded stems carry no energy near Nyquist), so its
    ISR/SIR/SAR are fixed by float64 rounding: they move when the references change by noise at
    -260 dB. SDR does not depend on the projections and matches within 0.01 dB; ISR/SIR/SAR
    must stay within twice museval's own movement under that perturbation."""
    sources, native = stem
    if rate != native:
        sources = librosa.resample(sources, orig_sr=native, target_sr=rate, res_type="polyphase")
    assert check_bss_conditioning(sources, warn=False) > DEFAULT_MAX_CONDITION
    ests = _estimate(sources)
    got = _assert_matches(sources, ests, rate, metrics=("SDR",))
    expected = _museval(sources, ests, rate)
    jitter = 1e-13 * np.random.default_rng(5).standard_normal(sources.shape)
    perturbed = _museval(sources + jitter, ests, rate)
    for i in range(1, 4):
        spread = np.max(np.abs(perturbed[i] - expected[i]))
        assert np.max(np.abs(got[i] - expected[i])) <= 2 * spread + TOL_DB, METRICS[i]


# ------------------------------------------------------------------------------------------------
# synthetic tracks
# ------------------------------------------------------------------------------------------------


def test_synthetic_track_two_mono_and_four_stereo_targets_match_museval():
    sources = _synthetic()
    assert check_bss_conditioning(sources, warn=False) < DEFAULT_MAX_CONDITION
    _assert_matches(sources, _estimate(sources), 32000)  # 4 stereo; vocals has silent frames
    pair = _pair(sources)
    _assert_matches(pair, _estimate(pair), 32000)


# ------------------------------------------------------------------------------------------------
# adversarial cases: broadband sources (well conditioned), 2 mono and 4 stereo targets
# ------------------------------------------------------------------------------------------------

WIN = 4000


@pytest.mark.parametrize("n_targets, channels", [(2, 1), (4, 2)])
@pytest.mark.parametrize(
    "case",
    [
        "silent reference window",
        "silent estimate window",
        "estimate equals reference",
        "estimate equals another source",
        "estimates swapped",
    ],
)
def test_adversarial_cases_match_museval(n_targets, channels, case):
    refs = _noise_sources(n_targets, channels, WIN)
    ests = _estimate(refs)
    if case == "silent reference window":
        refs[0, ..., WIN : 2 * WIN] = 0.0
        ests = _estimate(refs)
    elif case == "silent estimate window":
        ests[-1, ..., 2 * WIN : 3 * WIN] = 0.0
    elif case == "estimate equals reference":
        ests = refs.copy()
    elif case == "estimate equals another source":
        ests[0] = refs[1]
    else:
        ests = ests[::-1].copy()
    got = _assert_matches(refs, ests, WIN)
    if case.startswith("silent"):
        column = 1 if case == "silent reference window" else 2
        assert np.isnan(got[:, :, column]).all() and not np.isnan(got[:, :, 0]).any()
    if case == "estimate equals reference":
        assert np.isinf(got[0]).all()  # SDR: an exactly zero error


def test_one_window_longer_than_the_track_and_stereo_silence_rule():
    """A track shorter than the window is one window (museval's Framing); a stereo frame whose
    channels cancel (L = -R) is silent by museval's rule (the channel sum is zero)."""
    refs = _noise_sources(2, 2, 1000)
    ests = _estimate(refs)
    _assert_matches(refs, ests, 10 * refs.shape[-1])
    refs[1, 1, :1000] = -refs[1, 0, :1000]
    got = _assert_matches(refs, _estimate(refs), 1000)
    assert np.isnan(got[:, :, 0]).all()


def test_whole_silent_source_is_rejected_like_museval():
    refs = _noise_sources(2, 1, 1000)
    ests = refs.copy()
    ests[1] = 0.0
    with pytest.raises(ValueError, match="silent over the whole track"):
        bss_eval_v4(refs, ests, 1000)


# ------------------------------------------------------------------------------------------------
# through the suite's evaluator
# ------------------------------------------------------------------------------------------------


def test_evaluate_track_fast_gives_museval_json_with_the_evaluator_named():
    sources = _synthetic(rate=16000, seconds=2.5)
    pair = _pair(sources)
    ests = _estimate(pair)
    slow = evaluate_track("synthetic", pair, ests, 16000)
    fast = evaluate_track("synthetic", pair, ests, 16000, evaluator="fast")
    assert (slow["evaluator"], fast["evaluator"]) == ("museval", "fast")
    for t_slow, t_fast in zip(slow["targets"], fast["targets"], strict=True):
        for f_slow, f_fast in zip(t_slow["frames"], t_fast["frames"], strict=True):
            for metric in METRICS:
                a, b = f_slow["metrics"][metric], f_fast["metrics"][metric]
                assert (a is None) == (b is None)
                if a is not None:
                    assert abs(a - b) <= TOL_DB + 1e-5  # museval's JSON rounds to 1e-5
        for key in ("PES", "EPS", "n_pes_frames", "n_eps_frames"):
            assert t_slow[key] == t_fast[key] or (
                math.isnan(t_slow[key]) and math.isnan(t_fast[key])
            )
    with ParallelEvaluator(0, evaluator="fast", progress=False) as ev:
        ev.submit("synthetic", pair, ests, 16000)
        (pooled,) = ev.results()
    assert pooled["evaluator"] == "fast"
    with pytest.raises(ValueError, match="evaluator"):
        evaluate_track("synthetic", pair, ests, 16000, evaluator="mir_eval")


def test_every_separator_takes_the_evaluator_option():
    """`model.init_args.evaluator: fast` must reach the base class from every LightningModule the
    experiments name: subclasses with explicit signatures list it (LightningCLI needs that),
    the others pass **kwargs on."""
    import importlib
    import inspect
    import pkgutil

    import lightning_modules.separators as package
    from lightning_modules.separators.separator import Separator

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    classes = set()
    pending = [Separator]
    while pending:
        for sub in pending.pop().__subclasses__():
            pending.append(sub)
            if sub.__module__.startswith("lightning_modules."):  # not the tests' own fakes
                classes.add(sub)
    assert len(classes) >= 8
    for cls in classes:
        parameters = inspect.signature(cls.__init__).parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        assert "evaluator" in parameters or takes_kwargs, cls.__name__
        if "evaluator" in parameters:
            source = inspect.getsource(cls.__init__)
            assert "evaluator=evaluator" in source, f"{cls.__name__} drops its evaluator"


def test_a_table_says_which_evaluator_produced_its_rows():
    from sweeps.render import _evaluator_text

    def row(evaluator):
        scores = {} if evaluator is None else {"evaluator": evaluator}
        return {"result": {"scores": scores}}

    assert _evaluator_text([row(None), None]) == "museval BSS Eval v4"  # runs before the option
    assert "fast evaluator" in _evaluator_text([row("fast"), None])
    assert "mixed" in _evaluator_text([row("fast"), row("museval")])
