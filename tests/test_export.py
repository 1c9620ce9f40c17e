"""Export: BatchNorm folding, the exported graph against the PyTorch model (both formats),
training-only heads dropped, the CLI and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_modules.inference.export import TOLERANCE, export, inference_pipeline
from lightning_modules.inference.export import main as export_main
from lightning_modules.inference.runtime import load_exported
from lightning_modules.nets import MMDenseNet, MultiHeadMMDenseNet
from lightning_modules.nets.fold import fold_batchnorm
from lightning_modules.nets.mmdensenet import BottleneckDenseLayer
from lightning_modules.separators.spectrogram import SpectrogramSeparator
from tests.exported_models import (
    TINY_BAND,
    randomise_statistics_,
    tiny_checkpoint,
    tiny_final_separator,
    tiny_separator,
)


class ConvBN(nn.Module):
    """Conv1x1 -> BN -> ReLU -> Conv3x3 (the bottleneck layer), then a conv whose output
    feeds a BN *and* a sum: only the first BN may be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(3, 4, 1, bias=False)
        self.norm = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.shared_norm = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(torch.relu(self.norm(self.squeeze(x))))
        return self.shared_norm(y) + y


def test_fold_merges_a_bn_that_follows_a_conv_and_keeps_a_shared_one() -> None:
    net = randomise_statistics_(ConvBN()).eval()
    x = torch.randn(2, 3, 8, 8)
    folded, names = fold_batchnorm(net, x)
    assert names == ["norm"]
    assert isinstance(folded.norm, nn.Identity)
    assert isinstance(folded.shared_norm, nn.BatchNorm2d)  # its conv output is also summed
    assert isinstance(net.norm, nn.BatchNorm2d)  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_baseline_pre_activation_batchnorms_are_not_folded() -> None:
    # BN -> ReLU -> Conv on concatenations: no BN of the baseline directly follows a conv.
    _, names = fold_batchnorm(MMDenseNet().eval(), torch.rand(1, 1, 1024, 8))
    assert names == []
    # With one-layer dense blocks the input conv's output feeds only the first BN: folded.
    net = randomise_statistics_(MMDenseNet(low=TINY_BAND, high=TINY_BAND, full=TINY_BAND))
    x = torch.rand(1, 1, 64, 8)
    folded, names = fold_batchnorm(net.eval(), x)
    assert sorted(names) == [
        f"{band}.encoder.0.layers.0.norm" for band in ("full_band", "high_band", "low_band")
    ]
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {
            "objective": "learned_mask",
            "input_scale": "log",
            "normalize_input": True,
        },
    ],
    ids=["spectrogram", "log-normalised-mask"],
)
def test_exported_model_matches_pytorch(tmp_path, fmt: str, options: dict) -> None:
    separator = tiny_separator(**options)
    if options.get("normalize_input"):
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            separator.input_mean.copy_(torch.randn(1024, generator=generator))
            separator.input_std.copy_(0.5 + torch.rand(1024, generator=generator))
            separator.output_gain.copy_(torch.rand(1024, generator=generator))
    path, info = export(separator, tmp_path / f"model.{fmt}", fmt)
    assert (info.frames, info.bins, info.target) == (8, 1024, "vocals")

    model = load_exported(path, threads=1)
    magnitude = torch.rand(1, 1024, 8, generator=torch.Generator().manual_seed(5)) * 4
    with torch.no_grad():
        expected = separator.estimate_magnitude(magnitude).numpy()
    got = model(magnitude.numpy())
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())
    assert np.abs(expected).max() > 0.1  # not a trivially zero model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("pruned", [False, True], ids=["mel", "mel-pruned"])
