"""Parameterized Structured Pruning (PSP, Schindler et al. 2019) of input channels, thesis 5.4.1.

Every convolution except the network's input and output layers gets one dense structure
parameter ``alpha_c`` per input channel, initialised U[-1, 1] (thesis 5.4.2: the original
Gaussian made training diverge). The forward pass uses ``q = w * nu(alpha)`` with the
threshold function of eq. 5.3, ``nu = alpha if |alpha| >= epsilon else 0``, and a
straight-through estimator ``d nu / d alpha = 1`` (eq. 5.4's ``dE/d nu = dE/d alpha``). Two
readings of the structure gradient (``gradient``):

* ``"chain"`` (default): the chain rule through ``q = w * nu``,
  ``dE/d alpha_c = sum_{k,r,s} dE/dq_{k,c,r,s} * w_{k,c,r,s}``: the derivative of E with respect
  to a channel's scale, what autograd gives for the forward pass the thesis describes;
* ``"literal"``: eq. 5.5 as printed, ``dE/d alpha_c = sum_{k,r,s} dE/dW_{k,c,r,s}`` with ``W``
  the weights the convolution uses (``q``): the sum of the channel's weight gradients, without
  the factor ``w``. (Reading ``W`` as the stored ``w`` instead would add a factor ``nu_c``, so a
  pruned channel would get no gradient and could never come back, against the thesis's own
  "improperly pruned structures are allowed to reappear".)

Both keep a pruned channel learning, and in both the weights get ``dE/dq * nu``.

The parameters are attached with ``torch.nn.utils.parametrize``: a pruned network keeps its
module types (``Conv2d``, ``ConvTranspose2d``), so counting and the existing code still work.
``remove_pruned_channels`` returns a plain network: ``nu`` fused into the weights and the pruned
input channels physically removed (smaller tensors, fewer MACs), with ``ChannelSelect`` picking
the kept maps where needed. No training logic lives here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_modules.nets.mmdensenet import BottleneckDenseLayer, DenseLayer

#: Name suffixes of the convolutions left unpruned: the thesis keeps "the potentially
#: sensitive output and input layers" dense (5.4.2).
DEFAULT_EXCLUDE = ("input_conv", "output_conv")

#: Readings of the structure gradient, eq. 5.4/5.5 (module docstring).
GRADIENTS = ("chain", "literal")


def _check_gradient(gradient: str) -> str:
    if gradient not in GRADIENTS:
        raise ValueError(f"PSP gradient must be one of {GRADIENTS}, got {gradient!r}")
    return gradient


def threshold(alpha: Tensor, epsilon: float | Tensor) -> Tensor:
    """Sparse structure parameters ``nu`` (eq. 5.3) with a straight-through gradient (eq. 5.4).

    Forward: ``alpha`` where ``|alpha| >= epsilon``, else 0. Backward: the identity, so that
    ``dE/d alpha = dE/d nu`` also inside the pruning interval.
    """
    hard = torch.where(alpha.abs() >= epsilon, alpha, torch.zeros_like(alpha))
    return alpha + (hard - alpha).detach()


class InputChannelPSP(nn.Module):
    """Parametrization of a conv weight: input channel ``c`` scaled by ``nu(alpha_c)``.

    ``dim`` is the weight's input-channel axis: 1 for ``Conv2d`` (out, in, kh, kw), 0 for
    ``ConvTranspose2d`` (in, out, kh, kw). ``epsilon`` is a buffer so that checkpoints keep
    the threshold a model was trained and evaluated with. ``gradient`` picks the reading of
    eq. 5.5 (module docstring); it changes only the backward pass, not the output.
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        generator: torch.Generator | None = None,
        gradient: str = "chain",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.gradient = _check_gradient(gradient)
        alpha = torch.empty(channels).uniform_(-1.0, 1.0, generator=generator)
        self.alpha = nn.Parameter(alpha)
        self.register_buffer("epsilon", torch.zeros(()))

    def nu(self) -> Tensor:
        return threshold(self.alpha, self.epsilon)

    def kept(self) -> Tensor:
        """Boolean mask of the input channels that survive the threshold."""
        return self.alpha.detach().abs() >= self.epsilon

    def forward(self, weight: Tensor) -> Tensor:
        shape = [1] * weight.ndim
        shape[self.dim] = -1
        nu = self.nu().view(shape)
        if self.gradient == "chain":
            return weight * nu
        # Same value; d q / d alpha_c = 1 for every weight of channel c instead of w, so alpha_c
        # receives the plain sum of the channel's weight gradients dE/dq.
        return weight * nu.detach() + (nu - nu.detach())


