"""Fold inference-mode BatchNorm into the convolution that feeds it.

A BatchNorm in eval mode is a per-channel affine map. When it *directly* follows a conv
(Conv -> BN, the conv's output used by nothing else), the affine map can be merged into the
conv's weights and bias, and the BN disappears at no cost in accuracy (float rounding only).
That is the case of the bottleneck layer's Conv1x1 -> BN -> ReLU -> Conv3x3.

It is *not* the case of the baseline MMDenseNet's pre-activation dense layers
(BN -> ReLU -> Conv on the concatenation of all earlier maps): the BN's input is a
concatenation whose parts feed several BNs with different statistics, and the ReLU between BN
and the next conv blocks folding forwards. Those BNs stay.

Which BN follows which conv is read from the data flow of the net (``torch.export``), not
from module names, so any architecture is handled and a conv whose output has a second
consumer is never folded.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_BATCH_NORMS = {
    torch.ops.aten.batch_norm.default,
    torch.ops.aten._native_batch_norm_legit_no_training.default,
}
_CONVS = {torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default}


def foldable_pairs(net: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv name, BN name)`` for every BN whose input is a conv output used only by it,
    each module called exactly once in ``net``'s forward on ``example``."""
    was_training = net.training
    net.eval()
    try:
        program = torch.export.export(net, (example,), strict=False)
    finally:
        net.train(was_training)
    signature = program.graph_signature
    names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    nodes = list(program.graph.nodes)

    def owner(node: torch.fx.Node, suffix: str) -> str | None:
        # a placeholder of a parameter/buffer used once -> its module's name
        name = names.get(node.name) if node.op == "placeholder" else None
        if name is None or not name.endswith(suffix) or len(node.users) != 1:
            return None
        return name[: -len(suffix)]

    pairs = []
    for node in nodes:
        if node.op != "call_function" or node.target not in _BATCH_NORMS:
            continue
        source, running_mean = node.args[0], node.args[3]
        if not isinstance(source, torch.fx.Node) or source.target not in _CONVS:
            continue
        if len(source.users) != 1:  # the conv's output is also used elsewhere
            continue
        conv_name, bn_name = owner(source.args[1], ".weight"), owner(running_mean, ".running_mean")
        if conv_name is not None and bn_name is not None:
            pairs.append((conv_name, bn_name))
    return pairs


def fold_batchnorm(net: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """A copy of ``net`` (eval mode) with every foldable BN merged into its conv and replaced
    by ``nn.Identity``; returns the copy and the names of the folded BNs."""
    pairs = foldable_pairs(net, example)
    folded = copy.deepcopy(net).eval()
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        if type(conv) is not nn.Conv2d or not isinstance(bn, nn.BatchNorm2d):
            continue  # e.g. a transposed conv: its weight layout differs, left alone
        folded.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
        folded.set_submodule(bn_name, nn.Identity())
    return folded, [bn for conv, bn in pairs if isinstance(folded.get_submodule(bn), nn.Identity)]
