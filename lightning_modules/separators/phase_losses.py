"""Losses of the MagNet/PhaseNet rows (thesis 4.5.1, eqs. 4.5-4.7).

All are means over every element (and, for the weighted SDR, over the batch's examples), so
their values do not depend on the chunk length. Time-domain losses take the kept samples of
``dsp.phase.overlap_add``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: L_tot = 0.1 L_cMSE + 0.2 L_l1 + 0.7 L_wSDR (eq. 4.5).
TOTAL_WEIGHTS = {"cmse": 0.1, "l1": 0.2, "wsdr": 0.7}


def complex_mse(estimate: Tensor, target: Tensor) -> Tensor:
    """Mean of |S_hat - S|^2 over all time-frequency bins (L_cMSE)."""
    return (estimate - target).abs().square().mean()


def phasor_mse(phasor: Tensor, target: Tensor) -> Tensor:
    """Mean of |e^{i phi_hat} - e^{i angle S}|^2 (the PhaseNet's MSE on the target phase, on the
    unit circle so that -pi and pi are the same phase). ``phasor`` is the estimated unit phasor,
    ``target`` the complex target STFT (a silent bin has phase 0)."""
    return (phasor - torch.exp(1j * target.angle())).abs().square().mean()


def l1_loss(estimate: Tensor, target: Tensor) -> Tensor:
    """Mean absolute sample error (L_l1)."""
    return F.l1_loss(estimate, target)


def _cosine(a: Tensor, b: Tensor, eps: float) -> Tensor:
    dot = (a * b).sum(-1)
    norms = torch.sqrt(a.square().sum(-1) + eps) * torch.sqrt(b.square().sum(-1) + eps)
    return dot / norms


def weighted_sdr_loss(
    mixture: Tensor, target: Tensor, estimate: Tensor, eps: float = 1e-8
) -> Tensor:
    """Weighted SDR loss (eqs. 4.6, 4.7) of waveforms ``(..., T)``, mean over the leading
    dimensions: ``-beta cos(s, s_hat) - (1 - beta) cos(x - s, x - s_hat)`` with ``beta =
    |s|^2 / (|s|^2 + |x - s|^2)``; the y of eq. 4.7 is the clean source s ("the energy ratio
    between the clean source and the accompaniment x - s"). ``eps`` in every norm keeps a
    silent signal finite (s_hat = x gives -beta cos(s, x)). Values lie in [-1, 1]."""
    noise, noise_estimate = mixture - target, mixture - estimate
    signal_energy, noise_energy = target.square().sum(-1), noise.square().sum(-1)
    beta = signal_energy / (signal_energy + noise_energy + eps)
    value = -beta * _cosine(target, estimate, eps) - (1 - beta) * _cosine(
        noise, noise_estimate, eps
    )
    return value.mean()