class ChannelSelect(nn.Module):
    """Keeps the channels ``index`` of a (B, C, ...) tensor: the removed model's stand-in for
    pruned input maps. A buffer, so it moves with the model and exports as one gather."""

    def __init__(self, index: Sequence[int] | Tensor) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.index)


_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def _input_dim(conv: nn.Module) -> int:
    return 0 if isinstance(conv, nn.ConvTranspose2d) else 1


def prunable_convs(
    net: nn.Module, include_transposed: bool = False, exclude: Iterable[str] = DEFAULT_EXCLUDE
) -> list[tuple[str, nn.Module]]:
    """``(name, conv)`` of every convolution PSP applies to.

    Thesis 5.4.2 prunes "the input channels of all convolutional kernels (point-wise as well as
    3x3 convolutional layers), except for the potentially sensitive output and input layers":
    transposed convs (2x2, up-sampling) are not named, so they are left out unless
    ``include_transposed``. Layers are excluded by name suffix (``exclude``).
    """
    exclude = tuple(exclude)
    kinds = _CONVS if include_transposed else (nn.Conv2d,)
    found = []
    for name, module in net.named_modules():
        if not isinstance(module, kinds) or name.endswith(exclude):
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(f"{name}: grouped convolutions are not supported by PSP")
        found.append((name, module))
    return found


def add_psp(
    net: nn.Module,
    include_transposed: bool = False,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    generator: torch.Generator | None = None,
    gradient: str = "chain",
) -> nn.Module:
    """Attach PSP structure parameters (U[-1, 1]) to ``net`` in place and return it.

    Multi-head networks are pruned through ``inference_net()``: training-only heads are
    dropped at inference, so pruning them would save nothing. The threshold starts at 0
    (thesis: "set to zero initially"), so nothing is pruned until ``set_threshold``.
    ``gradient``: the reading of eq. 5.5, ``"chain"`` or ``"literal"`` (module docstring).
    """
    _check_gradient(gradient)
    target = net.inference_net() if hasattr(net, "inference_net") else net
    convs = prunable_convs(target, include_transposed, exclude)
    if not convs:
        raise ValueError(f"{type(net).__name__} has no convolution PSP could prune")
    for _, conv in convs:
        if parametrize.is_parametrized(conv, "weight"):
            raise ValueError("PSP is already attached to this network")
        dim = _input_dim(conv)
        channels = conv.weight.shape[dim]
        # drawn in float32 on the CPU (the same draws whatever the net), then on the weight's
        # dtype and device
        psp = InputChannelPSP(channels, dim, generator, gradient).to(conv.weight)
        parametrize.register_parametrization(conv, "weight", psp)
    return net


def psp_modules(net: nn.Module) -> list[InputChannelPSP]:
    """Every PSP parametrization of ``net``, in module order (each shared module once)."""
    return list(dict.fromkeys(m for m in net.modules() if isinstance(m, InputChannelPSP)))


def has_psp(net: nn.Module) -> bool:
    return bool(psp_modules(net))


def structure_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The dense structure parameters ``alpha`` (their own optimiser group, thesis 5.4.2)."""
    return [m.alpha for m in psp_modules(net)]


def set_threshold(net: nn.Module, epsilon: float) -> None:
    """Set the pruning threshold of every structure of ``net``."""
    if epsilon < 0:
        raise ValueError(f"the pruning threshold must be >= 0, got {epsilon}")
    modules = psp_modules(net)
    if not modules:
        raise ValueError(f"{type(net).__name__} has no PSP structure parameters")
    for module in modules:
        module.epsilon.fill_(epsilon)


def get_threshold(net: nn.Module) -> float:
    """The common threshold of ``net``'s structures."""
    values = {float(m.epsilon) for m in psp_modules(net)}
    if len(values) != 1:
        raise ValueError(f"expected one PSP threshold, found {sorted(values) or 'none'}")
    return values.pop()


