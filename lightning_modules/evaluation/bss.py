"""Track evaluation: BSS Eval v4 (museval), PES/EPS for silent frames, aggregation, parallelism.

Conventions (thesis Sec. 2.3.1, SiSEC 2018 / museval v4):

* Shapes: references and estimates are ``(n_targets, T)`` mono or ``(n_targets, C, T)``
  multichannel arrays; museval evaluates ``(nsrc, nsamples, nchan)``, every channel of a target
  together (one SDR per target and frame). A single channel (C = 1) is evaluated exactly as a
  mono array.
* BSS Eval v4: time-invariant 512-tap distortion filters fitted on the whole track, metrics
  computed on non-overlapping windows of ``win_seconds`` (window = hop), per-track value is the
  median over frames. museval sets every metric of a frame to NaN when any reference or estimate
  is all-zero in that frame, and drops a trailing partial window, so a track of ``T`` samples has
  ``T // win`` frames.
* PES / EPS (Schulze-Forster et al., "Weakly informed audio source separation", WASPAA 2019,
  Sec. 3, reference code ``schufo/wiass`` ``silent_frames_evaluation.py``) cover exactly the frames
  BSS Eval leaves undefined. See :func:`silence_scores`.
* Across tracks: median, MAD, mean and standard deviation of the per-track medians (the
  SiSEC convention, every table's "median over the test set"), and the same four statistics
  over all frames of all tracks pooled (thesis Table 4.3's mean and std can only be those),
  each with the number of tracks and frames that NaN excluded. See :func:`aggregate`.

Evaluators (``evaluator=``): ``"museval"`` (the reference, default) or ``"fast"``
(:mod:`lightning_modules.evaluation.fast_bss`: the same BSS Eval v4 in batched float64 torch,
on a GPU when ``device`` names one; equal to museval within 0.01 dB frame by frame wherever
museval's projections are numerically determined, see that module). Each track's result says
which produced it (``"evaluator"``).

With ``evaluator="museval"`` this module is numpy/museval only: it never imports torch (the
fast evaluator imports it when first used) and never touches torch's thread settings
(``torch.set_num_threads(2)`` gives wrong batched linalg in this build).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any

# First: importing datamodules puts ffmpeg on PATH, which museval -> musdb -> stempeg need.
from datamodules.files import write_json_atomic
from lightning_modules.evaluation.worker import start_worker

# isort: split
import museval
import numpy as np
from museval import metrics as museval_metrics
from tqdm.auto import tqdm

__all__ = [
    "BSS_FILTER_LEN",
    "DEFAULT_MAX_CONDITION",
    "EVALUATORS",
    "DEFAULT_TARGETS",
    "ENERGY_FLOOR",
    "INF_DB",
    "METRICS",
    "BSSConditioningWarning",
    "ParallelEvaluator",
    "TrackEvaluationError",
    "aggregate",
    "check_bss_conditioning",
    "evaluate_track",
    "frame_energy_db",
    "silence_scores",
]

DEFAULT_TARGETS: tuple[str, ...] = ("vocals", "accompaniment")
#: BSS Eval v4 implementations ``evaluate_track`` can use: museval itself, or fast_bss.
EVALUATORS: tuple[str, ...] = ("museval", "fast")
METRICS: tuple[str, ...] = ("SDR", "SIR", "ISR", "SAR")
BSS_FILTER_LEN = 512  # museval's (and BSS Eval's) distortion filter length
# Added to every frame energy before taking dB, as in the PES/EPS reference code: an all-zero
# frame therefore scores exactly -120 dB.
ENERGY_FLOOR = 1e-12
# museval's TrackStore turns +-inf (an exactly zero error term, e.g. a perfect estimate) into
# NaN, which would make a perfect frame indistinguishable from a silent one. We store +-INF_DB
# instead: the largest energy ratio float64 can resolve, 10*log10(1/eps**2) ~ 313.1 dB.
INF_DB = float(-20.0 * np.log10(np.finfo(np.float64).eps))
# Condition number of museval's Gram matrix above which the least-squares projections are
# numerically meaningless (measured: 44.1 kHz MUSDB stem 4e9, polyphase 32 kHz 2e8, soxr_hq
# 32 kHz 1.6e15 with garbage SIR/SAR).
DEFAULT_MAX_CONDITION = 1e12


class TrackEvaluationError(RuntimeError):
    """A track failed inside the evaluator; ``track_name`` says which, ``__cause__`` says why."""

    def __init__(self, track_name: str, message: str) -> None:
        super().__init__(message)
        self.track_name = track_name


class BSSConditioningWarning(UserWarning):
    """The references leave museval's 512-tap projection ill-conditioned (SIR/SAR/ISR unusable)."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _window_samples(rate: int, win_seconds: float) -> int:
    """Window length in samples; the same rounding museval's callers use, made explicit."""
    if not (isinstance(rate, (int, np.integer)) and rate > 0):
        raise ValueError(f"rate must be a positive integer, got {rate!r}")
    if not (win_seconds > 0 and math.isfinite(win_seconds)):
        raise ValueError(f"win_seconds must be positive and finite, got {win_seconds!r}")
    win = int(round(win_seconds * rate))
    if win < 1:
        raise ValueError(f"win_seconds={win_seconds} at rate={rate} is shorter than one sample")
    return win


