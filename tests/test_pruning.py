"""Parameterized Structured Pruning (thesis 5.4.1): threshold, gradients, sparsity, removal."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.inference.stats import count_macs, count_parameters
from lightning_modules.nets import BandConfig, DenseLayer, MMDenseNet, MultiHeadMMDenseNet
from lightning_modules.nets.pruning import (
    ChannelSelect,
    InputChannelPSP,
    Produced,
    add_psp,
    get_threshold,
    has_psp,
    prunable_convs,
    psp_modules,
    register_layer_rules,
    remove_pruned_channels,
    set_threshold,
    sparsity,
    structure_counts,
    structure_parameters,
    threshold,
)

BINS, FRAMES = 64, 8  # small input: divisible by 2**3 per band


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pruned_net(epsilon: float = 0.3, **kwargs) -> MMDenseNet:
    net = add_psp(MMDenseNet(), generator=torch.Generator().manual_seed(1), **kwargs)
    set_threshold(net, epsilon)
    return net.eval()


def _train_bn_statistics(net: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so that slicing them matters."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def test_threshold_is_eq_5_3_with_a_straight_through_gradient() -> None:
    alpha = torch.tensor([-0.5, -0.1, 0.0, 0.1, 0.2, 0.9], requires_grad=True)
    nu = threshold(alpha, 0.2)
    assert nu.tolist() == pytest.approx([-0.5, 0.0, 0.0, 0.0, 0.2, 0.9])
    (nu * torch.arange(6.0)).sum().backward()
    # Straight-through: d nu / d alpha = 1 everywhere, also on the pruning interval.
    assert alpha.grad.tolist() == pytest.approx(list(range(6)))


def test_default_structure_gradient_is_the_chain_rule_sum_of_dE_dq_times_w() -> None:
    """Default ("chain"): dE/d alpha_c = sum_{k,r,s} dE/dq_{k,c,r,s} w_{k,c,r,s}, pruned
    channels included (not eq. 5.5 as printed, which has no factor w)."""
    conv = nn.Conv2d(5, 3, 3, padding=1, bias=False)
    weight = conv.weight.detach().clone()
    add_psp(nn.Sequential(conv), exclude=())
    psp = conv.parametrizations.weight[0]
    assert psp.gradient == "chain"
    with torch.no_grad():
        psp.alpha.copy_(torch.tensor([0.9, -0.05, 0.4, 0.01, -0.7]))
    psp.epsilon.fill_(0.1)
    x = torch.randn(2, 5, 6, 6)
    q = conv.weight  # the weight the forward pass uses
    q.retain_grad()
    F.conv2d(x, q, padding=1).square().sum().backward()
    expected = (q.grad * weight).sum(dim=(0, 2, 3))
    torch.testing.assert_close(psp.alpha.grad, expected)
    assert psp.alpha.grad[1] != 0  # a pruned channel still learns and may come back
    # The weights see the sparse parameters: nothing reaches a pruned channel's weights.
    original = conv.parametrizations.weight.original
    assert original.grad[:, 1].abs().sum() == 0 and original.grad[:, 0].abs().sum() > 0


def _hand_built_psp_conv(gradient: str) -> tuple[nn.Conv2d, Tensor, Tensor]:
    """A 3 -> 2 channel 2x2 conv (float64) with hand-picked weights, PSP at epsilon 0.1:
    channel 0 kept (alpha 0.8, positive weights), 1 pruned (alpha 0.05), 2 kept (alpha -0.5,
    negative weights); plus its stored weights ``w`` and an input."""
    w = torch.tensor(
        [
            [[[1.0, 0.5], [0.2, 0.3]], [[0.4, -0.6], [0.1, 0.7]], [[-1.0, -0.3], [-0.2, -0.8]]],
            [[[0.6, 0.1], [0.9, 0.4]], [[-0.5, 0.2], [0.3, -0.1]], [[-0.4, -0.9], [-0.6, -0.1]]],
        ],
        dtype=torch.float64,
    )
    conv = nn.Conv2d(3, 2, 2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    add_psp(nn.Sequential(conv), exclude=(), gradient=gradient)
    psp = conv.parametrizations.weight[0]
    with torch.no_grad():
        psp.alpha.copy_(torch.tensor([0.8, 0.05, -0.5], dtype=torch.float64))
    psp.epsilon.fill_(0.1)
    x = torch.arange(2 * 3 * 3 * 3, dtype=torch.float64).reshape(2, 3, 3, 3).sin()
    return conv, w, x


def _loss(x: Tensor, q: Tensor) -> Tensor:
    """E(q): a quadratic loss of the convolution's output (central differences are exact)."""
    return (F.conv2d(x, q) - 0.5).square().sum()


