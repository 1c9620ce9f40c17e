"""The LightningModule layer: optimiser groups, block processing, validation SDR, NaN guard,
oracle masks and checkpoint round trips."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_modules.dsp.spectral import chunk_samples, stft
from lightning_modules.nets import MMDenseNet
from lightning_modules.separators.oracle import OracleMaskSeparator
from lightning_modules.separators.separator import split_decay_groups
from lightning_modules.separators.spectrogram import (
    ChunkMedian,
    SpectrogramSeparator,
    framewise_snr,
    in_blocks,
)


class TinyNet(nn.Module):
    """A 1x1 conv stand-in for the MMDenseNet where only the plumbing is under test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.norm = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))


def test_weight_decay_skips_biases_and_batchnorm() -> None:
    net = MMDenseNet()
    decay, no_decay = split_decay_groups(net, 1e-5)
    assert decay["weight_decay"] == 1e-5 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    for name, parameter in net.named_parameters():
        is_conv_weight = name.endswith("weight") and parameter.ndim == 4
        assert (id(parameter) in decayed) == is_conv_weight, name
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == 268_929


@pytest.mark.parametrize("frames", [1, 63, 64, 65, 200])
def test_in_blocks_covers_every_frame_once(frames: int) -> None:
    magnitude = torch.rand(16, frames)
    calls = []

    def estimate(blocks: torch.Tensor) -> torch.Tensor:
        calls.append(blocks.shape)
        assert blocks.shape[1:] == (16, 8)
        return blocks * 2

    out = in_blocks(estimate, magnitude, context=8, blocks_per_batch=3)
    assert out.shape == magnitude.shape
    torch.testing.assert_close(out, magnitude * 2)
    assert sum(shape[0] for shape in calls) == math.ceil(frames / 8)


def test_in_blocks_keeps_blocks_independent() -> None:
    """A block's output depends only on its own frames (the context a model sees)."""
    magnitude = torch.arange(24.0).repeat(4, 1)  # (4, 24)
    out = in_blocks(lambda b: b - b.mean(dim=-1, keepdim=True), magnitude, context=8)
    for block in range(3):
        piece = out[:, block * 8 : (block + 1) * 8]
        torch.testing.assert_close(piece.mean(dim=-1), torch.zeros(4))


def test_framewise_snr_matches_definition() -> None:
    reference = torch.ones(2, 100)
    estimate = reference.clone()
    estimate[0] += 0.1  # error energy 1 vs signal energy 100 -> 20 dB
    estimate[1] -= 1.0  # error = signal -> 0 dB
    snr = framewise_snr(reference, estimate)
    torch.testing.assert_close(snr, torch.tensor([20.0, 0.0]), atol=1e-3, rtol=0)