def _frames(n_samples: int, win: int) -> list[slice]:
    """museval's framing with hop == window: full windows only, the trailing partial one dropped."""
    n_frames = n_samples // win if win < n_samples else 1
    return [slice(i * win, min(i * win + win, n_samples)) for i in range(n_frames)]


def _validate_inputs(
    track_name: str,
    references: np.ndarray,
    estimates: np.ndarray,
    rate: int,
    target_names: Sequence[str],
    win_seconds: float,
) -> int:
    """Fail early with the track name instead of deep inside museval; returns the window length."""
    if not isinstance(track_name, str) or not track_name:
        raise ValueError(f"track_name must be a non-empty string, got {track_name!r}")
    where = f"track {track_name!r}"
    references = np.asarray(references)
    estimates = np.asarray(estimates)
    if references.ndim not in (2, 3) or estimates.ndim not in (2, 3):
        raise ValueError(
            f"{where}: references and estimates must be (n_targets, T) or (n_targets, C, T) "
            f"arrays, got shapes {references.shape} and {estimates.shape}"
        )
    if references.shape != estimates.shape:
        raise ValueError(
            f"{where}: shape mismatch, references {references.shape} vs estimates {estimates.shape}"
        )
    if len(target_names) != references.shape[0]:
        raise ValueError(
            f"{where}: {references.shape[0]} target rows but target_names={tuple(target_names)}"
        )
    if len(set(target_names)) != len(target_names):
        raise ValueError(f"{where}: duplicate target names {tuple(target_names)}")
    for label, arr in (("references", references), ("estimates", estimates)):
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{where}: {label} must be floating point, got {arr.dtype}")
        finite = np.isfinite(arr)
        if not finite.all():
            rows = sorted({int(r) for r in np.nonzero(~finite)[0]})
            names = [target_names[r] for r in rows]
            raise ValueError(f"{where}: {label} contain NaN/inf (targets {names})")
    win = _window_samples(rate, win_seconds)
    if references.shape[-1] < win:
        raise ValueError(
            f"{where}: {references.shape[-1]} samples is fewer than one evaluation window "
            f"({win} samples = {win_seconds} s at {rate} Hz)"
        )
    return win


def _finite_db(value: float) -> float:
    """Replace museval's +-inf (exactly zero error) by +-INF_DB; keep NaN."""
    if math.isinf(value):
        return INF_DB if value > 0 else -INF_DB
    return float(value)


def _nan_stat(fn: Any, values: np.ndarray) -> float:
    """``fn`` over the non-NaN values, NaN (without a RuntimeWarning) when there are none."""
    values = values[~np.isnan(values)]
    return float(fn(values)) if values.size else float("nan")


