"""Measures of the DAE mapping-functions paper (spec dae-nca.md A.6), plain numpy (the museval
worker processes import this package, which must not load torch).

TOD-R, the trace-to-off-diagonal ratio of a couplings matrix (eq. 22):
``s * Tr(|C|) / ||(1 - I) * C||_1``: small values mean much off-diagonal mass (inter-frequency
"vector filtering"), large values a mostly diagonal matrix ("scalar filtering", a mask). The
scale ``s`` is lost in our copy of the paper; any ``s`` that depends on N only cancels in every
comparison between models and strategies, so it defaults to 1.

SNR in dB over a whole segment: ``10 log10(sum ref^2 / sum (ref - est)^2)``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["snr_db", "tod_r"]


def tod_r(couplings: np.ndarray, scale: float = 1.0) -> float:
    """``scale * Tr(|C|) / ||(1 - I) * C||_1`` of a square matrix; +inf when C has no
    off-diagonal mass (the identity), NaN for the zero matrix."""
    c = np.abs(np.asarray(couplings, dtype=np.float64))
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"TOD-R needs a square matrix, got shape {c.shape}")
    trace = float(np.trace(c))
    off = float(c.sum() - trace)
    if off == 0.0:
        return math.nan if trace == 0.0 else math.inf
    return scale * trace / off


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """``10 log10(sum ref^2 / sum (ref - est)^2)`` over all entries; +inf for a perfect
    estimate of a non-silent reference."""
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"reference {ref.shape} and estimate {est.shape} differ")
    signal, error = float(np.sum(ref**2)), float(np.sum((ref - est) ** 2))
    if error == 0.0:
        return math.inf if signal > 0 else math.nan
    return 10.0 * math.log10(signal / error) if signal > 0 else -math.inf
