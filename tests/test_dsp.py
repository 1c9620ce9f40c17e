"""Tests for lightning_modules.dsp.spectral: STFT conventions, masks and Mel filter banks."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from datamodules.conventions import STFTConfig
from lightning_modules.dsp import spectral as dsp
from lightning_modules.dsp.frontend import MelFrontEnd
from lightning_modules.dsp.spectral import (
    HOP,
    N_FFT,
    apply_mask,
    chunk_samples,
    ideal_amplitude_mask,
    ideal_ratio_mask,
    istft,
    linear_to_mel,
    mel_filterbank,
    mel_to_linear_mask,
    phase_sensitive_mask,
    stft,
    stft_kwargs,
    truncated_phase_sensitive_mask,
    wiener_like_mask,
)

RATE = 32_000
BIN_HZ = RATE / N_FFT  # 15.625 Hz per FFT bin
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _tones(length: int, freqs_hz, *, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Sum of sinusoids with random phases/amplitudes: no content near DC."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64) / RATE
    out = torch.zeros(length, dtype=torch.float64)
    for f in freqs_hz:
        amp = 0.1 + torch.rand((), generator=gen, dtype=torch.float64)
        phase = 2 * torch.pi * torch.rand((), generator=gen, dtype=torch.float64)
        out += amp * torch.sin(2 * torch.pi * f * t + phase)
    return out.to(dtype)


def _highpassed_noise(shape, *, seed: int, cutoff_hz: float = 100.0) -> torch.Tensor:
    """White noise with everything below ``cutoff_hz`` removed (so the DC bin holds nothing)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    spec = torch.fft.rfft(x)
    freqs = torch.fft.rfftfreq(shape[-1], 1 / RATE)
    spec[..., freqs < cutoff_hz] = 0
    return torch.fft.irfft(spec, n=shape[-1])


def _snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    noise = (reference - estimate).pow(2).sum()
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


# ------------------------------------------------------------------------------------------
# STFT
# ------------------------------------------------------------------------------------------


def test_constants_and_chunk_samples():
    assert (N_FFT, HOP) == (2048, 512)
    assert chunk_samples(64) == 34_304
    assert chunk_samples(64) / RATE == pytest.approx(1.072)
    assert chunk_samples(8) == 5_632
    assert chunk_samples(8) / RATE == pytest.approx(0.176)
    assert chunk_samples(1) == N_FFT
    assert chunk_samples(3, n_fft=16, hop=4) == 24
    with pytest.raises(ValueError):
        chunk_samples(0)