def structure_counts(net: nn.Module) -> tuple[int, int]:
    """``(pruned, total)`` parameterised structures (input channels) of ``net``."""
    modules = psp_modules(net)
    pruned = sum(int((~m.kept()).sum()) for m in modules)
    return pruned, sum(m.alpha.numel() for m in modules)


def sparsity(net: nn.Module) -> float:
    """Pruned / all parameterised structures (the thesis's "Sparsity", Table 5.9)."""
    pruned, total = structure_counts(net)
    if total == 0:
        raise ValueError(f"{type(net).__name__} has no PSP structure parameters")
    return pruned / total


# ---------------------------------------------------------------------------------------------
# Removal: fuse nu into the weights and cut the pruned input channels out.


@dataclass(frozen=True)
class PreActivation:
    """``conv(relu(norm(x)))`` inside one layer: a pruned input channel of ``conv`` also
    removes that channel of ``norm``, so the kept maps are selected *before* the BatchNorm."""

    norm: str
    conv: str


@dataclass(frozen=True)
class Produced:
    """``conv(relu(norm(producer(...))))`` inside one layer, where ``producer``'s maps feed
    only ``conv``: a pruned input channel of ``conv`` removes the producer's output channel
    and the BatchNorm channel, with no selection at all."""

    producer: str
    norm: str
    conv: str


Rule = PreActivation | Produced

#: How the convs of a layer type are cut. Convs without a rule get a ``ChannelSelect`` in
#: front of them. A new layer type only needs an entry here (``register_layer_rules``).
LAYER_RULES: dict[type[nn.Module], tuple[Rule, ...]] = {
    DenseLayer: (PreActivation(norm="norm", conv="conv"),),
    # compress 1x1 -> norm -> ReLU -> conv 3x3 (thesis Fig. 5.5b): the 3x3 conv's pruned inputs
    # are compress's output maps, which nothing else reads; compress's own inputs are selected.
    BottleneckDenseLayer: (Produced(producer="compress", norm="norm", conv="conv"),),
}


def register_layer_rules(layer_type: type[nn.Module], *rules: Rule) -> None:
    """Tell ``remove_pruned_channels`` how a layer type's convs see their input."""
    LAYER_RULES[layer_type] = tuple(rules)