def _frame_values(target: Mapping[str, Any], metric: str) -> np.ndarray:
    """One target's per-frame values of ``metric`` from museval JSON, as ``evaluate_track``
    stores them: NaN where museval left the frame undefined (``null`` or a missing value, as
    other writers store it, reads as NaN) and +-inf as +-INF_DB (plain museval files have no
    inf: its TrackStore already made them NaN)."""
    values = []
    for frame in target.get("frames") or ():
        value = (frame.get("metrics") or {}).get(metric)
        values.append(float("nan") if value is None else _finite_db(float(value)))
    return np.asarray(values, dtype=np.float64)


def _target_medians(target: Mapping[str, Any], metrics: Sequence[str]) -> dict[str, float]:
    """Per-track median of each metric over frames (NaN frames ignored), from museval frames."""
    return {metric: _nan_stat(np.median, _frame_values(target, metric)) for metric in metrics}


# --------------------------------------------------------------------------------------------
# silent frames: PES / EPS
# --------------------------------------------------------------------------------------------


def frame_energy_db(signal: np.ndarray, rate: int, win_seconds: float = 1.0) -> np.ndarray:
    """Per-frame energy ``10*log10(sum(x**2) + 1e-12)`` in the evaluation frames (PES/EPS unit)
    of a mono (T,) signal, or of a (C, T) one summed over its channels."""
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim not in (1, 2):
        raise ValueError(f"expected a (T,) or (C, T) signal, got shape {signal.shape}")
    win = _window_samples(rate, win_seconds)
    if signal.shape[-1] < win:
        raise ValueError(f"{signal.shape[-1]} samples is fewer than one window ({win} samples)")
    energy = np.array([np.sum(signal[..., sl] ** 2) for sl in _frames(signal.shape[-1], win)])
    return 10.0 * np.log10(energy + ENERGY_FLOOR)


def silence_scores(
    reference: np.ndarray,
    estimate: np.ndarray,
    rate: int,
    win_seconds: float = 1.0,
    silence_threshold_db: float | None = None,
) -> dict[str, float | int]:
    """PES and EPS: score the frames on which BSS Eval is undefined (silent reference/estimate).

    Definitions follow Schulze-Forster et al. 2019 (Sec. 3) and their reference code:

    * frame energy ``E(x) = 10*log10(sum_t x[t]**2 + 1e-12)`` dB (sum, not mean, over the frame;
      an all-zero frame scores -120 dB);
    * a frame is *silent* when all its samples are exactly zero (``silence_threshold_db=None``,
      the paper's rule and the same rule museval uses to set a frame's metrics to NaN), or, if
      ``silence_threshold_db`` is given, when ``E(x) < silence_threshold_db`` (absolute dB of
      the frame's sum of squares, so it depends on signal scale and window length);
    * ``PES`` = mean of ``E(estimate)`` over frames whose reference is silent (lower is better);
    * ``EPS`` = mean of ``E(reference)`` over frames whose estimate is silent and whose reference
      is not (the paper's setting; frames with silent reference are already in PES).

    Frames are museval's (``win_seconds`` windows, hop = window, trailing partial window dropped),
    so with ``silence_threshold_db=None`` every frame BSS Eval leaves NaN because this target's
    reference or estimate is silent is scored by PES or EPS.
    Returns ``PES``/``EPS`` (NaN when no such frame) and the frame counts ``n_frames``,
    ``n_pes_frames``, ``n_eps_frames``. A (C, T) signal's frame is silent when all its channels
    are, and its energy is summed over them.
    """
    if np.shape(reference) != np.shape(estimate):
        raise ValueError(
            f"reference {np.shape(reference)} and estimate {np.shape(estimate)} differ in shape"
        )
    ref_db = frame_energy_db(reference, rate, win_seconds)
    est_db = frame_energy_db(estimate, rate, win_seconds)
    if silence_threshold_db is None:
        win = _window_samples(rate, win_seconds)
        ref = np.asarray(reference)
        est = np.asarray(estimate)
        frames = _frames(ref.shape[-1], win)
        ref_silent = np.array([not np.any(ref[..., sl]) for sl in frames])
        est_silent = np.array([not np.any(est[..., sl]) for sl in frames])
    else:
        ref_silent = ref_db < silence_threshold_db
        est_silent = est_db < silence_threshold_db
    pes_frames = ref_silent
    eps_frames = est_silent & ~ref_silent
    return {
        "PES": float(np.mean(est_db[pes_frames])) if pes_frames.any() else float("nan"),
        "EPS": float(np.mean(ref_db[eps_frames])) if eps_frames.any() else float("nan"),
        "n_frames": int(ref_db.shape[0]),
        "n_pes_frames": int(pes_frames.sum()),
        "n_eps_frames": int(eps_frames.sum()),
    }


