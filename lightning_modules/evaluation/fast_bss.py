"""BSS Eval v4 in torch: museval's ``bss_eval(framewise_filters=False)``, batched, float64.

What museval computes (``museval.metrics``, ``compute_permutation=False``, window = hop):

1. Distortion filters, fitted once on the whole track. ``G`` is the Gram matrix of every
   reference channel delayed by 0..L-1 samples (L = 512), ``D_e`` the inner products of
   estimate ``e``'s channels with those delayed references. ``C_e = solve(G + eps I, D_e)``
   projects estimate ``e`` on all references, ``Cj_e = solve(G_ee + eps I, D_ee)`` on its own
   reference only (``eps`` = float64 machine epsilon; ``lstsq`` without ``eps`` if the
   solve fails).
2. Per window (full windows only; a track shorter than one window is one window): the
   *windowed* references, zero-padded by L-1 samples, are filtered with those filters:
   ``P_all`` (all references through ``C_e``) and ``P_j`` (the own reference through ``Cj_e``),
   ``s`` the windowed own reference, ``x`` the windowed estimate (both zero-padded), and::

       SDR = 10 log10(|s|^2 / |x - s|^2)       ISR = 10 log10(|s|^2 / |P_j - s|^2)
       SIR = 10 log10(|P_j|^2 / |P_all - P_j|^2) SAR = 10 log10(|P_all|^2 / |x - P_all|^2)

   (museval's ``e_spat``, ``e_interf``, ``e_artif`` telescoped); ``+inf`` when a denominator is
   exactly zero; every metric of every target NaN in a window where any reference or estimate
   is silent (its channels sum to zero at every sample, museval's rule).

How it is computed here, all in float64 torch on any device: the lag-limited correlations for
``G`` and ``D`` by block-wise FFT (overlap-save over short blocks, summed in the frequency
domain; exact linear correlations, the same numbers museval gets from one track-long FFT up to
rounding); one factorisation of ``G + eps I`` for all estimates' right-hand sides and one
batched solve for the per-target blocks (Cholesky, half the cost of museval's LU, which is
used where Cholesky fails; then least squares as museval); the windows' filtering as one
batched FFT product over targets, channels and windows, and the energies by Parseval in the
frequency domain (SDR in the time domain). Values above the float64 noise floor of the
projections (roughly 10 log10 of 1 / (cond(G) * eps)^2, 120-150 dB on real music: e.g. SAR of
an estimate equal to its reference) are rounding noise in museval and here alike and differ
between the two. Where ``G`` is numerically singular (condition above ~1e12, e.g. four
stereo MUSDB18 targets, whose AAC-coded stems carry no energy near Nyquist), museval's
ISR/SIR/SAR themselves are set by rounding (they move by ~0.1 dB when its references change
by 1e-13), and the two differ by as much; SDR does not depend on the filters and agrees.

Torch's thread count is never changed here (``torch.set_num_threads(2)`` gives wrong batched
linalg in this torch build).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.fft
import torch

__all__ = ["FILTERS_LEN", "bss_eval_v4", "frame_silent"]

FILTERS_LEN = 512  # museval's default filters_len
#: Block length of the correlation FFTs (FFT size = block + 2 L - 2 = 8192 for L = 512).
_CORR_FFT = 8192
#: Bound on the largest complex intermediate of the per-window filtering (bytes).
_CHUNK_BYTES = 64 * 2**20


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """(nsrc, T) or (nsrc, C, T) -> float64 (nsrc, C, T) on ``device``."""
    t = torch.as_tensor(x).to(device=device, dtype=torch.float64)
    if t.ndim == 2:
        t = t[:, None]
    if t.ndim != 3:
        raise ValueError(
            f"expected (n_targets, T) or (n_targets, C, T), got shape {tuple(t.shape)}"
        )
    return t


def _n_frames(n_samples: int, win: int) -> tuple[int, int]:
    """museval's ``Framing`` with hop == window: (number of windows, window length)."""
    if win < n_samples:
        return n_samples // win, win
    return 1, n_samples


def frame_silent(x: torch.Tensor, win: int) -> torch.Tensor:
    """(F,) bool: windows in which some source of ``x`` (nsrc, C, T) is silent by museval's
    rule (``_any_source_silent``: the channel sum is zero at every sample of the window)."""
    n_frames, flen = _n_frames(x.shape[-1], win)
    summed = x[..., : n_frames * flen].sum(dim=1).reshape(x.shape[0], n_frames, flen)
    return (summed == 0).all(dim=-1).any(dim=0)