def _slice_norm(norm: nn.BatchNorm2d, index: Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(index), norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
    with torch.no_grad():
        if norm.affine:
            new.weight.copy_(norm.weight[index])
            new.bias.copy_(norm.bias[index])
        if norm.track_running_stats:
            new.running_mean.copy_(norm.running_mean[index])
            new.running_var.copy_(norm.running_var[index])
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    return new.train(norm.training)


def _conv_like(conv: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A plain (unparametrized) conv with ``conv``'s settings and the given tensors.

    Built anew rather than un-parametrizing a copy: ``parametrize`` shares one generated class
    between a module and its deep copies, and removing the parametrization from the copy
    would delete the property from that class, breaking the original network.
    """
    transposed = isinstance(conv, nn.ConvTranspose2d)
    # Conv2d weights are (out, in, kh, kw), transposed ones (in, out, kh, kw); groups are 1.
    out_channels, in_channels = weight.shape[1::-1] if transposed else weight.shape[:2]
    common = {
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "bias": bias is not None,
        "padding_mode": conv.padding_mode,
    }
    if transposed:
        new = nn.ConvTranspose2d(
            in_channels, out_channels, output_padding=conv.output_padding, **common
        )
    else:
        new = nn.Conv2d(in_channels, out_channels, **common)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new.to(weight.device).train(conv.training)


def _slice_conv(conv: nn.Module, index: Tensor, dim: int) -> nn.Module:
    """A copy of ``conv`` keeping the channels ``index`` of weight axis ``dim``: the output
    channels (with the bias) on the output axis, the input channels otherwise."""
    weight = conv.weight.detach().index_select(dim, index)
    out_axis = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
    bias = conv.bias.detach() if conv.bias is not None else None
    if dim == out_axis and bias is not None:
        bias = bias[index]
    return _conv_like(conv, weight, bias)


def _kept_index(kept: Tensor, conv: nn.Module) -> Tensor:
    """Indices of the kept input channels; one all-zero channel when every channel is pruned,
    so the layer keeps its output shape (a zero weight gives exactly the pruned output)."""
    index = kept.nonzero().flatten()
    if len(index) == 0:
        index = torch.zeros(1, dtype=torch.long)
        with torch.no_grad():
            conv.weight.index_fill_(_input_dim(conv), index, 0.0)
    return index


def _get(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path)


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, value)


def remove_pruned_channels(net: nn.Module) -> nn.Module:
    """A plain copy of a PSP network (``net`` is left untouched): kept structure parameters
    fused into the weights, pruned input channels physically removed.

    Outside training the result computes exactly what the PSP network computes, with fewer
    parameters and MACs. Within a dense layer (BN -> ReLU -> conv) the kept maps are picked
    before the BatchNorm, which loses the pruned channels too; in layers with a ``Produced``
    rule the producer conv loses the output channels nobody reads. Maps that no consumer in
    any layer reads any more are still computed by their producer (removing them would
    re-index every consumer of a concatenation). Modules are plain ``Conv2d``,
    ``ConvTranspose2d``, ``BatchNorm2d``, ``Sequential`` and ``ChannelSelect``, so the result
    scripts, traces and exports to ONNX. Multi-head networks give their ``inference_net()``.
    """
    if not has_psp(net):
        raise ValueError(f"{type(net).__name__} has no PSP structure parameters to remove")
    plain = copy.deepcopy(net.inference_net() if hasattr(net, "inference_net") else net)
    # Kept channels by conv, read while fusing nu into plain convs.
    kept: dict[str, Tensor] = {}
    for name, module in list(plain.named_modules()):
        if isinstance(module, _CONVS) and parametrize.is_parametrized(module, "weight"):
            kept[name] = module.parametrizations.weight[0].kept()
            bias = module.bias.detach() if module.bias is not None else None
            _set(plain, name, _conv_like(module, module.weight.detach(), bias))
    if has_psp(plain):
        raise ValueError("a structure parameter sits outside a conv weight; cannot remove it")

    handled: set[str] = set()
    for layer_name, layer in list(plain.named_modules()):
        for rule in LAYER_RULES.get(type(layer), ()):
            prefix = f"{layer_name}." if layer_name else ""
            conv_name = prefix + rule.conv
            if conv_name not in kept:
                continue
            handled.add(conv_name)
            conv = _get(plain, conv_name)
            index = _kept_index(kept[conv_name], conv)
            if len(index) == conv.weight.shape[_input_dim(conv)]:
                continue
            norm = _get(plain, prefix + rule.norm)
            _set(plain, conv_name, _slice_conv(conv, index, _input_dim(conv)))
            if isinstance(rule, Produced):
                producer = _get(plain, prefix + rule.producer)
                out_axis = 1 if isinstance(producer, nn.ConvTranspose2d) else 0
                _set(plain, prefix + rule.producer, _slice_conv(producer, index, out_axis))
                _set(plain, prefix + rule.norm, _slice_norm(norm, index))
            else:
                select = nn.Sequential(ChannelSelect(index), _slice_norm(norm, index))
                _set(plain, prefix + rule.norm, select)

    for conv_name, mask in kept.items():
        if conv_name in handled:
            continue
        conv = _get(plain, conv_name)
        index = _kept_index(mask, conv)
        if len(index) < conv.weight.shape[_input_dim(conv)]:
            sliced = _slice_conv(conv, index, _input_dim(conv))
            _set(plain, conv_name, nn.Sequential(ChannelSelect(index), sliced))
    return plain