# --------------------------------------------------------------------------------------------
# conditioning of the BSS Eval projections
# --------------------------------------------------------------------------------------------


def check_bss_conditioning(
    references: np.ndarray,
    *,
    max_condition: float = DEFAULT_MAX_CONDITION,
    track_name: str = "",
    warn: bool = True,
) -> float:
    """Condition number of the Gram matrix museval inverts; warn when SIR/SAR/ISR become garbage.

    museval solves ``G c = d`` with ``G`` the Gram matrix of all references delayed by 0..511
    samples (its eps*I regularisation is negligible). Its eigenvalues follow the references'
    power spectrum, so references with no energy near Nyquist (e.g. a steep anti-alias
    resampler such as librosa's default soxr_hq, 44.1k -> 32k) make it singular to float64
    precision: SDR still looks fine, SIR/SAR/ISR do not. Costs one 1024x1024 eigvalsh for two
    mono targets (the matrix has n_targets x C x 512 rows). Returns inf when a reference is all
    zero. ``references`` is (n_targets, T) or (n_targets, C, T).
    """
    refs = np.asarray(references, dtype=np.float64)
    if refs.ndim not in (2, 3):
        raise ValueError(f"references must be (n_targets, [C,] T), got shape {refs.shape}")
    if not np.all(np.any(refs.reshape(len(refs), -1) != 0, axis=1)):
        return float("inf")
    museval_refs = refs[..., None] if refs.ndim == 2 else np.moveaxis(refs, 1, 2)
    # The exact matrix museval builds (private helpers, stable since museval 0.2).
    gram, _ = museval_metrics._compute_reference_correlations(museval_refs, BSS_FILTER_LEN)
    eig = np.linalg.eigvalsh(museval_metrics._reshape_G(gram))
    # 3 significant digits: the trailing ones depend on BLAS threading, not on the signals
    condition = float(f"{eig[-1] / eig[0]:.3g}") if eig[0] > 0 else float("inf")
    if warn and condition > max_condition:
        where = f"track {track_name!r}: " if track_name else ""
        warnings.warn(
            f"{where}BSS Eval Gram matrix condition number {condition:.3g} > "
            f"{max_condition:.3g}: references carry (almost) no energy in part of the band "
            "(steep resampler?); SIR/SAR/ISR are unreliable. Resample with "
            "res_type='polyphase' instead of soxr.",
            BSSConditioningWarning,
            stacklevel=2,
        )
    return condition


# --------------------------------------------------------------------------------------------
# one track
# --------------------------------------------------------------------------------------------


