"""Parameters and multiply-accumulates (MACs) of a network, for ``make stats`` and the tables'
efficiency columns.

**Parameters** are counted from the module's tensors, without running it: a network that takes
more than one input (side information beside the spectrogram) or whose forward pass costs
hundreds of G MACs is counted as cheaply as any other. Shared tensors count once.

**MACs** of one forward pass at batch 1, only when asked (``macs=True``). The convention:
  - convolutions (transposed too), linear layers and matrix products (``torch.matmul``, ``mm``,
    ``bmm``, ``einsum``): one MAC per multiply-accumulate of the product, i.e.
    ``torch.utils.flop_counter.FlopCounterMode``'s FLOPs / 2, as the thesis's MAC figures;
  - attention (``scaled_dot_product_attention``, ``nn.MultiheadAttention``): its projections as
    linear layers, plus ``Q K^T`` and ``A V``: ``B H L S (E + E_v)`` for L queries, S keys,
    per-head widths E and E_v (CPU's fused kernels, which the counter does not know, included);
  - recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells): per time step, layer
    and direction, ``gates x (input x hidden + hidden x hidden)`` MACs, gates = 4 for an LSTM,
    3 for a GRU, 1 for an RNN (an LSTM with ``proj_size`` P: ``4 H (I + P) + H P``), where the
    input of layer l > 0 is the previous layer's output (``directions x hidden``). Counted
    analytically from each recurrent module's input, because the counter misses the fused
    CPU (oneDNN) and cuDNN kernels entirely (a BLSTM chimera net at 100 frames: 0.300 G counted
    of 2.421 G); where a backend decomposes the layer into matmuls, those are replaced by the
    same analytic number, so the count does not depend on the backend;
  - not counted: element-wise work (BatchNorm, ReLU, softmax, the gates' sigmoids and products,
    bias additions), as in the thesis.

MACs are counted on the ``meta`` device: shapes are propagated, nothing is computed, so a
Sams-Net-sized forward (about 285 G MACs) takes no time and no memory. A network that cannot
run on meta tensors (data-dependent control flow) is counted on real zeros instead.

The input is the row's own: ``(1, channels, bins, frames)`` zeros with bins = the Mel bins of a
Mel front end, else ``STFTConfig.bins`` of ``data.stft``, and channels = ``data.channels``. A
network whose forward takes more than one input (or another layout) defines
``example_inputs(frames, bins, channels) -> tuple[Tensor, ...]``; without it its MACs are
refused (its parameters are not).

Usage: ``python -m lightning_modules.inference.stats --config EXP.yaml --frames N
[--params-only]`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.flop_counter import FlopCounterMode

from datamodules.conventions import N_FFT
from lightning_modules.inference.support import config_setting, model_setting
from lightning_modules.nets.pruning import has_psp, remove_pruned_channels, sparsity
from lightning_modules.separators.checkpoint import load_separator

#: Gate blocks per recurrent cell type (``RNNBase.mode``): each is one input and one hidden
#: matrix product per time step.
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_CELL_GATES = {nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


def count_parameters(module: nn.Module) -> int:
    """Parameters of ``module``, from its tensors alone (no forward pass)."""
    total = 0
    for name, parameter in module.named_parameters():
        if isinstance(parameter, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"{type(module).__name__}.{name} is a lazy parameter: its size is only known "
                "after a forward pass, so it cannot be counted without one"
            )
        total += parameter.numel()
    return total


# --- MACs --------------------------------------------------------------------------------------


def recurrent_macs(module: nn.RNNBase | nn.RNNCellBase, x: torch.Tensor | PackedSequence) -> int:
    """MACs of one call of a recurrent module on ``x`` (see the module docstring)."""
    if isinstance(module, nn.RNNCellBase):
        gates = next(g for cls, g in _CELL_GATES.items() if isinstance(module, cls))
        rows = x.shape[0] if x.dim() == 2 else 1
        return rows * gates * module.hidden_size * (module.input_size + module.hidden_size)
    gates = GATES[module.mode]
    hidden, proj = module.hidden_size, module.proj_size
    out = proj or hidden  # what the hidden state (and so the next layer's input) carries
    directions = 2 if module.bidirectional else 1
    if isinstance(x, PackedSequence):
        steps = x.data.shape[0]  # the packed time steps of all sequences, padding excluded
    elif x.dim() == 2:
        steps = x.shape[0]  # unbatched (L, input)
    else:
        steps = x.shape[0] * x.shape[1]
    per_step = 0
    for layer in range(module.num_layers):
        inputs = module.input_size if layer == 0 else directions * out
        per_direction = gates * hidden * (inputs + out) + (hidden * proj if proj else 0)
        per_step += directions * per_direction
    return steps * per_step


def _attention_flops(query: Sequence[int], key: Sequence[int], value: Sequence[int]) -> int:
    """FLOPs (2 per MAC) of ``Q K^T`` and ``A V`` for (..., L, E), (..., S, E), (..., S, E_v)."""
    batch = math.prod(query[:-2])
    length, width = query[-2], query[-1]
    return 2 * batch * length * key[-2] * (width + value[-1])


def _cpu_flash_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    # aten._scaled_dot_product_flash_attention_for_cpu: CPU's fused kernel behind
    # F.scaled_dot_product_attention, which the counter has no formula for (it counts 0)
    return _attention_flops(query, key, value)


def _native_multi_head_attention(
    query, key, value, embed_dim, num_head, *args, out_shape=None, **kwargs
) -> int:
    # aten._native_multi_head_attention: nn.MultiheadAttention's inference fast path (batch
    # first, no grad), one fused op the counter does not know. (B, L, E) queries, (B, S, E)
    # keys and values: q, k, v and output projections, plus the attention products over all
    # heads (heads x per-head width = E).
    batch, length, _ = query
    keys = key[-2]
    projections = (2 * length + 2 * keys) * embed_dim * embed_dim
    return 2 * batch * projections + _attention_flops(query, key, value)


def _extra_formulas() -> dict[Any, Any]:
    """Formulas for the fused CPU ops the counter misses (where this torch has them)."""
    formulas = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_flash_attention),
        ("_native_multi_head_attention", _native_multi_head_attention),
    ):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            formulas[op] = formula
    return formulas


class _RecurrentCounts:
    """Forward hooks on every recurrent module: whatever the counter saw inside it (0 for a
    fused kernel, the decomposed matmuls otherwise) is replaced by ``recurrent_macs``."""

    def __init__(self, module: nn.Module, counter: FlopCounterMode) -> None:
        self.counter, self.correction, self.started = counter, 0, []
        self.handles = []
        for sub in module.modules():
            if isinstance(sub, nn.RNNBase | nn.RNNCellBase):
                self.handles.append(sub.register_forward_pre_hook(self._pre, with_kwargs=True))
                self.handles.append(sub.register_forward_hook(self._post, with_kwargs=True))

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.started.append(self.counter.get_total_flops())

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        seen = self.counter.get_total_flops() - self.started.pop()
        x = args[0] if args else kwargs["input"]
        self.correction += 2 * recurrent_macs(module, x) - seen

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _call_flops(module: nn.Module, inputs: tuple[Any, ...], meta: bool) -> int:
    if meta:
        # the module's own tensors, swapped for shape-only copies for this one call
        state = {
            **dict(module.named_parameters(remove_duplicate=False)),
            **dict(module.named_buffers(remove_duplicate=False)),
        }
        state = {name: tensor.to("meta") for name, tensor in state.items()}
        inputs = tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as c:
        recurrent = _RecurrentCounts(module, c)
        try:
            if meta:
                torch.func.functional_call(module, state, inputs, tie_weights=True)
            else:
                module(*inputs)
        finally:
            recurrent.remove()
    return c.get_total_flops() + recurrent.correction


def count_call_macs(module: nn.Module, *inputs: Any, meta: bool = True) -> int:
    """MACs of ``module(*inputs)`` in eval mode (see the module docstring for what counts).
    ``meta=False`` runs it on the given tensors instead of on shape-only copies."""
    was_training = module.training
    module.eval()
    try:
        if meta:
            try:
                return _call_flops(module, inputs, meta=True) // 2
            except (NotImplementedError, RuntimeError):
                # an op without a meta kernel, or control flow that reads tensor values:
                # count on real zeros (same ops, same count; only slower)
                pass
        return _call_flops(module, inputs, meta=False) // 2
    finally:
        module.train(was_training)


def _required_inputs(net: nn.Module) -> int:
    """Positional inputs ``net.forward`` cannot do without (``*args`` counts as one)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = inspect.signature(net.forward).parameters.values()
    return sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in parameters)


