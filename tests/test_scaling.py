"""Thesis 4.1.4-4.1.5: the single-excerpt overfit protocol, log scales, input normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from datamodules.musdb_datamodule import MUSDBDataModule
from datamodules.sampler import ExcerptSampler
from lightning_modules.dsp.spectral import stft
from lightning_modules.separators.spectrogram import LOG_EPS, SpectrogramSeparator, input_statistics


def test_excerpt_sampler_without_shift_repeats_one_chunk() -> None:
    audio = torch.arange(4 * 100, dtype=torch.float32).reshape(4, 100)
    sampler = ExcerptSampler(audio, chunk=40, shift=0.0)
    batch = sampler.sample(3, torch.Generator().manual_seed(0))
    assert batch.shape == (3, 4, 1, 40)  # (batch, sources, channels, chunk)
    for example in batch:
        torch.testing.assert_close(example[:, 0], audio[:, :40])  # coherent sources, unit gain


def test_excerpt_sampler_shift_bounds_the_start() -> None:
    audio = torch.arange(100, dtype=torch.float32).repeat(2, 1)
    sampler = ExcerptSampler(audio, chunk=40, shift=0.25)
    starts = sampler.sample(200, torch.Generator().manual_seed(0))[:, 0, 0, 0]
    assert starts.min() == 0 and starts.max() == 10  # 0.25 * 40 samples of jitter
    with pytest.raises(ValueError, match="fewer than one chunk"):
        ExcerptSampler(audio[:, :30], chunk=40)


def test_overfit_datamodule_serves_one_excerpt_everywhere(synthetic_dm_kwargs: dict) -> None:
    data = MUSDBDataModule(**synthetic_dm_kwargs, overfit={"seconds": 1.0, "shift": 0.0})
    data.setup("fit")
    excerpt = data.overfit_excerpt()
    assert excerpt.lengths.tolist() == [data.hparams.rate]  # 1 s
    first, second = (next(iter(data.train_dataloader())) for _ in range(2))
    torch.testing.assert_close(first["mixture"], second["mixture"])
    assert len(data.train_dataloader()) == 1
    (track,) = list(data.test_dataloader())
    assert "excerpt" in track["name"] and track["mixture"].shape[-1] == data.hparams.rate
    chunks = data.validation_chunks()["mixture"]
    torch.testing.assert_close(chunks[0], track["mixture"][..., : data.chunk])
    with pytest.raises(ValueError, match="not a training track"):
        MUSDBDataModule(**synthetic_dm_kwargs, overfit={"track": "nope"}).overfit_excerpt()


class Constant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.value)


def test_log_output_is_a_log_magnitude_trained_in_the_log_domain() -> None:
    model = SpectrogramSeparator(Constant(math.log(2.0)), output_scale="log", context_frames=8)
    mixture = torch.rand(1, 16, 8) + 1
    torch.testing.assert_close(
        model.estimate_magnitude(mixture), torch.full_like(mixture, 2.0 - LOG_EPS)
    )
    target = torch.full((1, 16, 8), 4.0, dtype=torch.complex64)
    loss = model.objective_loss(model(mixture), mixture.to(torch.complex64), target)
    expected = (math.log(2.0) - math.log(4.0 + LOG_EPS)) ** 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_log_mask_output_is_made_linear_before_the_sigmoid() -> None:
    model = SpectrogramSeparator(
        Constant(0.0), objective="learned_mask", output_scale="log", context_frames=8
    )
    mixture = torch.ones(1, 16, 8)
    expected = torch.sigmoid(torch.exp(torch.tensor(0.0)))
    torch.testing.assert_close(
        model.estimate_magnitude(mixture), torch.full_like(mixture, expected)
    )


def test_input_statistics_are_per_frequency_mean_and_std() -> None:
    generator = torch.Generator().manual_seed(0)
    mixtures = [torch.randn(8000, generator=generator), torch.randn(12000, generator=generator)]
    mean, std = input_statistics(mixtures)
    frames = torch.cat([stft(m).abs() for m in mixtures], dim=-1).double().numpy()
    np.testing.assert_allclose(mean.numpy(), frames.mean(axis=-1), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), frames.std(axis=-1), rtol=1e-4)


def test_normalisation_feeds_the_net_standardised_input() -> None:
    seen = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return torch.zeros_like(x)

    model = SpectrogramSeparator(Spy(), normalize_input=True, context_frames=8)
    mean, std = torch.rand(1024) + 1, torch.rand(1024) + 0.5
    model.input_mean.copy_(mean)
    model.input_std.copy_(std)
    with torch.no_grad():
        model.output_bias.copy_(mean)
    magnitude = mean[:, None] + 2 * std[:, None] * torch.ones(1, 1024, 8)
    output = model(magnitude)
    torch.testing.assert_close(seen[0], torch.full((1, 1, 1024, 8), 2.0))
    torch.testing.assert_close(output, mean[:, None].expand(1, 1024, 8))  # zeros * gain + bias
    assert {"input_mean", "input_std"} <= set(model.state_dict())  # kept for inference