def evaluate_track(
    track_name: str,
    references: np.ndarray,
    estimates: np.ndarray,
    rate: int,
    target_names: Sequence[str] = DEFAULT_TARGETS,
    win_seconds: float = 1.0,
    *,
    silence_threshold_db: float | None = None,
    check_conditioning: bool = True,
    evaluator: str = "museval",
    device: str | None = None,
) -> dict[str, Any]:
    """BSS Eval v4 of one track in museval's per-track JSON format, plus PES/EPS and medians.

    ``references``/``estimates`` are ``(n_targets, T)`` mono or ``(n_targets, C, T)`` arrays in
    ``target_names`` order (C = 1 is evaluated as mono). All targets, and all channels, are
    evaluated together (SIR needs the other references). Returns::

        {"name", "targets": [{"name", "frames": [{"time", "duration",
                                                  "metrics": {"SDR", "SIR", "SAR", "ISR"}}],
                              "median": {metric: float}, "PES", "EPS",
                              "n_frames", "n_pes_frames", "n_eps_frames"}],
         "museval_version", "rate", "win_seconds", "bss_gram_condition", "evaluator"}

    ``evaluator``: ``"museval"`` (``museval.evaluate``) or ``"fast"`` (``fast_bss.bss_eval_v4``
    on ``device``, default CPU); everything else (framing, NaN/inf rules, JSON) is shared.

    Frame values are built with ``museval.TrackStore`` (quantised to 1e-5) except that +-inf
    becomes +-INF_DB instead of NaN. Frames where any reference/estimate is all zero are NaN (as
    in museval); if a whole reference or estimate row is silent, museval cannot run at all, so
    every frame is NaN and PES/EPS carry the information. Medians ignore NaN frames.
    """
    if evaluator not in EVALUATORS:
        raise ValueError(f"evaluator must be one of {EVALUATORS}, got {evaluator!r}")
    win = _validate_inputs(track_name, references, estimates, rate, target_names, win_seconds)
    refs = np.asarray(references, dtype=np.float64)
    ests = np.asarray(estimates, dtype=np.float64)
    if refs.ndim == 3 and refs.shape[1] == 1:  # one channel: exactly the mono evaluation
        refs, ests = refs[:, 0], ests[:, 0]
    n_targets, n_samples = refs.shape[0], refs.shape[-1]
    n_frames = len(_frames(n_samples, win))

    def any_silent(x: np.ndarray) -> bool:
        return not np.all(np.any(x.reshape(n_targets, -1) != 0, axis=1))

    if any_silent(refs) or any_silent(ests):
        # museval.metrics.validate() rejects all-zero sources; its per-frame rule makes every
        # frame NaN for every target anyway.
        scores = np.full((4, n_targets, n_frames), np.nan)
    else:
        # museval's layout: (nsrc, nsamples, nchan)
        def layout(x: np.ndarray) -> np.ndarray:
            return x[..., None] if x.ndim == 2 else np.moveaxis(x, 1, 2)

        if evaluator == "fast":
            from lightning_modules.evaluation.fast_bss import bss_eval_v4  # imports torch

            scores = bss_eval_v4(refs, ests, win, device=device)
        else:
            sdr, isr, sir, sar = museval.evaluate(
                layout(refs), layout(ests), win=win, hop=win, mode="v4", padding=False
            )
            scores = np.stack([sdr, isr, sir, sar])
    condition = (
        check_bss_conditioning(refs, track_name=track_name) if check_conditioning else float("nan")
    )
    if scores.shape[-1] != n_frames:  # museval's framing changed under us
        raise RuntimeError(
            f"track {track_name!r}: museval returned {scores.shape[-1]} frames, expected {n_frames}"
        )

    store = museval.TrackStore(track_name=track_name, win=win_seconds, hop=win_seconds)
    for i, target in enumerate(target_names):
        values = {
            name: [_finite_db(v) for v in scores[k, i]]
            for k, name in enumerate(("SDR", "ISR", "SIR", "SAR"))
        }
        store.add_target(target_name=target, values=values)
    # round-trip through museval's own JSON so the structure (and quantisation) is exactly its
    result: dict[str, Any] = {"name": track_name, **json.loads(store.json)}
    result["rate"] = int(rate)
    result["win_seconds"] = float(win_seconds)
    result["bss_gram_condition"] = condition
    result["evaluator"] = evaluator

    for i, target in enumerate(result["targets"]):
        target["median"] = _target_medians(target, METRICS)
        target.update(silence_scores(refs[i], ests[i], rate, win_seconds, silence_threshold_db))
    return result


# --------------------------------------------------------------------------------------------
# over tracks
# --------------------------------------------------------------------------------------------


