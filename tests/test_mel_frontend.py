"""Chapter-5 LightningModule options: the test-time context (Table 5.1) and the Mel front end
with Mel Wiener-like masks, SA re-training and Mel deep clustering (Tables 5.4 and 5.5)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_modules.dsp.spectral import (
    chunk_samples,
    linear_to_mel,
    mel_filterbank,
    mel_to_linear_mask,
    stft,
    wiener_like_mask,
)
from lightning_modules.inference.stats import network_stats
from lightning_modules.nets import MMDenseNet, MultiHeadMMDenseNet
from lightning_modules.nets.mmdensenet import BandConfig
from lightning_modules.separators.chimera import ChimeraSeparator
from lightning_modules.separators.losses import deep_clustering_loss
from lightning_modules.separators.spectrogram import SpectrogramSeparator

MEL_FULL = BandConfig(growth_rates=(18,) * 7, layers=(4,) * 7)


class Recorder(nn.Module):
    """Outputs a constant 0.5 (a mask) and records the input shapes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return torch.full_like(x, 0.5)


def _batch(batch_size: int = 2, frames: int = 8, seed: int = 0) -> dict:
    """A mono batch as the data module gives it: mixture (B, 1, T), targets (B, 2, 1, T)."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randn(batch_size, 2, 1, chunk_samples(frames), generator=generator)
    return {"mixture": targets.sum(dim=1), "targets": targets}


# -- test-time context (Table 5.1) ----------------------------------------------------------------


@pytest.mark.parametrize(("test_context", "expected"), [(None, 64), (16, 16), (8, 8)])
def test_full_track_test_runs_in_blocks_of_the_test_context(test_context, expected) -> None:
    net = Recorder()
    model = SpectrogramSeparator(
        net, objective="mask", context_frames=64, test_context_frames=test_context
    )
    mixture = torch.randn(512 * 100)  # 101 frames: the last block is zero-padded
    model.separate_vocals(mixture)
    assert {shape[-1] for shape in net.seen} == {expected}
    assert sum(shape[0] for shape in net.seen) == math.ceil(101 / expected)
    assert model.context_frames == 64  # training context unchanged


def test_test_only_needs_weights_and_is_not_trained(tmp_path) -> None:
    with pytest.raises(ValueError, match="test_only needs init_from"):
        SpectrogramSeparator(Recorder(), test_only=True)
    with pytest.raises(ValueError, match="test_context_frames"):
        SpectrogramSeparator(Recorder(), test_context_frames=0)
    trained = SpectrogramSeparator(MMDenseNet(), context_frames=8)
    with torch.no_grad():
        trained.net.output_conv.bias.fill_(0.25)
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": trained.state_dict()}, path)
    retest = SpectrogramSeparator(
        MMDenseNet(), context_frames=8, test_context_frames=16, init_from=str(path), test_only=True
    )
    assert retest.trainable is False and SpectrogramSeparator.trainable is True
    retest.setup("test")  # what the runner's trainer.test does first
    torch.testing.assert_close(retest.net.output_conv.bias, torch.tensor([0.25]))
    # A trainable model does not load init_from for testing: its own best checkpoint wins.
    fresh = SpectrogramSeparator(MMDenseNet(), context_frames=8, init_from=str(path))
    fresh.setup("test")
    assert fresh.net.output_conv.bias.item() == 0.0


# -- Mel front end (Tables 5.4, 5.5) --------------------------------------------------------------


def test_network_sees_mel_magnitudes_and_its_mel_mask_is_interpolated() -> None:
    net = Recorder()
    model = SpectrogramSeparator(net, objective="mask", mel_bins=128, context_frames=8)
    magnitude = torch.rand(2, 1024, 8)
    estimate = model.estimate_magnitude(magnitude)
    assert net.seen == [(2, 1, 128, 8)]
    bank = mel_filterbank(32000, 128)
    expected = mel_to_linear_mask(torch.full((2, 128, 8), 0.5), bank) * magnitude
    torch.testing.assert_close(estimate, expected)
    # Between the first and last filter centres the interpolated constant mask stays 0.5.
    torch.testing.assert_close(estimate[:, 100:900], 0.5 * magnitude[:, 100:900])


def test_mel_mask_objective_is_wiener_mask_of_the_true_mel_spectrograms() -> None:
    model = SpectrogramSeparator(Recorder(), objective="mask", mel_bins=64, context_frames=8)
    batch = _batch()
    mixture, vocals = stft(batch["mixture"][:, 0]), stft(batch["targets"][:, 0, 0])
    bank = mel_filterbank(32000, 64)
    mel = linear_to_mel(torch.stack([vocals.abs(), (mixture - vocals).abs()], dim=-3), bank)
    oracle = wiener_like_mask(mel, alpha=2.0)[..., 0, :, :]
    torch.testing.assert_close(model.oracle_mask(vocals, mixture), oracle)
    expected = torch.mean((0.5 - oracle) ** 2)
    torch.testing.assert_close(model.training_loss(batch), expected)


def test_sa_retraining_compares_interpolated_mask_times_mixture_with_the_linear_target() -> None:
    model = SpectrogramSeparator(Recorder(), objective="learned_mask", mel_bins=128)
    batch = _batch()
    mixture, vocals = stft(batch["mixture"][:, 0]), stft(batch["targets"][:, 0, 0])
    linear_mask = mel_to_linear_mask(torch.full((2, 128, 8), 0.5), mel_filterbank(32000, 128))
    expected = torch.mean((linear_mask * mixture.abs() - vocals.abs()) ** 2)
    torch.testing.assert_close(model.training_loss(batch), expected)


def test_mel_front_end_refuses_what_it_cannot_do() -> None:
    for kwargs in (
        {"objective": "spectrogram"},
        {"objective": "mask", "mask": "tps"},
        {"objective": "mask", "normalize_input": True},
    ):
        with pytest.raises(ValueError, match="Mel front end"):
            SpectrogramSeparator(Recorder(), mel_bins=128, **kwargs)
    net = MultiHeadMMDenseNet(embedding_split="pre_block")
    with pytest.raises(ValueError, match="attractor"):
        ChimeraSeparator(net, clustering="attractor", objective="mask", mel_bins=128)


def test_mel_deep_clustering_uses_mel_affinities() -> None:
    net = MultiHeadMMDenseNet(
        low=None, high=None, full=MEL_FULL, embedding_split="pre_block", output_activation="sigmoid"
    )
    model = ChimeraSeparator(net, alpha=0.5, objective="mask", mel_bins=128, context_frames=8)
    batch = _batch()
    mixture, vocals = stft(batch["mixture"][:, 0]), stft(batch["targets"][:, 0, 0])
    heads = model.heads(mixture.abs())
    assert heads["embedding"].shape == (2, 20, 128, 8)
    embeddings, labels, weights = model.clustering_inputs(mixture, vocals, heads["embedding"])
    assert embeddings.shape == (2, 128 * 8, 20) and weights.shape == (2, 128 * 8)
    bank = mel_filterbank(32000, 128)
    mel_vocals = linear_to_mel(vocals.abs(), bank)
    mel_rest = linear_to_mel((mixture - vocals).abs(), bank)
    torch.testing.assert_close(labels[..., 0], (mel_vocals >= mel_rest).flatten(1).float())
    loss = deep_clustering_loss(embeddings, labels, weights)
    assert torch.isfinite(loss) and 0 <= loss.item() <= 4


def test_stats_count_a_mel_network_on_mel_bins() -> None:
    net = {
        "class_path": "lightning_modules.nets.MMDenseNet",
        "init_args": {
            "low": None,
            "high": None,
            "full": {"growth_rates": [18] * 7, "layers": [4] * 7},
        },
    }
    mel = network_stats({"model": {"init_args": {"net": net, "mel_bins": 128}}}, 8)
    linear = network_stats({"model": {"init_args": {"net": net}}}, 8)
    assert mel["params"] == linear["params"] == 257_953
    assert linear["macs"] == pytest.approx(8 * mel["macs"], rel=1e-3)  # 1024 vs 128 bins


# -- figures 5.2 and 5.3 ---------------------------------------------------------------------------


def test_mel_filterbank_figure_and_oracle_mask_figure_are_written(tmp_path) -> None:
    from lightning_modules.evaluation.figures import mel_filterbank_figure
    from lightning_modules.separators.oracle import OracleMaskSeparator

    path = mel_filterbank_figure(mel_filterbank(32000, 128), 32000, tmp_path / "mel.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    generator = torch.Generator().manual_seed(0)
    targets = torch.randn(4, 1, 32000 * 2, generator=generator)  # four MUSDB sources, 2 s
    batch = {"mixture": targets.sum(0), "targets": targets, "name": "t"}
    model = OracleMaskSeparator(mel_bins=128, targets="all")
    path = model.plot_masks(batch, tmp_path / "oracle_masks.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
