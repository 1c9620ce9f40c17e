"""Chapter-5 network options (thesis Section 5.3): NoDSConvs and bottleneck compression (BC),
and the full-band Mel-MDenseNet of Section 5.2 (k = 18, L = 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.inference.stats import count_macs, count_parameters
from lightning_modules.nets import BottleneckDenseLayer, MultiHeadMMDenseNet
from lightning_modules.nets.mmdensenet import (
    BandConfig,
    DenseBlock,
    DenseLayer,
    Downsample,
    MMDenseNet,
)

MEL_FULL_BAND = BandConfig(growth_rates=(18,) * 7, layers=(4,) * 7)
MEL_BINS, FRAMES = 128, 8


def mel_mdensenet(**options: bool) -> MMDenseNet:
    return MMDenseNet(low=None, high=None, full=MEL_FULL_BAND, **options)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_bottleneck_layer_is_conv1x1_bn_relu_conv3x3() -> None:
    layer = BottleneckDenseLayer(36, 18).eval()
    assert [name for name, _ in layer.named_children()] == ["compress", "norm", "conv"]
    assert layer.mid_channels == 18
    assert (layer.compress.in_channels, layer.compress.out_channels) == (36, 18)
    assert layer.compress.kernel_size == (1, 1) and layer.compress.bias is None
    assert layer.norm.num_features == 18
    assert (layer.conv.in_channels, layer.conv.out_channels) == (18, 18)
    assert layer.conv.kernel_size == (3, 3) and layer.conv.bias is None
    with torch.no_grad():
        layer.norm.running_mean.uniform_(-1, 1)  # a non-identity BatchNorm
        x = torch.randn(2, 36, 16, 8)
        expected = layer.conv(torch.relu(layer.norm(layer.compress(x))))
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
        # No pre-activation in front of the 1x1 conv (Fig. 5.5b, unlike 5.5a): it is linear.
        torch.testing.assert_close(layer.compress(-x), -layer.compress(x))


def test_bottleneck_layer_odd_channels_and_bad_compression() -> None:
    assert BottleneckDenseLayer(37, 4).mid_channels == 19  # rounded up, never 0 maps
    assert BottleneckDenseLayer(1, 4).mid_channels == 1
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="compression"):
            BottleneckDenseLayer(8, 4, compression=bad)


def test_bottleneck_flag_builds_every_dense_layer_as_bc_including_the_final_block() -> None:
    model = mel_mdensenet(bottleneck_compression=True)
    layers = [m for m in model.modules() if isinstance(m, DenseLayer | BottleneckDenseLayer)]
    assert layers and all(isinstance(m, BottleneckDenseLayer) for m in layers)
    assert len(layers) == 7 * 4 + 2  # seven blocks of L = 4, final block of 2
    assert all(isinstance(m, BottleneckDenseLayer) for m in model.final_block.layers)
    # Dense connectivity is unchanged: layer i of a block sees in + i * k maps, halved.
    block = model.full_band.encoder[0]
    assert [layer.compress.in_channels for layer in block.layers] == [32, 50, 68, 86]
    assert [layer.mid_channels for layer in block.layers] == [16, 25, 34, 43]
    with torch.no_grad():
        assert model(torch.rand(2, 1, MEL_BINS, FRAMES)).shape == (2, 1, MEL_BINS, FRAMES)


def test_no_downsample_convs_is_plain_average_pooling() -> None:
    down = Downsample(6, pointwise=False)
    assert down.conv is None
    x = torch.rand(1, 6, 8, 4)
    torch.testing.assert_close(down(x), nn.functional.avg_pool2d(x, 2), rtol=0, atol=0)
    model = MMDenseNet(downsample_conv=False)
    assert all(
        d.conv is None
        for band in (model.low_band, model.high_band, model.full_band)
        for d in band.downsamples
    )
    # Exactly the 1x1 convs go: 3 per band, channels = the band's encoder growth rates.
    removed = (14**2 + 16**2 + 16**2) + 3 * 10**2 + 3 * 6**2
    assert count_parameters(MMDenseNet()) - count_parameters(model) == removed == 1_116


def test_defaults_unchanged() -> None:
    model = MMDenseNet()
    assert count_parameters(model) == 268_929
    assert all(isinstance(d.conv, nn.Conv2d) for d in model.full_band.downsamples)
    assert not any(isinstance(m, BottleneckDenseLayer) for m in model.modules())


# Our counts. The thesis's (Tables 5.6 / 5.8) are 238,517 and 169,095: not a constant offset
# from ours (19,436 and 10,502; the baseline's is 13,448), see the README's chapter-5 notes.
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, 257_953),
        ({"downsample_conv": False}, 256_981),
        ({"downsample_conv": False, "bottleneck_compression": True}, 179_597),
    ],
)
def test_mel_mdensenet_parameter_counts(options: dict, expected: int) -> None:
    assert count_parameters(mel_mdensenet(**options)) == expected


def test_relative_changes_agree_with_thesis_table_5_8() -> None:
    """BC's relative savings are what Table 5.8 reports (-29.57% MACs, -29.11% parameters),
    within 1.5 percentage points, although absolute counts differ."""
    dc = mel_mdensenet()
    bc = mel_mdensenet(downsample_conv=False, bottleneck_compression=True)
    macs = count_macs(bc, FRAMES, MEL_BINS) / count_macs(dc, FRAMES, MEL_BINS) - 1
    params = count_parameters(bc) / count_parameters(dc) - 1
    assert macs == pytest.approx(-0.2957, abs=0.015)
    assert params == pytest.approx(-0.2911, abs=0.015)


def test_mel_mdensenet_macs_close_to_thesis() -> None:
    """MACs at 128 Mel bins x 8 frames within 3% of Tables 5.6/5.8 (108.862 M, 76.677 M)."""
    assert count_macs(mel_mdensenet(), FRAMES, MEL_BINS) == pytest.approx(108.862e6, rel=0.03)
    bc = mel_mdensenet(downsample_conv=False, bottleneck_compression=True)
    assert count_macs(bc, FRAMES, MEL_BINS) == pytest.approx(76.677e6, rel=0.03)


def test_multihead_passes_chapter5_options_and_builds_second_block_alike() -> None:
    net = MultiHeadMMDenseNet(
        low=None,
        high=None,
        full=MEL_FULL_BAND,
        downsample_conv=False,
        bottleneck_compression=True,
        second_head="out_block",
        embedding_split="pre_block",
    )
    assert count_parameters(net.inference_net()) == 179_597
    assert isinstance(net.second_block, DenseBlock) and net.second_block.bottleneck_compression
    out = net(torch.rand(1, 1, MEL_BINS, FRAMES))
    assert out["main"].shape == out["second"].shape == (1, 1, MEL_BINS, FRAMES)
    assert out["embedding"].shape == (1, 20, MEL_BINS, FRAMES)


def test_gradient_reaches_every_bc_parameter() -> None:
    model = mel_mdensenet(downsample_conv=False, bottleneck_compression=True)
    model(torch.rand(2, 1, MEL_BINS, FRAMES)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