def _statistics(values: np.ndarray, ddof: int) -> tuple[float, float, float, float, int]:
    """median, unscaled MAD, mean, std(ddof) over the non-NaN ``values``, and their number."""
    finite = values[~np.isnan(values)]
    n = int(finite.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), float("nan"), 0
    median = float(np.median(finite))
    mad = float(np.median(np.abs(finite - median)))
    mean = float(np.mean(finite))
    std = float(np.std(finite, ddof=ddof)) if n > ddof else float("nan")
    return median, mad, mean, std, n


def _summary(values: Sequence[float], ddof: int) -> dict[str, float]:
    """Statistics over tracks of per-track values, plus the track counts."""
    arr = np.asarray(values, dtype=np.float64)
    median, mad, mean, std, n = _statistics(arr, ddof)
    return {
        "median": median,
        "mad": mad,
        "mean": mean,
        "std": std,
        "n_tracks": n,
        "n_excluded": int(arr.size - n),
    }


def _frames_summary(frames: np.ndarray, ddof: int) -> dict[str, float]:
    """Statistics over all frames of all tracks pooled, plus the frame counts."""
    median, mad, mean, std, n = _statistics(frames, ddof)
    return {
        "frames_median": median,
        "frames_mad": mad,
        "frames_mean": mean,
        "frames_std": std,
        "n_frames": int(frames.size),
        "n_frames_excluded": int(frames.size - n),
        # +-INF_DB stands for an exactly zero error term; it is kept (as in the per-track
        # medians) but counted, since a few such frames dominate a pooled mean and std.
        "n_frames_infinite": int(np.sum(np.abs(frames) >= INF_DB - 1e-3)),
    }


def aggregate(
    track_results: Sequence[Mapping[str, Any]],
    target: str = "vocals",
    metrics: Sequence[str] = ("SDR", "SIR", "SAR", "ISR"),
    *,
    ddof: int = 1,
) -> dict[str, dict[str, float]]:
    """Test-set statistics of one target: over per-track medians and over pooled frames.

    For every metric (and for ``PES``/``EPS``), over tracks: ``median``, ``mad`` (unscaled,
    ``median(|x - median(x)|)``), ``mean``, ``std`` (sample std, ``ddof=1``, as pandas and
    museval's DataFrame tables compute it; pass ``ddof=0`` for the population std; the thesis
    does not say) of the per-track medians, ``n_tracks`` used and ``n_excluded`` (tracks whose
    value is NaN: every frame NaN for BSS metrics, e.g. an all-silent estimate; no silent frame
    for PES/EPS). These follow museval's convention of skipping NaN, so a model that outputs
    silence on hard tracks loses those tracks from the statistics instead of scoring badly;
    the counts say how many.

    For the BSS metrics also, over all frames of all tracks pooled (what museval's per-frame
    DataFrame gives, and the only reading under which thesis Table 4.3's mean 0.26 dB and std
    19.41 dB fit beside its median 5.46 dB): ``frames_median``, ``frames_mad``,
    ``frames_mean``, ``frames_std`` (same MAD and ``ddof`` conventions, NaN frames skipped),
    ``n_frames`` (all frames), ``n_frames_excluded`` (NaN frames: silent reference or estimate
    in that frame) and ``n_frames_infinite`` (frames at +-INF_DB, an exactly zero error term;
    kept as +-INF_DB like in the per-track medians, so they would dominate a pooled mean/std).

    Accepts :func:`evaluate_track` results or their JSON, including files written by earlier
    runs; plain museval JSON without ``median`` is reduced from its frames.
    """
    if not track_results:
        raise ValueError("aggregate() needs at least one track result")
    per_metric: dict[str, list[float]] = {m: [] for m in (*metrics, "PES", "EPS")}
    frames: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for result in track_results:
        name = result.get("name", "<unnamed>")
        matches = [t for t in result.get("targets", []) if t.get("name") == target]
        if len(matches) != 1:
            raise ValueError(
                f"track {name!r}: expected one target {target!r}, found {len(matches)}"
            )
        entry = matches[0]
        medians = entry.get("median") or {}
        for metric in metrics:
            values = _frame_values(entry, metric)
            frames[metric].append(values)
            stored = medians.get(metric)
            median = _nan_stat(np.median, values) if stored is None else float(stored)
            per_metric[metric].append(median)
        for key in ("PES", "EPS"):
            value = entry.get(key)
            per_metric[key].append(float("nan") if value is None else float(value))
    out = {key: _summary(values, ddof) for key, values in per_metric.items()}
    for metric in metrics:
        out[metric].update(_frames_summary(np.concatenate(frames[metric]), ddof))
    return out


