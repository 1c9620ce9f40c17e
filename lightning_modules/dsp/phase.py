"""Phase processing of the MagNet/PhaseNet approach (thesis 4.5): phase-derivative input
features, the phase codebook with its interpolation (eq. 4.4), and the differentiable inverse
of a training chunk's STFT.

* **Features** (thesis 4.5.1, after Muth et al. 2018 [160]): the instantaneous frequency (IF,
  centred time difference of the phase, compensated by the hop's phase advance ``4 pi k n0 / N``
  -- twice [160]'s, for the centred difference) and the group delay (GD, centred frequency
  difference), wrapped to [-pi, pi) and divided by pi, so both lie in [-1, 1). Unwrapping first
  is unnecessary: wrapping a difference of unwrapped phases equals wrapping the difference of
  the wrapped ones (they differ by multiples of 2 pi). A constant phase rotation of the
  spectrogram cancels in every difference, so both features ignore it.
* **Codebook**: P values uniformly spaced on the unit circle in [-pi, pi), ``-pi + 2 pi i / P``
  (0 among them for even P). A probability vector z over the classes gives the phase
  ``angle(sum_i z_i e^{i phi_i})`` (eq. 4.4); :func:`interpolate_phasor` returns that phase as a
  unit phasor, finite (and with finite gradients) even where the sum vanishes.
* **Chunk reconstruction**: training chunks use the non-centred STFT, whose first and last
  ``n_fft - hop`` samples are covered by fewer than ``n_fft / hop`` frames. :func:`overlap_add`
  inverts it (windowed overlap-add divided by the window's squared envelope) on the samples that
  all overlapping frames cover, where the inversion is exact for a signal with no content in
  the dropped DC bin. References go through the same STFT and inverse, so an oracle estimate
  gives a time-domain loss of exactly its optimum.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.conventions import HOP, N_FFT
from lightning_modules.dsp.spectral import _window

__all__ = [
    "wrap_phase",
    "phase_features",
    "phase_codebook",
    "interpolate_phasor",
    "nearest_codebook_class",
    "overlap_add",
    "kept_samples",
]


def wrap_phase(phase: Tensor) -> Tensor:
    """Angles wrapped to [-pi, pi)."""
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


def _centred_difference(phase: Tensor, dim: int) -> Tensor:
    """``phase[i + 1] - phase[i - 1]`` along ``dim`` for interior indices; the first and last
    index copy their neighbour's value (zeros when ``dim`` has fewer than 3 entries)."""
    size = phase.shape[dim]
    if size < 3:
        return torch.zeros_like(phase)
    inner = phase.narrow(dim, 2, size - 2) - phase.narrow(dim, 0, size - 2)
    first, last = inner.narrow(dim, 0, 1), inner.narrow(dim, size - 3, 1)
    return torch.cat([first, inner, last], dim=dim)


def phase_features(
    spectrum: Tensor, n_fft: int = N_FFT, hop: int = HOP, keep_dc: bool = False
) -> Tensor:
    """Instantaneous frequency and group delay of a complex STFT ``(..., F, T)``, stacked as
    ``(..., 2, F, T)`` in [-1, 1): IF(k, t) = wrap(phi(k, t + 1) - phi(k, t - 1) - 4 pi k hop /
    n_fft) / pi with k the FFT bin index (spectrogram index + 1 without the DC bin), GD(k, t) =
    wrap(phi(k + 1, t) - phi(k - 1, t)) / pi; edge frames and bins copy their neighbour's."""
    if not spectrum.is_complex():
        raise TypeError("phase_features expects a complex spectrogram")
    phase = spectrum.angle()
    bins = spectrum.shape[-2]
    first = 0 if keep_dc else 1
    # the hop's advance, wrapped in float64 first: 4 pi k hop / n_fft reaches ~3,200 rad at
    # 1,024 bins, where float32 would lose ~2e-4 rad
    k = torch.arange(first, first + bins, dtype=torch.float64)
    advance = wrap_phase((4 * math.pi * hop / n_fft) * k)[:, None].to(phase.device, phase.dtype)
    instantaneous = wrap_phase(_centred_difference(phase, -1) - advance)
    delay = wrap_phase(_centred_difference(phase, -2))
    return torch.stack([instantaneous, delay], dim=-3) / math.pi


