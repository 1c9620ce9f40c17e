"""Small separators for the export, streaming and latency tests: real MMDenseNet topology
(three bands, every block), two maps per layer, so an export takes seconds."""

from __future__ import annotations

from pathlib import Path

import lightning
import torch
import yaml
from torch import nn

from lightning_modules.nets import BandConfig, MMDenseNet
from lightning_modules.separators.spectrogram import SpectrogramSeparator

TINY_BAND = BandConfig(growth_rates=(2,) * 7, layers=(1,) * 7)


def randomise_statistics_(module: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm running statistics and affine parameters away from identity, so that a
    wrongly folded or dropped BN changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) * 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=generator))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=generator))
                m.bias.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
    return module


def tiny_separator(net_channels: tuple[int, int] = (1, 1), **kwargs) -> SpectrogramSeparator:
    """A tiny thesis-topology separator; ``net_channels``: the net's (in, out) maps, for the
    stereo and multi-target settings the separator checks them against."""
    torch.manual_seed(0)
    in_channels, out_channels = net_channels
    net = MMDenseNet(
        low=TINY_BAND,
        high=TINY_BAND,
        full=TINY_BAND,
        in_channels=in_channels,
        out_channels=out_channels,
    )
    kwargs.setdefault("context_frames", 8)
    return randomise_statistics_(SpectrogramSeparator(net, **kwargs)).eval()


def tiny_final_separator(pruned: bool = False) -> SpectrogramSeparator:
    """The final model's kind at toy size: Mel front end (32 bins), full band only, no
    down-sampling convs, bottleneck layers, Wiener-like mask; optionally with PSP and about a
    third of its structures below the threshold."""
    from lightning_modules.nets.pruning import set_threshold
    from lightning_modules.separators.psp import PSPConfig

    torch.manual_seed(0)
    net = MMDenseNet(
        low=None,
        high=None,
        full=BandConfig(growth_rates=(4,) * 7, layers=(2,) * 7),
        output_activation="sigmoid",
        downsample_conv=False,
        bottleneck_compression=True,
    )
    separator = SpectrogramSeparator(
        net,
        objective="mask",
        mel_bins=32,
        context_frames=8,
        pruning=PSPConfig() if pruned else None,
    )
    if pruned:
        set_threshold(separator.net, 0.35)
    return randomise_statistics_(separator).eval()


def tiny_checkpoint(path: Path, frames: int = 8) -> Path:
    """A checkpoint as the suite's LightningCLI writes it (class path and net config in the
    hyper-parameters), of a tiny baseline, without training."""
    from lightning_modules.cli import make_cli

    config = yaml.safe_load(Path("experiments/mmdensenet/baseline.yaml").read_text())
    config["trainer"] = {"logger": False, "callbacks": [], "enable_checkpointing": False}
    config["data"]["context_frames"] = frames
    band = {"growth_rates": [2] * 7, "layers": [1] * 7}
    config["model"]["init_args"]["net"]["init_args"].update(low=band, high=band, full=band)
    model = randomise_statistics_(make_cli(config, run=False).model)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


def checkpoint_with(
    source: Path, path: Path, model: dict | None = None, data: dict | None = None
) -> Path:
    """A copy of checkpoint ``source`` recording another signal setting: ``model`` added to
    the model's hyper-parameters, ``data`` as the DataModule's (``stft``, ``channels``,
    ``targets``), as checkpoints of the companion papers' rows record them. Only the inference
    tools' checks read these; the model itself is never built from the copy."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    state["hyper_parameters"] = {**state["hyper_parameters"], **(model or {})}
    if data is not None:
        state["datamodule_hyper_parameters"] = data
    torch.save(state, path)
    return path