# --------------------------------------------------------------------------------------------
# parallel
# --------------------------------------------------------------------------------------------


def _check_file_stem(track_name: str) -> None:
    """Track names become file names; refuse ones that would escape ``out_dir``."""
    if (
        not track_name
        or track_name in (".", "..")
        or "/" in track_name
        or os.sep in track_name
        or (os.altsep and os.altsep in track_name)
        or "\0" in track_name
    ):
        raise ValueError(f"track name {track_name!r} cannot be used as a file name")


def _evaluate_and_write(
    track_name: str,
    references: np.ndarray,
    estimates: np.ndarray,
    rate: int,
    out_dir: str | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Worker entry point (top level so spawn/forkserver children can unpickle it)."""
    result = evaluate_track(track_name, references, estimates, rate, **options)
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / f"{track_name}.json", result)
    return result


class ParallelEvaluator:
    """Run :func:`evaluate_track` for many tracks in worker processes, writing one JSON each.

    Workers are started with ``spawn`` (or ``forkserver``), never ``fork``: the parent usually
    runs torch's thread pools, which do not survive a fork. Scripts using it need the usual
    ``if __name__ == "__main__":`` guard. ``n_workers=0`` evaluates inline in ``submit`` (tests,
    debugging) with identical results and error handling. Arrays are sent to workers as
    ``transfer_dtype`` (float32 halves the pickling cost); at most ``max_pending`` tracks
    (default ``2 * n_workers``) are in flight, ``submit`` blocks beyond that to bound memory.
    Each worker caps numpy/scipy's OpenBLAS at ``blas_threads`` threads (None: library default;
    ``worker.start_worker``) and imports only this module and what it needs, never torch or
    Lightning (the package ``__init__``s above it are empty for that reason) unless
    ``evaluator="fast"`` (``evaluate_track``'s ``evaluator``/``device``; with it, evaluating
    inline, ``n_workers=0``, on the caller's device is the usual choice).

    Usage::

        with ParallelEvaluator(n_workers=4) as ev:
            for name, refs, ests in tracks:
                ev.submit(name, refs, ests, rate=32000, out_dir=Path("results/museval"))
            results = ev.results()
    """

    def __init__(
        self,
        n_workers: int,
        *,
        target_names: Sequence[str] = DEFAULT_TARGETS,
        win_seconds: float = 1.0,
        silence_threshold_db: float | None = None,
        check_conditioning: bool = True,
        mp_context: str = "spawn",
        max_pending: int | None = None,
        transfer_dtype: np.dtype | type = np.float32,
        blas_threads: int | None = 1,
        progress: bool = True,
        evaluator: str = "museval",
        device: str | None = None,
    ) -> None:
        if n_workers < 0:
            raise ValueError(f"n_workers must be >= 0, got {n_workers}")
        if evaluator not in EVALUATORS:
            raise ValueError(f"evaluator must be one of {EVALUATORS}, got {evaluator!r}")
        if mp_context not in ("spawn", "forkserver"):
            raise ValueError(
                f"mp_context must be 'spawn' or 'forkserver' (not fork), got {mp_context!r}"
            )
        self.n_workers = int(n_workers)
        self.target_names = tuple(target_names)
        self.win_seconds = float(win_seconds)
        self.transfer_dtype = np.dtype(transfer_dtype)
        self.progress = progress
        self.max_pending = max(1, max_pending if max_pending is not None else 2 * self.n_workers)
        self._options: dict[str, Any] = {
            "target_names": self.target_names,
            "win_seconds": self.win_seconds,
            "silence_threshold_db": silence_threshold_db,
            "check_conditioning": check_conditioning,
            "evaluator": evaluator,
            "device": device,
        }
        self._executor: ProcessPoolExecutor | None = None
        if self.n_workers > 0:
            self._executor = ProcessPoolExecutor(
                max_workers=self.n_workers,
                mp_context=multiprocessing.get_context(mp_context),
                initializer=start_worker,
                initargs=(blas_threads,),
            )
        self._futures: list[tuple[str, Future]] = []
        self._names: set[str] = set()
        self._collected = 0

    # -- submission ---------------------------------------------------------------------------

    def submit(
        self,
        track_name: str,
        references: np.ndarray,
        estimates: np.ndarray,
        rate: int,
        out_dir: Path | None = None,
    ) -> None:
        """Queue one track; inputs are validated here so bad data fails fast in the caller."""
        if self._executor is None and self.n_workers > 0:
            raise RuntimeError("ParallelEvaluator is closed")
        if track_name in self._names:
            raise ValueError(f"track {track_name!r} submitted twice")
        if out_dir is not None:
            _check_file_stem(track_name)
        refs = np.ascontiguousarray(references, dtype=self.transfer_dtype)
        ests = np.ascontiguousarray(estimates, dtype=self.transfer_dtype)
        _validate_inputs(track_name, refs, ests, rate, self.target_names, self.win_seconds)
        self._raise_first_failure()
        self._names.add(track_name)
        out = None if out_dir is None else os.fspath(out_dir)
        args = (track_name, refs, ests, int(rate), out, self._options)

        if self._executor is None:
            future: Future = Future()
            try:
                future.set_result(_evaluate_and_write(*args))
            except Exception as exc:  # surfaced by results(), like a worker failure
                future.set_exception(exc)
        else:
            while sum(not f.done() for _, f in self._futures) >= self.max_pending:
                wait([f for _, f in self._futures if not f.done()], return_when=FIRST_COMPLETED)
                self._raise_first_failure()
            future = self._executor.submit(_evaluate_and_write, *args)
        self._futures.append((track_name, future))

    # -- collection ---------------------------------------------------------------------------

    def _fail(self, track_name: str, exc: BaseException) -> None:
        for _, f in self._futures:
            f.cancel()
        raise TrackEvaluationError(
            track_name,
            f"museval evaluation of track {track_name!r} failed: {type(exc).__name__}: {exc}",
        ) from exc

    def _raise_first_failure(self) -> None:
        """Fail fast in ``submit`` instead of after the whole data set has been queued."""
        for name, f in self._futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                self._fail(name, f.exception())

    def results(self) -> list[dict[str, Any]]:
        """Wait for every submitted track (progress bar "museval"); results in submission order.

        A failing track raises :class:`TrackEvaluationError` naming it (original exception
        chained as ``__cause__``) and cancels the tracks not yet started.
        """
        names = {f: name for name, f in self._futures}
        with tqdm(
            total=len(self._futures),
            desc="museval",
            unit="track",
            disable=not self.progress,
        ) as bar:
            for future in as_completed(names):
                exc = future.exception()
                if exc is not None:
                    self._fail(names[future], exc)
                bar.update(1)
        self._collected = len(self._futures)
        return [f.result() for _, f in self._futures]

    # -- lifetime -----------------------------------------------------------------------------

    def close(self, cancel: bool = False) -> None:
        """Shut the worker pool down (waiting for running tracks)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel)
            self._executor = None

    def __enter__(self) -> ParallelEvaluator:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        failed = exc_type is not None
        try:
            if not failed and self._collected < len(self._futures):
                failed = True
                self.results()  # never drop a worker failure silently
                failed = False
        finally:
            self.close(cancel=failed)