def phase_codebook(
    classes: int = 8, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> Tensor:
    """``classes`` phases uniformly spaced on the unit circle in [-pi, pi): -pi + 2 pi i / P."""
    if classes < 2:
        raise ValueError(f"a phase codebook needs at least 2 classes, got {classes}")
    i = torch.arange(classes, dtype=torch.float64)
    return (-math.pi + 2 * math.pi * i / classes).to(dtype=dtype, device=device)


def interpolate_phasor(
    probabilities: Tensor, codebook: Tensor, dim: int = -3, eps: float = 1e-12
) -> Tensor:
    """Eq. 4.4 as a unit phasor: ``s / |s|`` with ``s = sum_i z_i e^{i phi_i}`` over ``dim``
    (the classes); ``|s|`` is ``sqrt(|s|^2 + eps)``, so a vanishing sum (uniform probabilities)
    gives a finite (near-zero) phasor and finite gradients instead of NaN."""
    shape = [1] * probabilities.dim()
    shape[dim] = -1
    phi = codebook.to(probabilities.dtype).reshape(shape)
    real = (probabilities * torch.cos(phi)).sum(dim)
    imag = (probabilities * torch.sin(phi)).sum(dim)
    norm = torch.sqrt(real.square() + imag.square() + eps)
    return torch.complex(real / norm, imag / norm)


def nearest_codebook_class(phase: Tensor, classes: int = 8) -> Tensor:
    """Index of the uniform codebook entry (:func:`phase_codebook`) nearest to each angle on
    the circle."""
    step = 2 * math.pi / classes
    return torch.remainder(torch.round((wrap_phase(phase) + math.pi) / step), classes).long()


def kept_samples(frames: int, n_fft: int = N_FFT, hop: int = HOP) -> slice:
    """The samples of a chunk of ``frames`` non-centred STFT frames that every overlapping
    frame covers: ``n_fft - hop`` samples are cut at each end."""
    length = (frames - 1) * hop + n_fft
    return slice(n_fft - hop, length - (n_fft - hop))


def overlap_add(
    spectrum: Tensor,
    n_fft: int = N_FFT,
    hop: int = HOP,
    *,
    window: str = "hann",
    keep_dc: bool = False,
) -> Tensor:
    """Differentiable inverse of the non-centred STFT (``dsp.spectral.stft(center=False)``) of
    a chunk: ``(..., F, T) -> (..., kept)``, the samples of :func:`kept_samples` only. Each
    frame's inverse FFT is windowed, overlap-added and divided by the window's squared
    envelope (the least-squares inverse). Without ``keep_dc`` a zero DC bin is put back."""
    if not spectrum.is_complex():
        raise TypeError("overlap_add expects a complex spectrogram")
    lead, (bins, frames) = spectrum.shape[:-2], spectrum.shape[-2:]
    expected = n_fft // 2 + int(keep_dc)
    if bins != expected:
        raise ValueError(f"expected {expected} frequency bins, got {bins}")
    if frames * hop < n_fft:
        raise ValueError(f"{frames} frames of hop {hop} leave no sample covered by all frames")
    flat = spectrum.reshape(-1, bins, frames)
    if not keep_dc:
        flat = torch.cat([flat.new_zeros(flat.shape[0], 1, frames), flat], dim=1)
    win = _window(n_fft, flat, window)
    segments = torch.fft.irfft(flat, n=n_fft, dim=1) * win[:, None]  # (B, n_fft, frames)
    length = (frames - 1) * hop + n_fft
    signal = F.fold(segments, (1, length), (1, n_fft), stride=(1, hop))[:, 0, 0]
    envelope = F.fold(
        win.square()[None, :, None].expand(1, n_fft, frames),
        (1, length),
        (1, n_fft),
        stride=(1, hop),
    )[0, 0, 0]
    kept = kept_samples(frames, n_fft, hop)
    out = signal[:, kept] / envelope[kept]
    return out.reshape(*lead, out.shape[-1])