def test_chain_and_literal_structure_gradients_differ_and_match_brute_force() -> None:
    """Brute force by central differences of E on explicit tensors, no PSP code involved:
    chain = dE/d nu_c of E(w * nu), literal (eq. 5.5 as printed) = d/dh E(q + h 1_c), the
    sum over channel c of the gradient of the weights the convolution uses."""
    nu = torch.tensor([0.8, 0.0, -0.5], dtype=torch.float64)  # eq. 5.3 at epsilon 0.1
    h = 1e-4
    grads = {}
    for gradient in ("chain", "literal"):
        conv, w, x = _hand_built_psp_conv(gradient)
        psp = conv.parametrizations.weight[0]
        _loss(x, conv.weight).backward()
        grads[gradient] = psp.alpha.grad.clone()
        # the weights get dE/dq * nu in both readings (pruned channel: nothing)
        q = (w * nu[None, :, None, None]).requires_grad_(True)
        _loss(x, q).backward()
        expected_w = q.grad * nu[None, :, None, None]
        original = conv.parametrizations.weight.original
        torch.testing.assert_close(original.grad, expected_w)

    _, w, x = _hand_built_psp_conv("chain")
    q = w * nu[None, :, None, None]
    chain, literal = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for c in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[c] = h
        plus = _loss(x, w * (nu + step)[None, :, None, None])
        minus = _loss(x, w * (nu - step)[None, :, None, None])
        chain[c] = (plus - minus) / (2 * h)
        shift = torch.zeros_like(q)
        shift[:, c] = h
        literal[c] = (_loss(x, q + shift) - _loss(x, q - shift)) / (2 * h)
    torch.testing.assert_close(grads["chain"], chain, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(grads["literal"], literal, rtol=1e-7, atol=1e-7)
    # The readings differ, even in sign where a channel's weights are negative.
    assert not torch.allclose(grads["chain"], grads["literal"], rtol=0.1)
    assert grads["literal"][1] != 0 and grads["chain"][1] != 0  # pruned channel learns
    assert torch.sign(grads["chain"][2]) != torch.sign(grads["literal"][2])


def test_gradient_reading_is_chosen_and_validated() -> None:
    net = add_psp(nn.Sequential(nn.Conv2d(2, 2, 1)), exclude=(), gradient="literal")
    assert {m.gradient for m in psp_modules(net)} == {"literal"}
    with pytest.raises(ValueError, match="gradient"):
        add_psp(nn.Sequential(nn.Conv2d(2, 2, 1)), exclude=(), gradient="sum")


def test_psp_covers_every_conv_but_input_and_output_layers() -> None:
    net = MMDenseNet()
    names = [name for name, _ in prunable_convs(net)]
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert not any(n.endswith(("input_conv", "output_conv")) for n in names)
    assert not any(".upsamples." in n for n in names)  # 2x2 transposed convs: not by default
    assert any(".downsamples." in n for n in names) and any(".decoder." in n for n in names)
    # 3 bands x (1 input conv + 3 transposed convs) + the output conv are left out.
    assert len(convs) - len(names) == 3 * 4 + 1
    with_up = [name for name, _ in prunable_convs(net, include_transposed=True)]
    assert len(with_up) == len(names) + 9


def test_structure_parameters_start_uniform_and_at_threshold_zero() -> None:
    net = add_psp(MMDenseNet(), generator=torch.Generator().manual_seed(0))
    alphas = torch.cat([a.detach() for a in structure_parameters(net)])
    assert alphas.min() >= -1 and alphas.max() <= 1
    assert alphas.min() < -0.9 and alphas.max() > 0.9  # U[-1, 1], not a Gaussian
    assert get_threshold(net) == 0.0 and sparsity(net) == 0.0
    # One structure per input channel of every parameterised conv.
    expected = sum(conv.weight.shape[1] for _, conv in prunable_convs(net))
    assert len(alphas) == expected == structure_counts(net)[1]
    with pytest.raises(ValueError, match="already attached"):
        add_psp(net)


def test_sparsity_is_pruned_over_all_structures() -> None:
    net = add_psp(MMDenseNet())
    modules = psp_modules(net)
    total = sum(m.alpha.numel() for m in modules)
    with torch.no_grad():
        for m in modules:
            m.alpha.fill_(0.5)
        modules[0].alpha[:3] = 0.1  # below 0.2
        modules[1].alpha[0] = -0.19  # below
        modules[2].alpha[0] = -0.2  # on the threshold: kept (|alpha| >= epsilon)
    set_threshold(net, 0.2)
    assert structure_counts(net) == (4, total)
    assert sparsity(net) == pytest.approx(4 / total)
    set_threshold(net, 0.6)
    assert sparsity(net) == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        set_threshold(net, -0.1)


@pytest.mark.parametrize("include_transposed", [False, True])
def test_removed_model_computes_the_psp_output_with_fewer_parameters_and_macs(
    include_transposed: bool,
) -> None:
    net = pruned_net(0.3, include_transposed=include_transposed)
    _train_bn_statistics(net)
    pruned, total = structure_counts(net)
    assert 0.2 < pruned / total < 0.4  # U[-1, 1] below 0.3: about 30 %

    # Expected saving, conv by conv: pruned input channels x out channels x kernel x positions.
    saved_macs, saved_weights, positions = 0, 0, {}

    def record(module, inputs, output):
        source = inputs[0] if isinstance(module, nn.ConvTranspose2d) else output
        positions[module] = source.shape[-2] * source.shape[-1]

    hooks = [conv.register_forward_hook(record) for _, conv in prunable_convs(net, True, ())]
    x = torch.rand(2, 1, BINS, FRAMES)
    with torch.no_grad():
        expected = net(x)
    for hook in hooks:
        hook.remove()
    saved_bn = 0
    for name, conv in prunable_convs(net, include_transposed):
        psp = conv.parametrizations.weight[0]
        removed = int((~psp.kept()).sum())
        out = conv.out_channels
        kernel = conv.kernel_size[0] * conv.kernel_size[1]
        saved_weights += removed * out * kernel
        saved_macs += removed * out * kernel * positions[conv]
        if name.endswith(".conv") and ".layers." in name:  # dense layer: its BN goes too
            saved_bn += 2 * removed

    plain = remove_pruned_channels(net)
    assert not has_psp(plain) and has_psp(net)  # a copy; the PSP network is untouched
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)

    reference = MMDenseNet()
    assert count_parameters(plain) == count_parameters(reference) - saved_weights - saved_bn
    full_macs = count_macs(reference, FRAMES, bins=BINS)
    assert count_macs(net, FRAMES, bins=BINS) == full_macs  # masking alone saves nothing
    assert count_macs(plain, FRAMES, bins=BINS) == full_macs - saved_macs
    assert saved_macs > 0.1 * full_macs


