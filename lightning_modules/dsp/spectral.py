"""Signal processing shared by all models: STFT/iSTFT, separation masks and Mel filter banks.

Conventions follow the MMDenseNet thesis (Sections 2.4, 3.3.2, 4.2 and 5.2):

* STFT with a 2048-sample periodic Hann window and a hop of 512 samples (at 32 kHz).
* The DC bin is dropped (it "carries no exploitable information"), so spectrograms have
  ``n_fft // 2 = 1024`` bins: index ``k`` holds FFT bin ``k + 1`` and the last index is Nyquist.
  :func:`istft` puts a zero DC bin back.
* The companion papers use other STFTs (``datamodules.conventions.STFTConfig``): a Hamming
  window, a window shorter than ``n_fft`` (zero-padded on both sides, as ``torch.stft`` does),
  the DC bin kept (``n_fft // 2 + 1`` bins; nothing dropped, nothing restored). ``stft`` and
  ``istft`` take these as keywords, ``stft_kwargs(config)`` spells them for a config.
* Masks are real, multiply the complex mixture STFT (eq. 2.12) and reuse the mixture phase.
* Mel filter banks are librosa's Slaney-style, un-normalised (peak 1) triangles, used both to
  compress magnitudes (eq. 5.1) and, transposed, to interpolate Mel masks back (eq. 5.2).

Every function is plain torch, works on any leading batch dimensions, on CPU or GPU, and keeps
the input's precision (float32 -> complex64, float64 -> complex128 and back).
"""

from __future__ import annotations

import functools

import librosa
import numpy as np
import torch
from torch import Tensor

# The framing is shared with the data (chunk lengths): one definition, on the lowest floor.
from datamodules.conventions import HOP, N_FFT, WINDOWS, STFTConfig, chunk_samples

__all__ = [
    "N_FFT",
    "HOP",
    "STFTConfig",
    "chunk_samples",
    "stft",
    "istft",
    "stft_kwargs",
    "wiener_like_mask",
    "ideal_ratio_mask",
    "ideal_amplitude_mask",
    "phase_sensitive_mask",
    "truncated_phase_sensitive_mask",
    "apply_mask",
    "mel_filterbank",
    "linear_to_mel",
    "mel_to_linear_mask",
]


# --------------------------------------------------------------------------------------------
# STFT
# --------------------------------------------------------------------------------------------


def _window(length: int, like: Tensor, window: str = "hann") -> Tensor:
    """Periodic analysis window on ``like``'s device with its real dtype (Hann: COLA at hop
    n_fft/4). ``torch.stft`` zero-pads a window shorter than ``n_fft`` on both sides."""
    if window not in WINDOWS:
        raise ValueError(f"STFT window {window!r}: expected one of {WINDOWS}")
    dtype = like.real.dtype if like.is_complex() else like.dtype
    make = torch.hann_window if window == "hann" else torch.hamming_window
    return make(length, periodic=True, dtype=dtype, device=like.device)


def stft_kwargs(config: STFTConfig) -> dict:
    """The keywords of :func:`stft` and :func:`istft` for one ``STFTConfig``."""
    return {
        "n_fft": config.n_fft,
        "hop": config.hop,
        "window": config.window,
        "win_length": config.win_length,
        "keep_dc": config.keep_dc,
    }