def example_inputs(
    net: nn.Module, frames: int, bins: int = N_FFT // 2, channels: int = 1
) -> tuple[torch.Tensor, ...]:
    """What one forward pass of ``net`` at batch 1 is counted on: ``net.example_inputs(...)``
    where the net defines it, else a ``(1, channels, bins, frames)`` zero spectrogram."""
    own = getattr(net, "example_inputs", None)
    if callable(own):
        return tuple(own(frames=frames, bins=bins, channels=channels))
    if _required_inputs(net) > 1:
        raise ValueError(
            f"{type(net).__name__}.forward takes {_required_inputs(net)} inputs: its MACs need "
            "an example_inputs(frames, bins, channels) method giving them (its parameters are "
            "counted without a forward pass)"
        )
    return (torch.zeros(1, channels, bins, frames),)


def count_macs(net: nn.Module, frames: int, bins: int = N_FFT // 2, in_channels: int = 1) -> int:
    """MACs of one forward pass of ``net`` on a (1, in_channels, bins, frames) input (or on
    its own ``example_inputs``)."""
    return count_call_macs(net, *example_inputs(net, frames, bins, in_channels))


# --- a row's network ---------------------------------------------------------------------------


def net_from_config(net_config: dict) -> nn.Module:
    """Instantiate a network from its ``class_path``/``init_args`` config."""
    parser = ArgumentParser()
    parser.add_argument("--net", type=nn.Module)
    return parser.instantiate(parser.parse_object({"net": net_config})).net


def inference_network(resolved: Mapping[str, Any]) -> nn.Module:
    """The network of an experiment config (``model.init_args.net``) as it runs at inference:
    training-only heads (accompaniment, embeddings) dropped."""
    net_config = (resolved["model"].get("init_args") or {}).get("net")
    if net_config is None:
        raise ValueError(
            f"{resolved['model'].get('class_path')} has no network to count "
            "(no model.init_args.net)"
        )
    net = net_from_config(net_config)
    return net.inference_net() if hasattr(net, "inference_net") else net


def row_input(resolved: Mapping[str, Any]) -> tuple[int, int]:
    """(bins, channels) of the row's network input: ``model.init_args.mel_bins`` with a Mel
    front end, else the bins of ``data.stft``; channels from ``data.channels``."""
    setting = config_setting(resolved)
    mel_bins = (resolved["model"].get("init_args") or {}).get("mel_bins")
    return int(mel_bins or setting.stft.bins), setting.channels


def network_stats(
    resolved: Mapping[str, Any], frames: int | None = None, *, macs: bool = True
) -> dict[str, int]:
    """``{"params": ..., "macs": ...}`` of a row's inference network (training-only heads not
    counted), MACs at ``frames`` frames of the row's own input shape (``row_input``). With
    ``macs=False`` only ``params``, and nothing is run."""
    net = inference_network(resolved)
    stats = {"params": count_parameters(net)}
    if macs:
        if frames is None:
            raise ValueError("MACs are counted for a number of frames: give frames")
        bins, channels = row_input(resolved)
        stats["macs"] = count_macs(net, frames, bins, channels)
    return stats


def trained_network_stats(
    checkpoint: str | Path, frames: int | None = None, *, macs: bool = True
) -> dict[str, float]:
    """Parameters, MACs and sparsity of a trained model's inference network, for what depends
    on training: a PSP network is counted after ``remove_pruned_channels`` (its pruned input
    channels physically removed), and ``sparsity`` is pruned / all structures (0 without PSP).
    The input has the model's own bins (Mel bins, else its STFT's) and channels; ``macs=False``
    leaves MACs out and runs nothing."""
    model = load_separator(checkpoint)
    net = model.net
    psp = has_psp(net)
    fraction = sparsity(net) if psp else 0.0
    if psp:
        net = remove_pruned_channels(net)
    elif hasattr(net, "inference_net"):
        net = net.inference_net()
    stats: dict[str, float] = {"params": count_parameters(net), "sparsity": fraction}
    if macs:
        if frames is None:
            raise ValueError("MACs are counted for a number of frames: give frames")
        setting = model_setting(model)
        front_end = getattr(model, "front_end", None)
        bins = front_end.n_mels if front_end is not None else setting.stft.bins
        stats["macs"] = count_macs(net, frames, bins, setting.channels)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment YAML with model.init_args.net")
    parser.add_argument("--frames", type=int, default=64, help="STFT frames of the input")
    parser.add_argument(
        "--params-only", action="store_true", help="count parameters only (no forward pass)"
    )
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    try:
        print(json.dumps(network_stats(config, args.frames, macs=not args.params_only)))
    except ValueError as error:
        raise SystemExit(f"error: {args.config}: {error}") from error


if __name__ == "__main__":
    main()