def test_removal_selects_before_the_batchnorm_of_a_dense_layer() -> None:
    layer = add_psp(nn.ModuleDict({"layer": DenseLayer(6, 4)}), exclude=())["layer"]
    psp = layer.conv.parametrizations.weight[0]
    with torch.no_grad():
        psp.alpha.copy_(torch.tensor([0.5, 0.01, -0.6, 0.02, 0.9, -0.03]))
    psp.epsilon.fill_(0.1)
    _train_bn_statistics(layer)
    layer.eval()
    plain = remove_pruned_channels(layer)
    select, norm = plain.norm
    assert isinstance(select, ChannelSelect) and select.index.tolist() == [0, 2, 4]
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == 3
    assert plain.conv.weight.shape == (4, 3, 3, 3) and type(plain.conv) is nn.Conv2d
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), layer(x))
    # Plain module types: TorchScript and tracing work on the removed layer.
    torch.testing.assert_close(torch.jit.script(plain)(x), plain(x))
    torch.testing.assert_close(torch.jit.trace(plain, x)(x), plain(x))


class _Bottleneck(nn.Module):
    """A bottleneck layer (1x1 conv -> BN -> ReLU -> 3x3 conv) to test a ``Produced`` rule."""

    def __init__(self) -> None:
        super().__init__()
        self.compress = nn.Conv2d(8, 4, 1, bias=False)
        self.norm = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 3, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.relu(self.norm(self.compress(x))))