def _batch(batch_size: int = 2, frames: int = 8, seed: int = 0) -> dict:
    """A mono batch as the data module gives it: mixture (B, 1, T), targets (B, 2, 1, T)."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randn(batch_size, 2, 1, chunk_samples(frames), generator=generator)
    return {"mixture": targets.sum(dim=1), "targets": targets}


def test_training_loss_is_mse_on_linear_magnitudes() -> None:
    model = SpectrogramSeparator(TinyNet(), context_frames=8)
    batch = _batch()
    mixture, vocals = batch["mixture"][:, 0], batch["targets"][:, 0, 0]
    expected = torch.mean((model(stft(mixture).abs()) - stft(vocals).abs()) ** 2)
    torch.testing.assert_close(model.training_loss(batch), expected)


def test_accompaniment_target_is_sum_of_the_others() -> None:
    model = SpectrogramSeparator(TinyNet(), target="accompaniment", context_frames=8, targets="all")
    targets = torch.randn(1, 4, 1, 10)
    batch = {"mixture": targets.sum(dim=1), "targets": targets}
    torch.testing.assert_close(model._target(batch), targets[:, 1:, 0].sum(dim=1))
    # from a list of sources: the mixture minus the vocals
    listed = SpectrogramSeparator(
        TinyNet(), target="accompaniment", context_frames=8, targets=["drums", "vocals"]
    )
    batch = {"mixture": targets.sum(dim=1), "targets": targets[:, [1, 0]]}
    torch.testing.assert_close(listed._target(batch), targets[:, 1:, 0].sum(dim=1))


def test_nan_loss_names_the_step() -> None:
    model = SpectrogramSeparator(TinyNet(), context_frames=8)
    batch = _batch()
    batch["mixture"][0, 0, 100] = float("nan")
    with pytest.raises(FloatingPointError, match=r"training loss is nan at epoch 0, batch 3"):
        model.training_step(batch, 3)


def test_separation_keeps_length_and_mixture_phase() -> None:
    """With an identity network the vocals estimate is the mixture itself (mixture phase,
    magnitude unchanged), for lengths that are not multiples of the hop."""

    class Identity(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model = SpectrogramSeparator(Identity(), context_frames=8)
    t = torch.arange(33_333) / 32_000
    mixture = torch.sin(2 * math.pi * 440 * t) * torch.hann_window(33_333)
    vocals = model.separate_vocals(mixture)
    assert vocals.shape == mixture.shape
    interior = slice(2048, -2048)
    torch.testing.assert_close(vocals[interior], mixture[interior], atol=1e-4, rtol=0)


def test_oracle_linear_mask_beats_mel_mask() -> None:
    """The linear Wiener mask is an upper bound of its Mel-interpolated version (Table 5.3)."""
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(32_000 * 2) / 32_000
    vocals = torch.sin(2 * math.pi * 330 * t * (1 + 0.01 * torch.sin(2 * math.pi * 5 * t)))
    accompaniment = 0.5 * torch.randn(t.shape, generator=generator)
    targets = torch.stack([vocals, accompaniment])
    mixture = targets.sum(dim=0)
    snrs = {}
    for bins in (None, 128, 32):
        model = OracleMaskSeparator(mel_bins=bins)
        estimate = model.separate_vocals(mixture, targets)
        snrs[bins] = framewise_snr(vocals, estimate).item()
    assert snrs[None] > snrs[128] > snrs[32] > framewise_snr(vocals, mixture).item()


def test_oracle_needs_the_sources() -> None:
    with pytest.raises(ValueError, match="true sources"):
        OracleMaskSeparator().separate_vocals(torch.zeros(10_000))


def test_validation_sdr_is_the_median_over_chunks_with_non_silent_vocals() -> None:
    class Identity(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model = SpectrogramSeparator(Identity(), context_frames=8)
    model.on_validation_epoch_start()
    n = chunk_samples(8)
    vocals = torch.randn(3, n, generator=torch.Generator().manual_seed(0))
    vocals[2] = 0.0  # silent vocals: excluded, as museval excludes such frames
    accompaniment = torch.stack([0.1 * vocals[0], 1.0 * vocals[1], torch.randn(n)])
    targets = torch.stack([vocals, accompaniment], 1)[:, :, None]  # (3, 2, 1, n)
    batch = {"mixture": targets.sum(dim=1), "targets": targets}
    logged = {}
    model.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    model._trainer = type("T", (), {"world_size": 1})()
    model.validation_step(batch, 0)
    model.on_validation_epoch_end()
    # Identity network: estimate = mixture, so SNR = 10 log10(|v|^2 / |a|^2): 20 dB and 0 dB.
    assert logged["val/sdr"].item() == pytest.approx(10.0, abs=0.2)


def test_chunk_median_counts_chunks_repeated_across_ranks_once() -> None:
    """What ``val/sdr`` sees under DDP: the states of all ranks concatenated (torchmetrics'
    gather), where the distributed sampler repeated chunk 0 to even out two ranks."""
    values = torch.tensor([1.0, 2.0, 4.0, 100.0, math.nan])
    gathered = ChunkMedian()
    gathered.update(values[[0, 2, 4]], torch.tensor([0, 2, 4]))  # rank 0
    gathered.update(values[[1, 3, 0]], torch.tensor([1, 3, 0]))  # rank 1: chunk 0 again
    # every chunk once, the silent (NaN) one left out, the middle pair averaged: (2 + 4) / 2
    assert gathered.compute().item() == 3.0
    single = ChunkMedian()
    single.update(values)  # one device, no indices: the same median, nothing dropped
    assert single.compute().item() == values.nanquantile(0.5).item() == 3.0


@pytest.mark.parametrize("mask", ["wf", "tps"])
def test_oracle_mask_targets_are_bounded(mask: str) -> None:
    model = SpectrogramSeparator(TinyNet(), objective="mask", mask=mask, context_frames=8)
    batch = _batch(batch_size=3, seed=1)
    mixture, target = stft(batch["mixture"]), stft(batch["targets"][:, 0])
    oracle = model.oracle_mask(target, mixture)
    assert oracle.shape == mixture.shape
    assert oracle.min() >= 0 and oracle.max() <= 1
    if mask == "tps":  # anti-phase bins are clamped at 0, so TPS reaches both bounds
        assert (oracle == 0).any() and (oracle == 1).any()


def test_mask_objectives_estimate_mask_times_mixture() -> None:
    class Half(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, 0.5)

    magnitude = torch.rand(2, 16, 8)
    for objective in ("mask", "learned_mask"):
        model = SpectrogramSeparator(Half(), objective=objective, context_frames=8)
        torch.testing.assert_close(model.estimate_magnitude(magnitude), 0.5 * magnitude)
    with pytest.raises(ValueError, match="objective must be one of"):
        SpectrogramSeparator(Half(), objective="masks")


def test_joint_masks_split_the_mixture_between_the_heads() -> None:
    from lightning_modules.nets import MultiHeadMMDenseNet
    from lightning_modules.separators.multitask import MultiTaskSeparator

    net = MultiHeadMMDenseNet(second_head="out_block")
    model = MultiTaskSeparator(net, joint_mask=True, context_frames=8).eval()
    magnitude = torch.rand(1, 1024, 8)
    with torch.no_grad():
        heads = model.heads(magnitude)
        joint = model.joint_magnitudes(heads, magnitude)
    torch.testing.assert_close(joint.sum(dim=-3), magnitude, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(magnitude), joint[..., 0, :, :])
    with pytest.raises(ValueError, match="joint mask"):
        MultiTaskSeparator(net, joint_mask=True, objective="mask")


def test_chimera_validates_its_weight() -> None:
    from lightning_modules.nets import MultiHeadMMDenseNet
    from lightning_modules.separators.chimera import ChimeraSeparator

    net = MultiHeadMMDenseNet(embedding_split="pre_block")
    with pytest.raises(ValueError, match="alpha"):
        ChimeraSeparator(net, alpha=1.5)
    with pytest.raises(ValueError, match="clustering"):
        ChimeraSeparator(net, clustering="kmeans")


def test_no_output_function_and_absolute_value_are_different_models() -> None:
    """Table 4.2: without an output function the raw output is trained (negative bins are
    mirrored only to reconstruct audio), so "none" and "abs" must not train the same thing."""

    class Signed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, -1.0)

    model = SpectrogramSeparator(Signed(), context_frames=8)
    mixture = torch.ones(1, 4, 8, dtype=torch.complex64)
    target = torch.ones(1, 4, 8, dtype=torch.complex64)
    assert model.objective_loss(model(mixture.abs()), mixture, target).item() == pytest.approx(4.0)
    torch.testing.assert_close(model.estimate_magnitude(mixture.abs()), torch.ones(1, 4, 8))


def test_training_only_heads_are_not_computed_at_inference() -> None:
    from lightning_modules.nets import MultiHeadMMDenseNet
    from lightning_modules.separators.chimera import ChimeraSeparator

    model = ChimeraSeparator(MultiHeadMMDenseNet(embedding_split="pre_block"), context_frames=8)
    calls = []
    model.net.embedding.register_forward_hook(lambda *args: calls.append(1))
    magnitude = torch.rand(1, 1024, 8)
    model.train()
    model(magnitude)
    assert calls == [1]
    model.eval()
    with torch.no_grad():
        model(magnitude)
    assert calls == [1]  # the embedding head did not run


# -- issue #11: N targets, channels, other STFTs, IRM oracles ---------------------------------

SAMSNET = {"n_fft": 4096, "hop": 1024, "window": "hamming", "keep_dc": True}


class ChannelNet(nn.Module):
    """A 1x1 conv from ``in_channels`` to ``out_channels`` maps, declaring both as the
    MMDenseNet does; ``value`` fixes its output (a constant mask)."""

    def __init__(self, in_channels: int, out_channels: int, value: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.value = in_channels, out_channels, value
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv(x))
        return out if self.value is None else torch.full_like(out, self.value)


def _stereo_batch(n_targets: int = 4, batch_size: int = 2, frames: int = 4) -> dict:
    generator = torch.Generator().manual_seed(5)
    samples = chunk_samples(frames, 4096, 1024)
    targets = torch.randn(batch_size, n_targets, 2, samples, generator=generator)
    return {"mixture": targets.sum(dim=1), "targets": targets}


def _stft(x: torch.Tensor, center: bool = False) -> torch.Tensor:
    return stft(x, 4096, 1024, center, window="hamming", keep_dc=True)


@pytest.mark.parametrize("objective", ["spectrogram", "learned_mask", "mask"])
def test_multi_target_loss_is_the_objectives_mse_averaged_over_targets(objective: str) -> None:
    model = SpectrogramSeparator(
        ChannelNet(2, 8),
        objective=objective,
        multi_target=True,
        context_frames=4,
        stft=SAMSNET,
        channels=2,
        targets="all",
    )
    batch = _stereo_batch()
    mixture, targets = _stft(batch["mixture"]), _stft(batch["targets"])  # (B, [4,] 2, 2049, 4)
    output = model.net(mixture.abs()).unflatten(1, (4, 2))  # target-major maps
    assert model(mixture.abs()).shape == (2, 4, 2, 2049, 4)
    if objective == "spectrogram":
        expected = (output - targets.abs()).square().mean()
    elif objective == "learned_mask":
        expected = (output * mixture.abs()[:, None] - targets.abs()).square().mean()
    else:  # Wiener-like masks of the four sources, which add up to the mixture
        power = targets.abs().square()
        oracle = (power + 1e-8 / 4) / (power.sum(dim=1, keepdim=True) + 1e-8)
        expected = (output - oracle).square().mean()
    torch.testing.assert_close(model.training_loss(batch), expected)


def test_multi_target_masks_leave_the_rest_of_a_partial_target_set() -> None:
    model = SpectrogramSeparator(
        ChannelNet(1, 2), objective="mask", multi_target=True, targets=["vocals", "drums"]
    )
    sources = torch.rand(1, 4, 1, 8, 3, dtype=torch.complex64)
    masks = model.target_masks(sources[:, :2], sources.sum(dim=1))
    power = sources.abs().square()
    rest = (sources[:, 2] + sources[:, 3]).abs().square()
    expected = (power[:, :2] + 1e-8 / 3) / (power[:, :2].sum(dim=1) + rest + 1e-8)[:, None]
    torch.testing.assert_close(masks, expected)
    assert float(masks.sum(dim=1).max()) < 1.0  # the rest keeps its share


def test_multi_target_separation_gives_every_target_in_the_sets_order() -> None:
    model = SpectrogramSeparator(
        ChannelNet(2, 8, value=0.25),
        objective="learned_mask",
        multi_target=True,
        context_frames=4,
        stft=SAMSNET,
        channels=2,
        targets="all",
    )
    assert model.output_targets == ("vocals", "drums", "bass", "other")
    mixture = torch.randn(2, 44100, generator=torch.Generator().manual_seed(1))
    estimates = model.separate(mixture)
    assert estimates.shape == (4, 2, 44100)
    # a constant 0.25 mask with the mixture's phase, the DC bin kept: exact quarters
    torch.testing.assert_close(estimates, 0.25 * mixture.expand(4, -1, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.separate_vocals(mixture), estimates[0])


def test_stereo_single_target_model_completes_the_vocals_pair() -> None:
    model = SpectrogramSeparator(ChannelNet(2, 2), context_frames=8, channels=2)
    assert model.output_targets == ("vocals", "accompaniment")
    mixture = torch.randn(2, 20_000, generator=torch.Generator().manual_seed(2))
    estimates = model.separate(mixture)
    assert estimates.shape == (2, 2, 20_000)
    torch.testing.assert_close(estimates[1], mixture - estimates[0])
    batch = {"mixture": torch.randn(3, 2, chunk_samples(8)), "targets": None}
    batch["targets"] = torch.stack([batch["mixture"] * 0.5, batch["mixture"] * 0.5], dim=1)
    assert model.training_loss(batch).ndim == 0


def test_the_rows_stft_runs_through_the_model() -> None:
    class Identity(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model = SpectrogramSeparator(Identity(), context_frames=4, stft=SAMSNET, rate=44100)
    assert model.bins == 2049
    mixture = torch.randn(1, 30_000, generator=torch.Generator().manual_seed(3)) + 0.3
    # the magnitude with the mixture's phase, the DC bin kept: everything comes back
    torch.testing.assert_close(model.separate_vocals(mixture), mixture, atol=1e-4, rtol=0)


def test_networks_must_take_the_datas_channels_and_give_every_target() -> None:
    with pytest.raises(ValueError, match="needs in_channels=2, out_channels=2"):
        SpectrogramSeparator(MMDenseNet(), channels=2)
    with pytest.raises(ValueError, match="4 target.* needs in_channels=1, out_channels=4"):
        SpectrogramSeparator(MMDenseNet(), multi_target=True, targets="all")
    with pytest.raises(ValueError, match="model: channels must be 1"):
        SpectrogramSeparator(TinyNet(), channels=4)
    with pytest.raises(ValueError, match="model: STFT window 'hann2'"):
        SpectrogramSeparator(TinyNet(), stft={"window": "hann2"})
    from lightning_modules.nets import MultiHeadMMDenseNet
    from lightning_modules.separators.chimera import ChimeraSeparator

    with pytest.raises(ValueError, match="mono single-target"):
        ChimeraSeparator(
            MultiHeadMMDenseNet(embedding_split="pre_block"), multi_target=True, targets="all"
        )


def test_without_validation_the_training_loss_selects_and_schedules() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    model = SpectrogramSeparator(TinyNet(), context_frames=8)
    callback = ModelCheckpoint(monitor="val/loss")
    model._trainer = SimpleNamespace(
        datamodule=SimpleNamespace(has_validation=False), checkpoint_callbacks=[callback]
    )
    model.setup("fit")
    assert callback.monitor == "train/loss_epoch"
    assert model.configure_optimizers()["lr_scheduler"]["monitor"] == "train/loss_epoch"
    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(has_validation=True))
    assert model.configure_optimizers()["lr_scheduler"]["monitor"] == "val/loss"


def _four_sources(channels: int = 2, seconds: float = 2.0) -> torch.Tensor:
    """(4, C, T): a tone, noise bursts, a low tone and noise, one per MUSDB source."""
    generator = torch.Generator().manual_seed(7)
    t = torch.arange(int(16000 * seconds)) / 16000
    sources = torch.stack(
        [
            torch.sin(2 * math.pi * 440 * t),
            torch.randn(t.shape, generator=generator) * (torch.sin(2 * math.pi * 2 * t) > 0),
            0.8 * torch.sin(2 * math.pi * 80 * t),
            0.3 * torch.randn(t.shape, generator=generator),
        ]
    )
    gains = torch.tensor([1.0, 0.5])[:channels]
    return sources[:, None] * gains[:, None]


def test_irm_oracle_separates_every_target_and_they_add_up_to_the_mixture() -> None:
    sources = _four_sources()
    mixture = sources.sum(dim=0)
    stft_dc = {"n_fft": 1024, "hop": 256, "window": "hamming", "keep_dc": True}
    model = OracleMaskSeparator(mask="irm", rate=16000, targets="all", channels=2, stft=stft_dc)
    assert model.output_targets == ("vocals", "drums", "bass", "other")
    estimates = model.separate(mixture, sources)
    assert estimates.shape == (4, 2, mixture.shape[-1])
    # the masks add up to one and the DC bin is kept: the estimates add up to the mixture
    torch.testing.assert_close(estimates.sum(dim=0), mixture, atol=1e-4, rtol=0)
    for i in range(4):  # every target closer to its reference than the mixture is
        snr = framewise_snr(sources[i].flatten(), estimates[i].flatten())
        assert snr > framewise_snr(sources[i].flatten(), mixture.flatten()) + 3
    # the IRM is the Wiener-like mask with exponent 1
    wf1 = OracleMaskSeparator(alpha=1.0, rate=16000, targets="all", channels=2, stft=stft_dc)
    torch.testing.assert_close(wf1.separate(mixture, sources), estimates)


def test_oracle_of_a_partial_target_set_keeps_the_rest_out() -> None:
    sources = _four_sources(channels=1)
    mixture = sources.sum(dim=0)
    listed = OracleMaskSeparator(mask="irm", rate=16000, targets=["bass", "vocals"])
    estimates = listed.separate(mixture, sources[[2, 0]])
    assert estimates.shape == (2, 1, mixture.shape[-1])
    snr = framewise_snr(sources[2].flatten(), estimates[0].flatten())
    assert snr > 10  # the bass tone, not the bass plus the drums' and other's share
    with pytest.raises(ValueError, match="alpha applies to mask 'wf'"):
        OracleMaskSeparator(mask="irm", alpha=3.0)
    with pytest.raises(ValueError, match="mask must be one of"):
        OracleMaskSeparator(mask="ibm")


def test_thesis_oracle_completes_the_vocals_pair_in_every_layout() -> None:
    sources = _four_sources(channels=1)
    pair = torch.stack([sources[0], sources[1:].sum(dim=0)])  # (2, 1, T)
    mixture = pair.sum(dim=0)
    model = OracleMaskSeparator(rate=16000)
    estimates = model.separate(mixture, pair)
    assert estimates.shape == (2, 1, mixture.shape[-1])
    torch.testing.assert_close(estimates[1], mixture - estimates[0])
    torch.testing.assert_close(model.separate_vocals(mixture[0], pair[:, 0]), estimates[0, 0])