@pytest.mark.parametrize("frames", [64, 8, 1])
def test_stft_shape_training_chunks(frames):
    x = torch.randn(2, 3, chunk_samples(frames))
    spec = stft(x)
    assert spec.shape == (2, 3, N_FFT // 2, frames)
    assert spec.dtype == torch.complex64
    if frames > 1:  # one sample fewer loses the last frame: the count really is exact
        assert stft(x[..., :-1]).shape[-1] == frames - 1


def test_stft_center_frame_count():
    for length in (1000, 5_632, 44_100, 32_000 * 3 + 17):
        assert stft(torch.zeros(length), center=True).shape == (N_FFT // 2, 1 + length // HOP)


def _dc_free(length: int, seed: int) -> torch.Tensor:
    """Tones + noise above 400 Hz with Hann fades at both ends: no frame holds DC content.

    Abrupt onsets (including the track edges with zero padding) do put energy in the DC bin;
    see ``test_abrupt_edges_lose_dc_content``.
    """
    x = torch.stack(
        [
            _tones(length, [441.3, 1234.5, 3000.7, 7000.0], seed=seed),
            _highpassed_noise((length,), seed=seed, cutoff_hz=400.0).float(),
        ]
    )
    n = min(N_FFT, length // 2)
    ramp = 0.5 - 0.5 * torch.cos(torch.pi * torch.arange(n) / n)
    fade = torch.ones(length)
    fade[:n], fade[-n:] = ramp, ramp.flip(0)
    return x * fade


@pytest.mark.parametrize("length", [HOP * 40, HOP * 40 + 1, 34_304, 32_000 + 333, 5_000, 3_000])
def test_istft_round_trip(length):
    x = _dc_free(length, seed=length)
    y = istft(stft(x, center=True), length)
    assert y.shape == x.shape and y.dtype == torch.float32
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_abrupt_edges_lose_dc_content():
    """Zero padding makes the edge frames see a step, which has DC content that gets dropped:
    the error is confined to the first/last n_fft samples, the interior stays exact."""
    length = 20_000
    x = _tones(length, [441.3, 1234.5, 3000.7], seed=2)  # starts and stops abruptly
    err = (istft(stft(x, center=True), length) - x).abs()
    assert float(err[:N_FFT].max()) > 1e-4 and float(err[-N_FFT:].max()) > 1e-4
    assert float(err[N_FFT:-N_FFT].max()) < 1e-5


def test_round_trip_loses_only_dc_bin_content():
    """White noise has content in the dropped DC bin: only that (< 50 Hz, ~-36 dB) is lost."""
    length = 40_000
    x = torch.randn(2, length, generator=torch.Generator().manual_seed(1))
    err = istft(stft(x, center=True), length) - x
    assert 1e-3 < float(err.norm() / x.norm()) < 0.05
    err_spec = torch.fft.rfft(err).abs().square()
    freqs = torch.fft.rfftfreq(length, 1 / RATE)
    x_energy = torch.fft.rfft(x).abs().square().sum()
    assert float(err_spec[..., freqs > 50].sum() / x_energy) < 1e-5


def test_dc_bin_dropped_and_restored_as_zero():
    c = 0.7
    spec = stft(torch.full((chunk_samples(8),), c))
    full = torch.stft(
        torch.full((chunk_samples(8),), c),
        N_FFT,
        HOP,
        window=torch.hann_window(N_FFT),
        center=False,
        return_complex=True,
    )
    assert full[0].abs().min() == pytest.approx(c * N_FFT / 2, rel=1e-5)  # the DC value
    # output index 0 is FFT bin 1 (Hann main-lobe leakage, c * N/4), never the DC value
    torch.testing.assert_close(spec, full[1:])
    torch.testing.assert_close(spec[0].abs(), torch.full((8,), c * N_FFT / 4), rtol=1e-5, atol=0)
    assert float(spec[1:].abs().max()) < 1e-3
    # a zero DC is put back: a constant comes back as c/3 (only the bin-1 leakage survives),
    # it would come back as c if the DC were restored
    y = istft(stft(torch.full((20_000,), c), center=True), 20_000)
    torch.testing.assert_close(y[N_FFT:-N_FFT], torch.full((20_000 - 2 * N_FFT,), c / 3))


def test_bin_alignment():
    """A tone at FFT bin k lands at output index k - 1 and is re-synthesised at the same pitch."""
    k = 37
    x = _tones(chunk_samples(16), [k * BIN_HZ])
    spec = stft(x)
    assert torch.all(spec.abs().argmax(dim=0) == k - 1)
    single = torch.zeros(N_FFT // 2, 9, dtype=torch.complex64)
    single[k - 1, 4] = 1.0
    y = istft(single, 8 * HOP)
    assert int(torch.fft.rfft(y).abs().argmax()) == 2 * k  # 2k cycles in 8 * HOP = 2 * N_FFT


def test_istft_rejects_wrong_bins():
    with pytest.raises(ValueError):
        istft(torch.zeros(N_FFT // 2 + 1, 4, dtype=torch.complex64), 1000)
    with pytest.raises(TypeError):
        istft(torch.zeros(N_FFT // 2, 4), 1000)


@pytest.mark.parametrize("device", DEVICES)
def test_float64_and_device_preserved(device):
    x = torch.randn(2, chunk_samples(8), dtype=torch.float64, device=device)
    spec = stft(x, center=True)
    assert spec.dtype == torch.complex128 and spec.device.type == device
    y = istft(spec, x.shape[-1])
    assert y.dtype == torch.float64 and y.device.type == device
    mags = spec.abs()
    for out in (
        wiener_like_mask(torch.stack([mags, 2 * mags], dim=-3)),
        ideal_amplitude_mask(spec, spec),
        phase_sensitive_mask(spec, spec),
        truncated_phase_sensitive_mask(spec, spec),
        linear_to_mel(mags, mel_filterbank(RATE)),
        mel_to_linear_mask(
            torch.ones(128, 3, dtype=torch.float64, device=device), mel_filterbank(RATE)
        ),
    ):
        assert out.dtype == torch.float64 and out.device.type == device
    assert apply_mask(mags / (mags + 1), spec).dtype == torch.complex128


# ------------------------------------------------------------------------------------------
# Other STFTs (issue #11): Hamming, shorter windows, the DC bin kept
# ------------------------------------------------------------------------------------------

SAMSNET = STFTConfig(n_fft=4096, hop=1024, window="hamming", keep_dc=True)


def test_stft_config_bins_and_bad_options_name_the_option():
    assert STFTConfig().bins == 1024 and SAMSNET.bins == 2049
    assert STFTConfig(n_fft=1024, hop=512, window="hamming", keep_dc=True).bins == 513
    assert STFTConfig(n_fft=4096, win_length=2049).window_length == 2049
    with pytest.raises(ValueError, match="window 'kaiser'"):
        STFTConfig(window="kaiser")
    with pytest.raises(ValueError, match="win_length"):
        STFTConfig(n_fft=1024, win_length=2048)
    with pytest.raises(ValueError, match="hop=512: must be shorter than the window"):
        STFTConfig(n_fft=1024, hop=512, win_length=512)  # torch.istft would fail at validation
    with pytest.raises(ValueError, match="window 'blackman'"):
        stft(torch.zeros(4096), window="blackman")


def test_hamming_stft_with_dc_is_torchs_periodic_hamming_stft():
    x = torch.randn(2, chunk_samples(8, 4096, 1024), generator=torch.Generator().manual_seed(0))
    spec = stft(x, **stft_kwargs(SAMSNET))
    expected = torch.stft(
        x,
        4096,
        1024,
        window=torch.hamming_window(4096, periodic=True),
        center=False,
        return_complex=True,
    )
    assert spec.shape == (2, 2049, 8)
    torch.testing.assert_close(spec, expected)  # nothing dropped: bin 0 is DC


def test_keep_dc_round_trips_everything_a_constant_included():
    """With the DC bin kept nothing is dropped or restored: white noise and a constant come
    back exactly (without it, a constant comes back as c / 3)."""
    length = 30_000
    x = torch.randn(length, generator=torch.Generator().manual_seed(3)) + 0.7
    for window in ("hann", "hamming"):
        y = istft(
            stft(x, center=True, window=window, keep_dc=True), length, keep_dc=True, window=window
        )
        torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_shorter_window_is_zero_padded_and_round_trips():
    """A 2049-sample window inside a 4096-point FFT (the DAE paper's proposal): torch pads it
    on both sides; the analysis-synthesis pair still inverts."""
    config = STFTConfig(n_fft=4096, hop=384, win_length=2049, window="hamming", keep_dc=True)
    x = torch.randn(40_000, generator=torch.Generator().manual_seed(4))
    spec = stft(x, center=True, **stft_kwargs(config))
    assert spec.shape[-2] == 2049
    padded = torch.zeros(4096)
    padded[(4096 - 2049) // 2 : (4096 - 2049) // 2 + 2049] = torch.hamming_window(2049)
    expected = torch.stft(
        x, 4096, 384, window=padded, center=True, pad_mode="constant", return_complex=True
    )
    torch.testing.assert_close(spec, expected)
    y = istft(spec, 40_000, **stft_kwargs(config))
    torch.testing.assert_close(y, x, atol=1e-4, rtol=0)


def test_istft_names_the_bins_it_expects():
    with pytest.raises(ValueError, match="expected 2049 frequency bins \\(DC kept\\)"):
        istft(torch.zeros(2048, 4, dtype=torch.complex64), 1000, **stft_kwargs(SAMSNET))


def test_mel_front_end_follows_the_rows_stft():
    """The Mel bank has one column per spectrogram bin: 2048 without DC at 4096, 2049 with."""
    assert MelFrontEnd(44100, 128, 4096).filterbank.shape == (128, 2048)
    with_dc = MelFrontEnd(44100, 128, 4096, keep_dc=True)
    assert with_dc.filterbank.shape == (128, 2049)
    torch.testing.assert_close(with_dc.filterbank[:, 1:], mel_filterbank(44100, 128, 4096))
    assert float(with_dc.filterbank[:, 0].abs().max()) == 0.0  # no filter at 0 Hz
    assert MelFrontEnd(16000, 150, 1024).to_mel(torch.ones(2, 512, 3)).shape == (2, 150, 3)


# ------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------


def test_ideal_ratio_mask_is_the_magnitude_ratio():
    mags = torch.tensor([1.0, 3.0, 0.0, 4.0]).reshape(4, 1, 1)  # four sources, one bin
    torch.testing.assert_close(
        ideal_ratio_mask(mags).flatten(), mags.flatten() / 8, atol=1e-8, rtol=0
    )
    torch.testing.assert_close(ideal_ratio_mask(mags), wiener_like_mask(mags, alpha=1.0))


def test_wiener_mask_hand_example():
    mags = torch.tensor([3.0, 4.0]).reshape(2, 1, 1)
    torch.testing.assert_close(
        wiener_like_mask(mags, alpha=2.0).flatten(), torch.tensor([9 / 25, 16 / 25])
    )
    torch.testing.assert_close(
        wiener_like_mask(mags, alpha=1.0).flatten(), torch.tensor([3 / 7, 4 / 7])
    )
    # complex input is reduced to its magnitude
    cplx = torch.tensor([3.0j, -4.0 + 0j]).reshape(2, 1, 1)
    torch.testing.assert_close(wiener_like_mask(cplx), wiener_like_mask(mags))


def test_wiener_mask_sums_to_one_and_all_zero_is_uniform():
    # batch 2, N = 4 sources, 5 bins, 7 frames; seeded and away from the eps scale, where the
    # eps-guarded mask of a lone active source legitimately deviates from exactly 1
    mags = 0.1 + torch.rand(2, 4, 5, 7, generator=torch.Generator().manual_seed(0))
    mags[:, :, 0, 0] = 0.0  # all sources silent in one bin
    mags[:, 1:, 1, 1] = 0.0  # only source 0 active in another
    masks = wiener_like_mask(mags)
    assert masks.shape == mags.shape
    torch.testing.assert_close(masks.sum(dim=-3), torch.ones(2, 5, 7))
    torch.testing.assert_close(masks[:, :, 0, 0], torch.full((2, 4), 0.25))
    torch.testing.assert_close(masks[:, 0, 1, 1], torch.ones(2))
    assert torch.all(masks >= 0) and torch.all(masks <= 1)


def test_wiener_mask_gradients_finite_on_silence():
    mags = torch.zeros(3, 4, 4, requires_grad=True)
    wiener_like_mask(mags).sum().backward()
    assert torch.isfinite(mags.grad).all()


def test_iam_and_psm_in_phase_and_anti_phase():
    gen = torch.Generator().manual_seed(0)
    mixture = torch.randn(6, 5, dtype=torch.complex64, generator=gen)
    gains = torch.rand(6, 5, generator=gen) * 1.5
    source = gains * mixture  # in phase with the mixture
    iam = ideal_amplitude_mask(source, mixture)
    torch.testing.assert_close(iam, gains)
    torch.testing.assert_close(phase_sensitive_mask(source, mixture), gains)
    # magnitudes only are fine for the IAM
    torch.testing.assert_close(ideal_amplitude_mask(source.abs(), mixture.abs()), gains)
    # anti-phase: PSM = -|S|/|X| < 0, IAM still positive
    psm = phase_sensitive_mask(-source, mixture)
    torch.testing.assert_close(psm, -gains)
    assert torch.all(psm[gains > 0.01] < 0)
    torch.testing.assert_close(ideal_amplitude_mask(-source, mixture), gains)
    # quadrature: PSM = 0 whatever the magnitude ratio
    torch.testing.assert_close(
        phase_sensitive_mask(1j * source, mixture), torch.zeros(6, 5), atol=1e-6, rtol=0
    )


def test_psm_matches_angle_formula_and_is_finite_on_silence():
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(2, 8, 9, dtype=torch.complex128, generator=gen)
    x = torch.randn(2, 8, 9, dtype=torch.complex128, generator=gen)
    expected = s.abs() / x.abs() * torch.cos(s.angle() - x.angle())
    torch.testing.assert_close(phase_sensitive_mask(s, x), expected)
    zero = torch.zeros(3, dtype=torch.complex64)
    assert torch.all(phase_sensitive_mask(zero, zero) == 0)
    assert torch.all(ideal_amplitude_mask(zero, zero) == 0)


def test_tps_bounded():
    gen = torch.Generator().manual_seed(1)
    s = 3 * torch.randn(50, 40, dtype=torch.complex64, generator=gen)
    x = torch.randn(50, 40, dtype=torch.complex64, generator=gen)
    psm = phase_sensitive_mask(s, x)
    assert psm.min() < -1 and psm.max() > 1  # the unclamped mask really leaves [0, 1]
    tps = truncated_phase_sensitive_mask(s, x)
    assert tps.min() >= 0 and tps.max() <= 1
    torch.testing.assert_close(tps, psm.clamp(0, 1))
    custom = truncated_phase_sensitive_mask(s, x, lower=-0.5, upper=2.0)
    assert custom.min() == -0.5 and custom.max() == 2.0


def test_oracle_masks_separate_two_sources():
    length = 32_000 * 2
    harmonic = _tones(length, [220.0 * h for h in range(1, 12)], seed=5, dtype=torch.float64)
    envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * torch.arange(length) / RATE)
    sources = torch.stack([harmonic * envelope, 0.3 * _highpassed_noise((length,), seed=9)])
    mixture = sources.sum(0)
    S, X = stft(sources, center=True), stft(mixture, center=True)

    masks = {
        "wiener": wiener_like_mask(S.abs()),
        "wiener_a1": wiener_like_mask(S.abs(), alpha=1.0),
        "iam": ideal_amplitude_mask(S, X.unsqueeze(0)),
        "psm": phase_sensitive_mask(S, X.unsqueeze(0)),
        "tps": truncated_phase_sensitive_mask(S, X.unsqueeze(0)),
    }
    gains = {}
    for name, mask in masks.items():
        estimates = istft(apply_mask(mask, X.unsqueeze(0)), length)
        gains[name] = [
            _snr_db(sources[n], estimates[n]) - _snr_db(sources[n], mixture) for n in range(2)
        ]
        assert min(gains[name]) > 10.0, (name, gains[name])  # observed 13.5 to 29 dB
    # the PSM is the best real mask when the mixture phase is reused (per-bin MSE optimum)
    for name, gain in gains.items():
        assert all(g_psm >= g for g_psm, g in zip(gains["psm"], gain, strict=True)), (name, gains)

    # Wiener masks over all sources redistribute the mixture exactly
    for key in ("wiener", "wiener_a1"):
        estimates_tf = apply_mask(masks[key], X.unsqueeze(0))
        torch.testing.assert_close(estimates_tf.sum(0), X)
        torch.testing.assert_close(istft(estimates_tf, length).sum(0), istft(X, length))


# ------------------------------------------------------------------------------------------
# Mel filter bank
# ------------------------------------------------------------------------------------------


def _centres_hz(n_mels: int = 128) -> np.ndarray:
    return librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=RATE / 2, htk=False)


def _bin_freqs() -> np.ndarray:
    return np.arange(1, N_FFT // 2 + 1) * BIN_HZ  # DC dropped: index k is FFT bin k + 1


def test_mel_filterbank_shape_peaks_nonnegative():
    fb = mel_filterbank(RATE)
    assert fb.shape == (128, 1024) and fb.dtype == torch.float32
    assert torch.all(fb >= 0)
    assert mel_filterbank(RATE, drop_dc=False).shape == (128, 1025)
    assert mel_filterbank(RATE, n_mels=64).shape == (64, 1024)

    peaks = fb.double().amax(dim=1).numpy()
    centres = _centres_hz()
    half_width = np.minimum(np.diff(centres)[:-1], np.diff(centres)[1:])
    assert np.all(peaks <= 1 + 1e-6)
    # nearest FFT bin is at most half a bin from the centre
    assert np.all(peaks >= 1 - 0.5 * BIN_HZ / half_width - 1e-6)
    wide = half_width >= 10 * BIN_HZ
    assert wide.sum() > 30 and np.all(peaks[wide] > 0.95)
    assert np.median(peaks) > 0.95
    # triangles are not area-normalised (norm=None): high filters are much wider, same peak
    assert float(fb[-1].sum()) > 10 * float(fb[0].sum())


def test_mel_filterbank_cached_and_librosa_equivalent():
    dsp._mel_numpy.cache_clear()
    mel_filterbank(RATE)
    mel_filterbank(RATE, dtype=torch.float64)
    info = dsp._mel_numpy.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    ref = librosa.filters.mel(sr=RATE, n_fft=N_FFT, n_mels=128, norm=None, htk=False)
    np.testing.assert_allclose(mel_filterbank(RATE).numpy(), ref[:, 1:], rtol=1e-6, atol=1e-7)
    assert np.all(ref[:, 0] == 0)  # the dropped DC column held nothing
    # returned tensors are copies: mutating one does not poison the cache
    fb = mel_filterbank(RATE)
    fb.zero_()
    assert float(mel_filterbank(RATE).max()) > 0.99


def test_linear_to_mel_matches_numpy():
    gen = torch.Generator().manual_seed(2)
    mag = torch.rand(2, 3, N_FFT // 2, 5, generator=gen, dtype=torch.float64)
    ref = librosa.filters.mel(sr=RATE, n_fft=N_FFT, n_mels=128, norm=None, dtype=np.float64)
    expected = np.einsum("mf,...ft->...mt", ref[:, 1:], mag.numpy())
    out = linear_to_mel(mag, mel_filterbank(RATE))  # float32 bank, float64 input
    assert out.shape == (2, 3, 128, 5) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    # a complex spectrogram is reduced to its magnitude
    phase = torch.exp(1j * torch.rand(mag.shape, generator=gen, dtype=torch.float64))
    torch.testing.assert_close(linear_to_mel(mag * phase, mel_filterbank(RATE)), out)


@pytest.mark.parametrize("value", [1.0, 0.3])
def test_mel_mask_interpolates_constant(value):
    fb = mel_filterbank(RATE)
    mel_mask = torch.full((2, 128, 4), value)
    lin = mel_to_linear_mask(mel_mask, fb)
    assert lin.shape == (2, 1024, 4)
    centres, freqs = _centres_hz(), _bin_freqs()
    inside = torch.from_numpy((freqs >= centres[1]) & (freqs <= centres[128]))
    assert int(inside.sum()) > 990
    torch.testing.assert_close(lin[:, inside], torch.full_like(lin[:, inside], value))
    # outside the centre range the mask fades: below the first centre and down to 0 at Nyquist
    assert torch.all(lin[:, ~inside] < value)
    torch.testing.assert_close(lin[:, 0], torch.full((2, 4), value * BIN_HZ / centres[1]))
    torch.testing.assert_close(lin[:, -1], torch.zeros(2, 4), atol=1e-6, rtol=0)


def test_mel_mask_is_transpose_interpolation():
    gen = torch.Generator().manual_seed(4)
    fb = mel_filterbank(RATE, n_mels=96)
    mel_mask = torch.rand(3, 96, 6, generator=gen)
    expected = torch.einsum("mf,bmt->bft", fb, mel_mask)
    torch.testing.assert_close(mel_to_linear_mask(mel_mask, fb), expected)
    # interpolation stays within the Mel mask's range (partition of unity, non-negative weights)
    lin = mel_to_linear_mask(mel_mask, fb)
    assert lin.max() <= mel_mask.max() + 1e-6 and lin.min() >= 0