def test_a_new_layer_type_needs_only_a_rule_and_loses_unread_producer_maps() -> None:
    register_layer_rules(_Bottleneck, Produced(producer="compress", norm="norm", conv="conv"))
    layer = add_psp(_Bottleneck(), exclude=())
    inner = layer.conv.parametrizations.weight[0]
    outer = layer.compress.parametrizations.weight[0]
    with torch.no_grad():
        inner.alpha.copy_(torch.tensor([0.5, 0.01, -0.6, 0.02]))
        outer.alpha.copy_(torch.tensor([0.5, 0.5, 0.01, 0.5, 0.5, 0.5, 0.5, -0.01]))
    set_threshold(layer, 0.1)
    _train_bn_statistics(layer)
    layer.eval()
    plain = remove_pruned_channels(layer)
    # The 3x3 conv's pruned inputs: the 1x1 conv's output channels and the BN channels go.
    assert plain.compress[1].weight.shape == (2, 6, 1, 1)  # its own pruned inputs: selected
    assert plain.norm.num_features == 2 and plain.conv.weight.shape == (3, 2, 3, 3)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(plain.conv(F.relu(plain.norm(plain.compress(x)))), layer(x))
        torch.testing.assert_close(plain(x), layer(x))


def test_final_chapter_5_net_with_bottlenecks_and_no_downsampling_convs(tmp_path) -> None:
    """Mel-MDenseNet-DC-NoDSConvs-BC's inference net (full band, k=18, L=4): bottleneck
    layers lose the compress maps their 3x3 conv no longer reads."""
    net = MMDenseNet(
        output_activation="sigmoid",
        low=None,
        high=None,
        full=BandConfig(growth_rates=(18,) * 7, layers=(4,) * 7),
        downsample_conv=False,
        bottleneck_compression=True,
    )
    reference_params, reference_macs = count_parameters(net), count_macs(net, FRAMES, bins=128)
    add_psp(net, generator=torch.Generator().manual_seed(2))
    assert not any(".downsamples." in name for name, _ in prunable_convs(net))  # NoDSConvs
    set_threshold(net, 0.25)
    _train_bn_statistics(net)
    net.eval()
    plain = remove_pruned_channels(net)
    layer = plain.full_band.encoder[1].layers[2]
    original = net.full_band.encoder[1].layers[2]
    kept = int(original.conv.parametrizations.weight[0].kept().sum())
    assert layer.norm.num_features == kept == layer.conv.in_channels
    assert layer.compress[1].out_channels == kept  # the producer's unread maps are gone
    x = torch.rand(2, 1, 128, FRAMES)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), atol=1e-5, rtol=1e-5)
    assert count_parameters(plain) < 0.9 * reference_params
    assert count_macs(plain, FRAMES, bins=128) < 0.85 * reference_macs
    # What the export code will do with it: trace, and ONNX (TorchScript-based exporter).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the nets' shape checks
        traced = torch.jit.trace(plain, x)
        torch.onnx.export(plain, (x,), tmp_path / "pruned.onnx", dynamo=False)
    torch.testing.assert_close(traced(x), plain(x))
    assert (tmp_path / "pruned.onnx").stat().st_size > 4 * count_parameters(plain)


def test_a_conv_with_every_input_pruned_keeps_its_output_shape() -> None:
    net = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False))
    add_psp(net, exclude=())
    set_threshold(net, 2.0)  # |alpha| <= 1: everything is pruned
    plain = remove_pruned_channels(net)
    x = torch.randn(1, 3, 4, 4)
    out = plain(x)
    assert out.shape == (1, 2, 4, 4) and out.abs().sum() == 0
    assert plain[0][1].weight.shape == (2, 1, 1, 1)


def test_multi_head_nets_are_pruned_and_removed_through_their_inference_net() -> None:
    net = add_psp(MultiHeadMMDenseNet(embedding_split="pre_block"))
    assert net.embedding.layer.conv not in [c for _, c in prunable_convs(net.inference_net())]
    assert not hasattr(net.embedding.layer.conv, "parametrizations")  # training-only head
    set_threshold(net, 0.3)
    net.eval()
    plain = remove_pruned_channels(net)
    assert isinstance(plain, MMDenseNet) and not has_psp(plain)
    x = torch.rand(1, 1, BINS, FRAMES)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x)["main"], atol=1e-5, rtol=1e-5)


def test_removal_needs_psp() -> None:
    with pytest.raises(ValueError, match="no PSP"):
        remove_pruned_channels(MMDenseNet())
    assert isinstance(psp_modules(pruned_net())[0], InputChannelPSP)
