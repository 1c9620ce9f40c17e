"""Tests for the MMDenseNet baseline (thesis Section 3.2 / Table 4.1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets import MDenseNet, MMDenseNet
from lightning_modules.nets.mmdensenet import BandConfig, DenseBlock

# Small frequency size for tests that do not need the real 1024 bins (divisible by 2 * 8).
SMALL_F = 64


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("frames", [64, 8])
def test_output_shape_and_band_split(frames: int) -> None:
    model = MMDenseNet()
    seen: dict[str, tuple[int, ...]] = {}
    for name in ("low_band", "high_band", "full_band"):
        getattr(model, name).register_forward_hook(
            lambda _m, inp, _out, name=name: seen.__setitem__(name, tuple(inp[0].shape))
        )
    with torch.no_grad():
        out = model(torch.rand(2, 1, 1024, frames))
    assert out.shape == (2, 1, 1024, frames)
    assert seen["low_band"] == (2, 1, 512, frames)
    assert seen["high_band"] == (2, 1, 512, frames)
    assert seen["full_band"] == (2, 1, 1024, frames)


def test_low_band_sees_only_lower_half() -> None:
    model = MMDenseNet().eval()
    x = torch.rand(1, 1, SMALL_F, 8)
    captured: list[Tensor] = []
    model.low_band.register_forward_hook(lambda _m, inp, _o: captured.append(inp[0]))
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(captured[0], x[..., : SMALL_F // 2, :])


@pytest.mark.parametrize(("kernel", "expected"), [(3, 268_929), (7, 272_769), (19, 302_721)])
def test_parameter_count(kernel: int, expected: int) -> None:
    assert n_params(MMDenseNet(input_kernel_size=kernel)) == expected


def test_parameter_count_differences_match_input_convs() -> None:
    base = n_params(MMDenseNet(input_kernel_size=3))
    assert n_params(MMDenseNet(input_kernel_size=7)) - base == 3 * 32 * (49 - 9)
    assert n_params(MMDenseNet(input_kernel_size=19)) - base == 3 * 32 * (361 - 9)


def _outputs_for(activation: str, reference: MMDenseNet, x: Tensor) -> Tensor:
    model = MMDenseNet(output_activation=activation)
    model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        return model.eval()(x)


def test_output_activations() -> None:
    reference = MMDenseNet(output_activation="none").eval()
    x = torch.rand(2, 1, SMALL_F, 8)
    raw = _outputs_for("none", reference, x)
    assert (raw < 0).any() and (raw > 0).any(), "'none' must be able to output negatives"

    relu = _outputs_for("relu", reference, x)
    absolute = _outputs_for("abs", reference, x)
    sigmoid = _outputs_for("sigmoid", reference, x)
    assert (relu >= 0).all()
    assert (absolute >= 0).all()
    torch.testing.assert_close(relu, raw.clamp_min(0))
    torch.testing.assert_close(absolute, raw.abs())
    torch.testing.assert_close(sigmoid, torch.sigmoid(raw))


def test_default_activation_is_relu() -> None:
    assert MMDenseNet().output_activation == "relu"
    with pytest.raises(ValueError):
        MMDenseNet(output_activation="tanh")


def test_bias_only_on_input_and_output_convs() -> None:
    model = MMDenseNet()
    convs = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    }
    with_bias = {name for name, m in convs.items() if m.bias is not None}
    assert with_bias == {
        "low_band.input_conv",
        "high_band.input_conv",
        "full_band.input_conv",
        "output_conv",
    }
    assert len(convs) > len(with_bias)  # the rest really exist and are bias-free


def test_initialisation() -> None:
    model = MMDenseNet()
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # Kaiming normal (fan_in, relu gain): std = sqrt(2 / fan_in).
    conv = model.low_band.encoder[1].layers[3].conv  # fan_in = (16 + 3 * 16) * 9 = 576
    assert conv.weight.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.1)


@pytest.mark.parametrize(("in_ch", "k", "layers"), [(32, 14, 4), (20, 7, 1), (6, 10, 3)])
def test_dense_block_outputs_growth_rate_channels(in_ch: int, k: int, layers: int) -> None:
    block = DenseBlock(in_ch, k, layers)
    assert len(block.layers) == layers
    assert block.layers[-1].conv.in_channels == in_ch + (layers - 1) * k
    out = block(torch.rand(2, in_ch, 8, 8))
    assert out.shape == (2, k, 8, 8)


def test_every_model_dense_block_outputs_growth_rate() -> None:
    model = MMDenseNet()
    checked: list[int] = []

    def hook(block: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        assert out.shape[1] == block.layers[-1].conv.out_channels == block.out_channels
        checked.append(out.shape[1])

    for m in model.modules():
        if isinstance(m, DenseBlock):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.rand(1, 1, SMALL_F, 8))
    assert len(checked) == 3 * 7 + 1
    assert checked[-1] == 4  # final block


def test_high_band_channel_padding_is_zero_before_final_block() -> None:
    model = MMDenseNet().eval()
    captured: list[Tensor] = []
    model.final_block.register_forward_hook(lambda _m, inp, _o: captured.append(inp[0]))
    x = torch.rand(2, 1, SMALL_F, 8)
    with torch.no_grad():
        model(x)
        joined = model.join_bands(x)
    torch.testing.assert_close(captured[0], joined)
    half = SMALL_F // 2
    assert joined.shape == (2, 16 + 6, SMALL_F, 8)
    # High band has k = 10: channels 10..15 of the upper frequency half are padding.
    assert torch.count_nonzero(joined[:, 10:16, half:, :]) == 0
    # ...while the real high-band maps and the low band's 16 channels carry signal.
    assert torch.count_nonzero(joined[:, :10, half:, :]) > 0
    assert torch.count_nonzero(joined[:, 10:16, :half, :]) > 0
    # Low band is first along frequency: it equals the low-band net on the lower half.
    torch.testing.assert_close(joined[:, :16, :half, :], model.low_band(x[..., :half, :]))
    torch.testing.assert_close(joined[:, 16:], model.full_band(x))


def test_gradient_reaches_every_parameter() -> None:
    model = MMDenseNet(output_activation="none")
    x = torch.rand(2, 1, SMALL_F, 8)
    loss = (model(x) - torch.rand(2, 1, SMALL_F, 8)).pow(2).mean()
    loss.backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if p.grad is None or torch.count_nonzero(p.grad) == 0
    ]
    assert not missing


def test_configurable_variants() -> None:
    full_only = MMDenseNet(
        low=None,
        high=None,
        full=BandConfig(growth_rates=(18,) * 7, layers=(4,) * 7),
        in_channels=2,
        out_channels=2,
    )
    assert full_only.low_band is None and full_only.high_band is None
    with torch.no_grad():
        assert full_only(torch.rand(1, 2, SMALL_F, 8)).shape == (1, 2, SMALL_F, 8)

    split = MMDenseNet(split_bin=SMALL_F // 4)
    with torch.no_grad():
        joined = split.join_bands(torch.rand(1, 1, SMALL_F, 8))
    assert torch.count_nonzero(joined[:, 10:16, SMALL_F // 4 :, :]) == 0

    net = MDenseNet(1, growth_rates=(8, 8, 8), layers=(2, 2, 2), input_kernel_size=5)
    assert net.scales == 1 and net.out_channels == 8
    assert net(torch.rand(1, 1, 16, 8)).shape == (1, 8, 16, 8)
    assert net(torch.rand(1, 1, 15, 8)).shape == (1, 8, 15, 8)  # padded, then cropped
    with pytest.raises(ValueError, match="divisible by 2"):
        net.encode(torch.rand(1, 1, 15, 8))  # encode itself takes divisible sizes only


def test_encode_decode_equals_forward() -> None:
    net = MDenseNet(1, growth_rates=(8, 6, 7, 5, 4), layers=(2, 1, 2, 1, 3)).eval()
    x = torch.rand(2, 1, 16, 8)
    with torch.no_grad():
        bottleneck, skips = net.encode(x)
        assert bottleneck.shape == (2, 7, 4, 2)
        assert [s.shape[1:] for s in skips] == [(8, 16, 8), (6, 8, 4)]
        before = list(skips)
        torch.testing.assert_close(net.decode(bottleneck, skips), net(x), rtol=0, atol=0)
    assert len(skips) == 2 and all(a is b for a, b in zip(skips, before, strict=True))
    with pytest.raises(IndexError):
        net.decode(bottleneck, skips, decoder_index=1)


def test_second_decoder_is_independent_copy_of_the_first() -> None:
    single = MDenseNet(1, growth_rates=(8, 6, 7, 5, 4), layers=(2, 1, 2, 1, 3))
    double = MDenseNet(1, growth_rates=(8, 6, 7, 5, 4), layers=(2, 1, 2, 1, 3), n_decoders=2)
    first, second = (nn.ModuleList(double.decoder_parts(i)) for i in (0, 1))
    assert n_params(double) - n_params(single) == n_params(second) == n_params(first)
    assert not {id(p) for p in first.parameters()} & {id(p) for p in second.parameters()}
    x = torch.rand(1, 1, 16, 8)
    with torch.no_grad():
        encoded = double.encode(x)
        out0, out1 = (double.decode(*encoded, decoder_index=i) for i in (0, 1))
        assert out0.shape == out1.shape == (1, 4, 16, 8)
        assert not torch.equal(out0, out1)
        torch.testing.assert_close(double(x), out0, rtol=0, atol=0)
        view = double.decoder_view(1)
        assert list(view.state_dict()) == list(single.state_dict())
        assert n_params(view) == n_params(single)
        torch.testing.assert_close(view(x), out1, rtol=0, atol=0)
    assert double.n_decoders == 2  # the view did not change the original
    assert single.decoder_view(0) is single
    with pytest.raises(ValueError):
        MDenseNet(1, growth_rates=(8, 8, 8), layers=(2, 2, 2), n_decoders=0)


def test_join_bands_per_decoder() -> None:
    model = MMDenseNet(n_decoders=2).eval()
    x = torch.rand(2, 1, SMALL_F, 8)
    with torch.no_grad():
        joined = model.join_bands_per_decoder(x, (0, 1))
        torch.testing.assert_close(joined[0], model.join_bands(x), rtol=0, atol=0)
        torch.testing.assert_close(joined[1], model.decoder_view(1).join_bands(x), rtol=0, atol=0)
    assert joined[1].shape == joined[0].shape == (2, 22, SMALL_F, 8)
    assert n_params(model.decoder_view(0)) == 268_929
    assert n_params(model) > 268_929


def test_dropout_acts_in_training_only_and_adds_no_parameters() -> None:
    torch.manual_seed(0)
    plain, dropped = MMDenseNet(), MMDenseNet(dropout=0.2)
    assert sum(p.numel() for p in dropped.parameters()) == 268_929
    dropped.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 64, 8)
    dropped.eval(), plain.eval()
    assert torch.equal(dropped(x), plain(x))  # eval: no dropout
    dropped.train()
    assert not torch.allclose(dropped(x), dropped(x))  # two masks, two outputs
    with pytest.raises(ValueError, match="dropout"):
        MMDenseNet(dropout=1.0)


def test_sizes_the_scales_do_not_divide_are_padded_and_cropped() -> None:
    """An STFT that keeps its DC bin has an odd number of bins (2049 at 4096 points); the
    bands pad their input with zeros and crop their output, and the thesis's sizes are not
    padded at all."""
    torch.manual_seed(0)
    net = MMDenseNet(in_channels=2, out_channels=8).eval()
    x = torch.rand(1, 2, 65, 5)
    with torch.no_grad():
        out = net(x)
        padded = F.pad(x[..., 32:, :], (0, 3, 0, 7))  # the high band: 33 bins -> 40, 5 -> 8
        high = net.high_band.decode(*net.high_band.encode(padded))[..., :33, :5]
        torch.testing.assert_close(net.high_band(x[..., 32:, :]), high)
    assert out.shape == (1, 8, 65, 5)
    assert net.in_channels == 2 and net.out_channels == 8
    band = net.low_band
    thesis_sized = torch.rand(1, 2, 512, 8)
    assert band.pad_input(thesis_sized)[0] is thesis_sized