def test_exported_mel_and_pruned_models_match_pytorch(tmp_path, fmt: str, pruned: bool) -> None:
    from lightning_modules.nets.pruning import sparsity

    separator = tiny_final_separator(pruned=pruned)
    path, info = export(separator, tmp_path / f"model.{fmt}", fmt)
    # every bottleneck layer's Conv1x1 -> BN is folded, pruned or not
    layers = [m for m in separator.net.modules() if isinstance(m, BottleneckDenseLayer)]
    assert len(info.folded_batchnorms) == len(layers) > 0
    assert all(name.endswith(".norm") for name in info.folded_batchnorms)
    assert info.pruned is pruned
    if pruned:  # physically smaller
        assert sparsity(separator.net) > 0.2
        unpruned = sum(p.numel() for p in tiny_final_separator(pruned=False).net.parameters())
        assert info.parameters < 0.9 * unpruned
    model = load_exported(path, threads=1)
    magnitude = torch.rand(1, 1024, 8, generator=torch.Generator().manual_seed(5)) * 4
    with torch.no_grad():
        expected = separator.estimate_magnitude(magnitude).numpy()
    got = model(magnitude.numpy())
    assert np.abs(got - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())
    assert np.abs(expected).max() > 0.1


def test_training_only_heads_are_dropped() -> None:
    torch.manual_seed(0)
    net = MultiHeadMMDenseNet(second_head="out_block", embedding_split="post_block")
    separator = SpectrogramSeparator(randomise_statistics_(net), context_frames=8).eval()
    pipeline, info = inference_pipeline(separator)
    assert info.parameters == 268_929  # the plain MMDenseNet
    assert sum(p.numel() for p in separator.parameters()) > info.parameters  # left as it was
    magnitude = torch.rand(1, 1024, 8)
    with torch.no_grad():
        torch.testing.assert_close(pipeline(magnitude), separator.estimate_magnitude(magnitude))


def test_export_cli_from_a_checkpoint_and_its_errors(tmp_path, capsys) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "best.ckpt")
    assert export_main(["--checkpoint", str(checkpoint), "--format", "onnx"]) == 0
    assert (tmp_path / "best.onnx").is_file()  # default: next to the checkpoint
    assert "3 BatchNorms folded" in capsys.readouterr().out  # the tiny net's input convs

    assert export_main(["--checkpoint", str(tmp_path / "missing.ckpt")]) == 2
    assert f"checkpoint {tmp_path / 'missing.ckpt'} does not exist" in capsys.readouterr().err

    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=f"cannot load {foreign}"):
        load_exported(foreign)


# -- an existing output survives a failed export --------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_failed_check_keeps_an_existing_output(tmp_path, monkeypatch, fmt: str) -> None:
    import lightning_modules.inference.export as export_module

    out = tmp_path / f"model.{fmt}"
    out.write_bytes(b"the previous, good export")
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # every export now fails its check
    with pytest.raises(ValueError, match=f"{out}: the exported model differs"):
        export(tiny_separator(), out, fmt)
    assert out.read_bytes() == b"the previous, good export"
    assert sorted(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_failed_export_keeps_an_existing_output(tmp_path, monkeypatch, capsys) -> None:
    import lightning_modules.inference.export as export_module

    def half_written(pipeline, info, path):
        path.write_bytes(b"half an onnx fi")
        raise ValueError("the exporter failed half-way")

    checkpoint = tiny_checkpoint(tmp_path / "best.ckpt")
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    out.write_bytes(b"the previous, good export")
    out.chmod(0o640)
    monkeypatch.setattr(export_module, "export_onnx", half_written)
    args = ["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]
    assert export_main(args) == 2
    assert "the exporter failed half-way" in capsys.readouterr().err
    assert out.read_bytes() == b"the previous, good export"
    assert sorted(out.parent.iterdir()) == [out]

    monkeypatch.undo()
    assert export_main(args) == 0  # a good export replaces it, with the file's mode
    assert load_exported(out, threads=1).info.frames == 8
    assert out.stat().st_mode & 0o777 == 0o640
    assert sorted(out.parent.iterdir()) == [out]