def stft(
    x: Tensor,
    n_fft: int = N_FFT,
    hop: int = HOP,
    center: bool = False,
    *,
    window: str = "hann",
    win_length: int | None = None,
    keep_dc: bool = False,
) -> Tensor:
    """Complex STFT ``(..., T) -> (..., n_fft // 2, frames)`` without the DC bin
    (``(..., n_fft // 2 + 1, frames)`` with ``keep_dc``).

    ``center=False`` (training chunks) gives ``1 + (T - n_fft) // hop`` frames, i.e. exactly
    ``frames`` for ``T = chunk_samples(frames)``. ``center=True`` (full tracks) zero-pads
    ``n_fft // 2`` on both sides, gives ``1 + T // hop`` frames and is what :func:`istft` inverts.
    Zero padding rather than reflection keeps track edges silent instead of inventing audio.
    ``window`` ("hann" or "hamming", periodic) of ``win_length`` samples (default ``n_fft``).
    """
    lead, length = x.shape[:-1], x.shape[-1]
    win = win_length or n_fft
    spec = torch.stft(
        x.reshape(-1, length),
        n_fft=n_fft,
        hop_length=hop,
        win_length=win,
        window=_window(win, x, window),
        center=center,
        pad_mode="constant",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    if not keep_dc:
        spec = spec[:, 1:, :]  # drop DC
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(
    X: Tensor,
    length: int,
    n_fft: int = N_FFT,
    hop: int = HOP,
    *,
    window: str = "hann",
    win_length: int | None = None,
    keep_dc: bool = False,
) -> Tensor:
    """Inverse of :func:`stft` with ``center=True``: ``(..., n_fft // 2, frames) -> (..., length)``
    (``n_fft // 2 + 1`` bins with ``keep_dc``, taken as they are).

    Without ``keep_dc`` a zero DC bin is put back first, so anything the dropped DC bin held is
    lost: signals with no content in the DC bin's main lobe (below ~2 bins, 31 Hz at 32 kHz)
    round-trip exactly, a constant offset ``c`` comes back as ``c / 3`` (Hann leakage into bin 1
    survives). With ``keep_dc`` every signal round-trips.
    """
    if not X.is_complex():
        raise TypeError("istft expects a complex spectrogram")
    lead, (bins, frames) = X.shape[:-2], X.shape[-2:]
    expected = n_fft // 2 + int(keep_dc)
    if bins != expected:
        kept = "kept" if keep_dc else "dropped"
        raise ValueError(f"expected {expected} frequency bins (DC {kept}), got {bins}")
    flat = X.reshape(-1, bins, frames)
    if not keep_dc:
        dc = flat.new_zeros(flat.shape[0], 1, frames)
        flat = torch.cat([dc, flat], dim=1)
    win = win_length or n_fft
    y = torch.istft(
        flat,
        n_fft=n_fft,
        hop_length=hop,
        win_length=win,
        window=_window(win, X, window),
        center=True,
        normalized=False,
        onesided=True,
        length=length,
    )
    return y.reshape(*lead, length)


# --------------------------------------------------------------------------------------------
# Masks (thesis eq. 2.12, 2.13 and Section 4.2)
# --------------------------------------------------------------------------------------------


def wiener_like_mask(magnitudes: Tensor, alpha: float = 2.0, eps: float = 1e-8) -> Tensor:
    """Generalised Wiener masks ``|Y_n|^a / sum_n |Y_n|^a`` (eq. 2.13), sources on dim ``-3``.

    ``magnitudes`` is ``(..., N, F, T)`` (complex input is reduced to its magnitude); ``alpha=2``
    is the classical Wiener filter, ``alpha=1`` a magnitude ratio mask. Computed as
    ``(|Y_n|^a + eps/N) / (sum_n |Y_n|^a + eps)`` so the N masks always sum to 1 (the masked
    estimates add back up to the mixture), a bin where every source is zero gets the uniform
    mask ``1/N``, and gradients stay finite. ``eps`` is in units of ``|Y|^alpha``: bins whose
    total is comparable to it drift towards uniform, which only affects near-silent bins.
    """
    power = magnitudes.abs().pow(alpha)
    n_sources = power.shape[-3]
    total = power.sum(dim=-3, keepdim=True)
    return (power + eps / n_sources) / (total + eps)


def ideal_ratio_mask(magnitudes: Tensor, eps: float = 1e-8) -> Tensor:
    """Ideal ratio masks ``|Y_n| / sum_m |Y_m|``, sources on dim ``-3``: the IRM of SiSEC's
    oracles (sigsep's "IRM1"), i.e. :func:`wiener_like_mask` with ``alpha=1``. ``magnitudes``
    must hold every component of the mixture (add the residual of a partial target set) so that
    the masks of the targets do not take what belongs to the rest."""
    return wiener_like_mask(magnitudes, alpha=1.0, eps=eps)


def ideal_amplitude_mask(source: Tensor, mixture: Tensor, eps: float = 1e-8) -> Tensor:
    """Ideal amplitude mask ``|S| / |X|`` (Section 4.2); inputs complex STFTs or magnitudes.

    Exact for ``|X| >= eps`` (``|X|`` is clamped to ``eps`` below that). Unbounded above: where
    sources interfere destructively ``|S| > |X|`` and the mask exceeds 1.
    """
    return source.abs() / mixture.abs().clamp_min(eps)


def phase_sensitive_mask(source: Tensor, mixture: Tensor, eps: float = 1e-8) -> Tensor:
    """Phase-sensitive mask ``|S| / |X| * cos(angle S - angle X)`` (Section 4.2).

    The optimal real mask when the mixture phase is reused: the projection of ``S`` on ``X``.
    Computed as ``Re(S conj(X)) / |X|^2`` (no angles, exact for ``|X| >= eps``, 0 where
    ``X == 0``). Unbounded on both sides; negative when ``S`` and ``X`` are out of phase.
    """
    projection = torch.real(source * mixture.conj())
    return projection / mixture.abs().clamp_min(eps).square()


def truncated_phase_sensitive_mask(
    source: Tensor,
    mixture: Tensor,
    lower: float = 0.0,
    upper: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """Phase-sensitive mask clamped to ``[lower, upper]`` (TPS, Section 4.2): a bounded target.

    With the default ``[0, 1]`` it matches a sigmoid output and was the best oracle/pre-training
    mask in the thesis.
    """
    return phase_sensitive_mask(source, mixture, eps=eps).clamp(lower, upper)


def apply_mask(mask: Tensor, mixture_stft: Tensor) -> Tensor:
    """Source STFT estimate ``mask * X`` (eq. 2.12): scales magnitudes, keeps the mixture phase.

    Plain broadcasting: for masks stacked over sources ``(..., N, F, T)`` pass
    ``mixture_stft.unsqueeze(-3)``.
    """
    return mask * mixture_stft


# --------------------------------------------------------------------------------------------
# Mel filter bank (thesis Section 5.2)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _mel_numpy(rate: int, n_mels: int, n_fft: int, drop_dc: bool) -> np.ndarray:
    """Cached, read-only float64 librosa filter bank; building it costs milliseconds."""
    fb = librosa.filters.mel(
        sr=rate, n_fft=n_fft, n_mels=n_mels, norm=None, htk=False, dtype=np.float64
    )
    if drop_dc:
        fb = fb[:, 1:]
    fb = np.ascontiguousarray(fb)
    fb.setflags(write=False)
    return fb


def mel_filterbank(
    rate: int,
    n_mels: int = 128,
    n_fft: int = N_FFT,
    drop_dc: bool = True,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Mel filter matrix ``F_Mel`` of shape ``(n_mels, n_fft // 2)`` (``n_fft // 2 + 1`` with DC).

    librosa's Slaney scale (linear below 1 kHz, logarithmic above), ``fmin=0``,
    ``fmax=rate/2``, ``norm=None`` so each triangle peaks at 1 (as in the thesis) and adjacent
    triangles sum to 1 between the first and last centre frequencies, which makes ``F_Mel.T``
    a linear interpolator. Narrow low-frequency triangles may peak below 1 when their centre
    falls between FFT bins. Dropping the DC column loses nothing (every filter is 0 at 0 Hz).
    """
    fb = _mel_numpy(int(rate), int(n_mels), int(n_fft), bool(drop_dc))
    return torch.tensor(fb, dtype=dtype, device=device)


def linear_to_mel(magnitude: Tensor, filterbank: Tensor) -> Tensor:
    """Mel magnitudes ``F_Mel @ |X|`` (eq. 5.1): ``(..., F, T) -> (..., n_mels, T)``.

    Complex input is reduced to its magnitude. The filter bank is moved to the input's dtype and
    device. Triangles are not area-normalised, so high Mel bands (wide triangles) sum many more
    FFT bins than low ones and come out much larger.
    """
    if magnitude.is_complex():
        magnitude = magnitude.abs()
    fb = filterbank.to(dtype=magnitude.dtype, device=magnitude.device)
    return torch.matmul(fb, magnitude)


def mel_to_linear_mask(mel_mask: Tensor, filterbank: Tensor) -> Tensor:
    """Linear-frequency mask ``F_Mel^T @ M_Mel`` (eq. 5.2): ``(..., n_mels, T) -> (..., F, T)``.

    Linear interpolation between Mel band centres: a constant Mel mask ``c`` maps to ``c``
    between the first and last filter centres. Outside that range only one half-triangle
    contributes, so the mask fades out: towards 0 Hz (bin 1 gets ~0.55 c at 32 kHz/128 Mels)
    and from the last centre to 0 at Nyquist (the top ~30 bins above 15.5 kHz at 32 kHz).
    """
    fb = filterbank.to(dtype=mel_mask.dtype, device=mel_mask.device)
    return torch.matmul(fb.transpose(-1, -2), mel_mask)
