"""Parameters and multiply-accumulates of one forward pass, for the tables' efficiency columns.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` at batch 1 and taken as
FLOPs / 2 (the counter reports 2 FLOPs per multiply-accumulate of convolutions and matmuls;
element-wise ops such as BatchNorm and ReLU are not counted, as in the thesis's MAC figures).
Usage: ``python -m lightning_modules.inference.stats --config EXP.yaml --frames N`` prints one
JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from datamodules.conventions import N_FFT
from lightning_modules.nets.pruning import has_psp, remove_pruned_channels, sparsity
from lightning_modules.separators.checkpoint import load_separator


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(net: nn.Module, frames: int, bins: int = N_FFT // 2, in_channels: int = 1) -> int:
    """MACs of one forward pass of ``net`` on a (1, in_channels, bins, frames) input."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, in_channels, bins, frames))
    finally:
        net.train(was_training)
    return counter.get_total_flops() // 2


def net_from_config(net_config: dict) -> nn.Module:
    """Instantiate a network from its ``class_path``/``init_args`` config."""
    parser = ArgumentParser()
    parser.add_argument("--net", type=nn.Module)
    return parser.instantiate(parser.parse_object({"net": net_config})).net


def network_stats(config: dict, frames: int) -> dict[str, int]:
    """Parameters and MACs of the network of an experiment config (``model.init_args.net``),
    at inference: training-only heads (accompaniment, embeddings) are not counted. The input
    has ``model.init_args.mel_bins`` bins with a Mel front end, else the 1024 linear ones."""
    net_config = config["model"].get("init_args", {}).get("net")
    if net_config is None:
        raise ValueError(
            f"{config['model']['class_path']} has no network to count (no model.init_args.net)"
        )
    net = net_from_config(net_config)
    if hasattr(net, "inference_net"):
        net = net.inference_net()
    bins = config["model"]["init_args"].get("mel_bins") or N_FFT // 2
    return {"params": count_parameters(net), "macs": count_macs(net, frames, bins)}


def trained_network_stats(checkpoint: str | Path, frames: int) -> dict[str, float]:
    """Parameters, MACs and sparsity of a trained model's inference network, for what depends
    on training: a PSP network is counted after ``remove_pruned_channels`` (its pruned input
    channels physically removed), and ``sparsity`` is pruned / all structures (0 without PSP).
    """
    model = load_separator(checkpoint)
    net = model.net
    psp = has_psp(net)
    fraction = sparsity(net) if psp else 0.0
    if psp:
        net = remove_pruned_channels(net)
    elif hasattr(net, "inference_net"):
        net = net.inference_net()
    front_end = getattr(model, "front_end", None)
    bins = front_end.n_mels if front_end is not None else N_FFT // 2
    return {
        "params": count_parameters(net),
        "macs": count_macs(net, frames, bins),
        "sparsity": fraction,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment YAML with model.init_args.net")
    parser.add_argument("--frames", type=int, default=64, help="STFT frames of the input")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    try:
        print(json.dumps(network_stats(config, args.frames)))
    except ValueError as error:
        raise SystemExit(f"error: {args.config}: {error}") from error


if __name__ == "__main__":
    main()