def _lag_correlations(x: torch.Tensor, y: torch.Tensor, max_lag: int) -> torch.Tensor:
    """``r[p, q, m] = sum_t x[p, t + m - max_lag] y[q, t]`` for m in 0..2 max_lag, with zeros
    outside the signals: x (P, T) and y (Q, T) on one device, float64. Overlap-save over
    blocks of y; the block spectra are summed in the frequency domain."""
    n_samples = x.shape[-1]
    n_fft = max(_CORR_FFT, 1 << (4 * max_lag).bit_length())
    block = n_fft - 2 * max_lag
    n_blocks = -(-n_samples // block)
    padded = n_blocks * block
    # y blocks: y[b*block : (b+1)*block], zero-padded to n_fft
    y_blocks = torch.nn.functional.pad(y, (0, padded - n_samples)).reshape(-1, n_blocks, block)
    # x windows: x[b*block - max_lag : (b+1)*block + max_lag]
    x_pad = torch.nn.functional.pad(x, (max_lag, padded - n_samples + max_lag))
    x_win = x_pad.unfold(-1, block + 2 * max_lag, block)  # (P, n_blocks, block + 2 max_lag)
    xf = torch.fft.rfft(x_win, n=n_fft)
    yf = torch.fft.rfft(y_blocks, n=n_fft)
    # cross-spectrum summed over blocks: (F, P, B) @ (F, B, Q) -> (P, Q, F)
    cross = torch.matmul(xf.permute(2, 0, 1), yf.permute(2, 1, 0).conj()).permute(1, 2, 0)
    return torch.fft.irfft(cross, n=n_fft)[..., : 2 * max_lag + 1]


def _filters(
    refs: torch.Tensor, ests: torch.Tensor, filters_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """museval's distortion filters on the whole track.

    Returns ``C`` (nsrc_est, nsrc, C_in, L, C_out): estimate e projected on all references
    (``_compute_projection_filters(G, sf, est[e])``), and ``Cj`` (nsrc, C_in, L, C_out):
    estimate j on reference j only (``_compute_projection_filters(G[j, j], sf[j], est[j])``).
    """
    nsrc, nchan, _ = refs.shape
    n_lag = filters_len
    signals = refs.reshape(nsrc * nchan, -1)
    both = torch.cat([signals, ests.reshape(nsrc * nchan, -1)])
    r_both = _lag_correlations(signals, both, n_lag - 1)  # (P, 2P, 2L-1), lag = m - (L-1)
    r_ref, r_est = r_both[:, : nsrc * nchan], r_both[:, nsrc * nchan :]
    # r[q, p, m] = r[p, q, 2L-2-m] in exact arithmetic; made exact so that G is symmetric
    r_ref = 0.5 * (r_ref + r_ref.transpose(0, 1).flip(-1))
    n_sig = nsrc * nchan
    # D[(p, k), (e, c)] = <est_(e, c), ref_p delayed k> = sum_t ref_p[t - k] est_(e,c)[t]
    #                   = r_est[p, (e, c), (L - 1) - k]
    k = torch.arange(n_lag, device=refs.device)
    d = r_est[:, :, n_lag - 1 - k]  # (p, (e, c), k)
    d = d.permute(0, 2, 1).reshape(n_sig * n_lag, nsrc * nchan)
    eps = torch.finfo(torch.float64).eps
    regularised = _gram(r_ref)
    regularised.diagonal().add_(eps)
    c_all = _solve(regularised, d, lambda: _gram(r_ref))
    del regularised
    # (p=(j, cin), k, (e, cout)) -> (e, j, cin, k, cout)
    c_all = c_all.reshape(nsrc, nchan, n_lag, nsrc, nchan).permute(3, 0, 1, 2, 4)
    # per-target systems: G_jj (nchan L)^2 and the rows of D for reference j, estimate j
    size = nchan * n_lag
    own = r_ref.reshape(nsrc, nchan, nsrc, nchan, -1).diagonal(dim1=0, dim2=2)
    own = own.permute(3, 0, 1, 2).contiguous()  # (j, cin, cin', 2L-1)
    blocks = torch.stack([_gram(own[j]) for j in range(nsrc)])
    blocks.diagonal(dim1=-2, dim2=-1).add_(eps)
    rhs = torch.stack(
        [d[j * size : (j + 1) * size, j * nchan : (j + 1) * nchan] for j in range(nsrc)]
    )
    c_own = _solve(blocks, rhs, lambda: torch.stack([_gram(own[j]) for j in range(nsrc)]))
    c_own = c_own.reshape(nsrc, nchan, n_lag, nchan)
    return c_all.contiguous(), c_own.contiguous()


def _gram(r: torch.Tensor) -> torch.Tensor:
    """museval's Gram matrix from lag correlations ``r`` (P, P, 2L-1): rows and columns
    (p, a), ``G[(p, a), (q, b)] = <ref_p delayed a, ref_q delayed b> = r[p, q, L-1 + b - a]``
    (``r[p, q, m] = sum_t ref_p[t + m - L + 1] ref_q[t]``); a new (P L, P L) tensor."""
    n_sig, n_lag = r.shape[0], (r.shape[-1] + 1) // 2
    r = r.contiguous()
    # H[p, a', q, b] = r[p, q, a' + b] with a' = L-1-a: positive strides, then flip a'
    hankel = r.as_strided((n_sig, n_lag, n_sig, n_lag), (r.stride(0), 1, r.stride(1), 1))
    return hankel.flip(1).reshape(n_sig * n_lag, n_sig * n_lag)


def _solve(
    regularised: torch.Tensor, rhs: torch.Tensor, plain: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """``numpy.linalg.solve(G + eps I, D)`` for the symmetric ``G + eps I``: by Cholesky (half
    the cost of LU) where it is numerically positive definite, else by LU as museval, and
    museval's ``lstsq(G, D)`` where that fails too (exactly singular)."""
    factor, info = torch.linalg.cholesky_ex(regularised)
    solution = torch.cholesky_solve(rhs, factor)
    bad = info != 0
    if bool(bad.any()):
        solution_lu, info_lu = torch.linalg.solve_ex(regularised, rhs)
        solution = torch.where(_expand(bad, rhs), solution_lu, solution)
        bad = info_lu != 0
        if bool(bad.any()):
            driver = "gelsd" if rhs.device.type == "cpu" else None
            fallback = torch.linalg.lstsq(plain(), rhs, driver=driver).solution
            solution = torch.where(_expand(bad, rhs), fallback, solution)
    return solution


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (batch,) mask broadcastable against (batch, n, k)."""
    return mask.reshape(*mask.shape, *([1] * (like.ndim - mask.ndim)))


def _db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """museval's ``_safe_db``: 10 log10(num / den), +inf where ``den == 0``."""
    out = 10.0 * torch.log10(num / den)
    return torch.where(den == 0, torch.full_like(out, float("inf")), out)


def bss_eval_v4(
    references: np.ndarray | torch.Tensor,
    estimates: np.ndarray | torch.Tensor,
    win: int,
    *,
    filters_len: int = FILTERS_LEN,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """museval's ``evaluate(refs, ests, win=win, hop=win, mode="v4", padding=False)``.

    ``references``/``estimates``: (nsrc, T) mono or (nsrc, C, T), every channel of a target
    evaluated together; ``win``: window (= hop) in samples. ``device``: where to compute
    (default: the inputs' device for tensors, else CPU). Returns a float64 array
    (4, nsrc, n_windows) of SDR, ISR, SIR, SAR (museval's order), NaN in windows where any
    reference or estimate is silent, +inf where an error term is exactly zero. Raises
    ValueError, as museval does, when a whole reference or estimate is silent.
    """
    if device is None:
        device = references.device if isinstance(references, torch.Tensor) else "cpu"
    device = torch.device(device)
    refs = _as_tensor(references, device)
    ests = _as_tensor(estimates, device)
    if refs.shape != ests.shape:
        raise ValueError(
            f"references {tuple(refs.shape)} and estimates {tuple(ests.shape)} differ in shape"
        )
    if not (isinstance(win, (int, np.integer)) and win > 0):
        raise ValueError(f"win must be a positive number of samples, got {win!r}")
    nsrc, nchan, n_samples = refs.shape
    for label, x in (("reference", refs), ("estimate", ests)):
        if bool((x.sum(dim=1) == 0).all(dim=-1).any()):
            raise ValueError(
                f"a {label} source is silent over the whole track: BSS Eval (museval) is "
                "undefined for it"
            )
    c_all, c_own = _filters(refs, ests, filters_len)
    return _window_metrics(refs, ests, c_all, c_own, int(win)).cpu().numpy()


def _fft_size(n: int) -> int:
    """A fast FFT length >= n: of the 5-smooth lengths in [n, 1.1 n], the one with the most
    factors of two (measured faster than the smallest one), the smallest on ties."""
    best, best_twos = scipy.fft.next_fast_len(n, real=True), -1
    candidate = best
    while candidate <= max(best, int(1.1 * n)):
        twos = (candidate & -candidate).bit_length()
        if twos > best_twos:
            best, best_twos = candidate, twos
        candidate = scipy.fft.next_fast_len(candidate + 1, real=True)
    return best


def _window_metrics(
    refs: torch.Tensor, ests: torch.Tensor, c_all: torch.Tensor, c_own: torch.Tensor, win: int
) -> torch.Tensor:
    """(4, nsrc, n_windows) SDR, ISR, SIR, SAR of (nsrc, C, T) ``refs``/``ests`` with the
    whole-track filters of :func:`_filters`; NaN in windows with a silent source.

    Layout: frequency first, (F, signals, windows), so that the filtering is one batched
    matmul per chunk of windows and the energies one weighted sum over frequencies."""
    nsrc, nchan, n_samples = refs.shape
    n_sig = nsrc * nchan
    filters_len = c_own.shape[-2]
    device = refs.device
    n_frames, flen = _n_frames(n_samples, win)
    silent = frame_silent(refs, flen) | frame_silent(ests, flen)
    n_fft = _fft_size(flen + filters_len - 1)
    n_freq = n_fft // 2 + 1
    # W_all[f, (e, cout), (j, cin)] = rfft(C[e, j, cin, :, cout])[f]
    w_all = torch.fft.rfft(c_all, n=n_fft, dim=3).permute(3, 0, 4, 1, 2)
    w_all = w_all.reshape(n_freq, n_sig, n_sig).contiguous()
    # the own-reference filters as a block-diagonal (in j) matrix of the same shape
    w_own = torch.zeros_like(w_all).view(n_freq, nsrc, nchan, nsrc, nchan)
    own = torch.fft.rfft(c_own, n=n_fft, dim=2).permute(2, 0, 3, 1)  # (f, j, cout, cin)
    for j in range(nsrc):
        w_own[:, j, :, j, :] = own[:, j]
    w_own = w_own.view(n_freq, n_sig, n_sig)
    # Parseval weights of a one-sided spectrum
    weight = torch.full((n_freq,), 2.0 / n_fft, dtype=torch.float64, device=device)
    weight[0] = 1.0 / n_fft
    if n_fft % 2 == 0:
        weight[-1] = 1.0 / n_fft

    def windows(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return x[..., start * flen : stop * flen].reshape(n_sig, stop - start, flen)

    chunk = max(1, min(n_frames, _CHUNK_BYTES // (8 * n_sig * n_freq * 16)))
    out = torch.empty((4, nsrc, n_frames), dtype=torch.float64, device=device)
    for start in range(0, n_frames, chunk):
        stop = min(n_frames, start + chunk)
        n_t = stop - start
        ref_w = windows(refs, start, stop)  # ((j, cin), t, n)
        est_w = windows(ests, start, stop)
        spectra = torch.fft.rfft(torch.cat([ref_w, est_w]), n=n_fft)  # (2 sig, t, f)
        spectra = spectra.permute(2, 0, 1).contiguous()  # (f, 2 sig, t)
        rf, xf = spectra[:, :n_sig], spectra[:, n_sig:]
        p_all = torch.bmm(w_all, rf)  # (f, (e, cout), t): all references through C_e
        p_own = torch.bmm(w_own, rf)  # (f, (j, cout), t): the own reference through Cj
        terms = torch.empty((n_freq, 5, n_sig, n_t), dtype=spectra.dtype, device=device)
        torch.sub(p_own, rf, out=terms[:, 0])
        terms[:, 1] = p_own
        torch.sub(p_all, p_own, out=terms[:, 2])
        terms[:, 3] = p_all
        torch.sub(xf, p_all, out=terms[:, 4])
        power = torch.view_as_real(terms).square_().reshape(n_freq, -1)
        energy = (weight @ power).reshape(5, nsrc, nchan, n_t, 2).sum(dim=(2, 4))
        ref_t = ref_w.reshape(nsrc, nchan, n_t, flen)
        est_t = est_w.reshape(nsrc, nchan, n_t, flen)
        e_s = ref_t.square().sum(dim=(1, 3))  # (j, t)
        e_sdr = (est_t - ref_t).square().sum(dim=(1, 3))
        e_isr, e_pj, e_interf, e_pall, e_artif = energy
        out[0, :, start:stop] = _db(e_s, e_sdr)
        out[1, :, start:stop] = _db(e_s, e_isr)
        out[2, :, start:stop] = _db(e_pj, e_interf)
        out[3, :, start:stop] = _db(e_pall, e_artif)
    out[:, :, silent] = float("nan")
    return out
