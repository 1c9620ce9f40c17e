"""A run's own scores that are not museval medians: ``<run folder>/scores.json``.

``{"records": [{"track", "target", "length" (seconds), <metric>: value, ...}, ...]}``: one record
per test piece (or segment) and target, as the paper evaluates; the table renderer summarises
a column over them as the table spec's ``aggregates`` says (``sweeps.render.aggregate_records``).

The metric of the chimera paper (spec chimera-blstm.md B.7): SDR "defined as scale-invariant
SNR" and its improvement over the mixture, ``SDRi = SI-SNR(estimate, s) - SI-SNR(mixture, s)``
per piece and source. Both signals are made zero-mean first (B-9); the channels and samples of a
multichannel signal count together. Plain numpy: the museval worker processes import this
package, which must not load torch.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.files import write_json_atomic

__all__ = [
    "SCORES",
    "best_permutation",
    "read_records",
    "sdr_improvement_records",
    "si_snr",
    "write_records",
]

#: The file name, in the run folder (``sweeps.render.SCORES`` reads the same name).
SCORES = "scores.json"
#: A floor on energies, so that a silent reference gives a finite (very low) value, not NaN.
EPS = 1e-12


def si_snr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SNR in dB: ``10 log10(|s_t|^2 / |e - s_t|^2)``, ``s_t = (<e, s> / |s|^2) s``
    after removing each signal's mean (every axis together: channels and samples)."""
    e = np.asarray(estimate, dtype=np.float64).ravel()
    s = np.asarray(reference, dtype=np.float64).ravel()
    if e.shape != s.shape:
        raise ValueError(
            f"estimate {np.shape(estimate)} and reference {np.shape(reference)} differ"
        )
    e = e - e.mean()
    s = s - s.mean()
    target = (np.dot(e, s) / (np.dot(s, s) + EPS)) * s
    noise = e - target
    return float(10.0 * np.log10((np.dot(target, target) + EPS) / (np.dot(noise, noise) + EPS)))


def best_permutation(estimates: np.ndarray, references: np.ndarray) -> tuple[int, ...]:
    """The order of ``estimates`` (N, ...) that maximises the mean SI-SNR against
    ``references`` (N, ...): ``estimates[list(order)]`` lines up with the references. Ties go to
    the first permutation in ``itertools.permutations`` order (the identity first)."""
    n = len(references)
    if len(estimates) != n:
        raise ValueError(f"{len(estimates)} estimates for {n} references")
    scores = np.array([[si_snr(e, r) for r in references] for e in estimates])  # (est, ref)
    best, best_score = tuple(range(n)), -math.inf
    for order in itertools.permutations(range(n)):
        score = float(np.mean([scores[order[i], i] for i in range(n)]))
        if score > best_score:
            best, best_score = order, score
    return best


def sdr_improvement_records(
    track: str,
    estimates: np.ndarray,
    references: np.ndarray,
    mixture: np.ndarray,
    targets: Sequence[str],
    rate: int,
    **extra: Any,
) -> list[dict[str, Any]]:
    """One record per target of a piece: ``SDR`` = SI-SNR(estimate, reference), ``SDR_mixture``
    = SI-SNR(mixture, reference), ``SDRi`` = their difference, ``length`` in seconds (the
    weights of a length-weighted mean), plus ``extra`` fields (e.g. the head that was scored).
    ``estimates`` and ``references`` are (N, ...) in the order of ``targets``; ``mixture`` has
    one estimate's shape."""
    if not len(estimates) == len(references) == len(targets):
        raise ValueError(
            f"{len(estimates)} estimates, {len(references)} references, {len(targets)} targets"
        )
    length = float(np.shape(mixture)[-1]) / float(rate)
    records = []
    for name, estimate, reference in zip(targets, estimates, references, strict=True):
        sdr, sdr_mixture = si_snr(estimate, reference), si_snr(mixture, reference)
        records.append(
            {
                "track": track,
                "target": name,
                "length": length,
                "SDR": sdr,
                "SDR_mixture": sdr_mixture,
                "SDRi": sdr - sdr_mixture,
                **extra,
            }
        )
    return records


def write_records(path: str | Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """``{"records": [...]}`` at ``path`` (atomically: a reader sees the old file or the new)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"records": [dict(r) for r in records]})
    return path


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``scores.json``."""
    return json.loads(Path(path).read_text())["records"]
