"""Export: BatchNorm folding, the exported graph against the PyTorch model (both formats),
training-only heads dropped, the CLI and its errors, and the refusal of any signal setting
but the thesis's (STFT, mono, one target)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from datamodules.conventions import STFTConfig
from lightning_modules.inference.export import TOLERANCE, export, inference_pipeline
from lightning_modules.inference.export import main as export_main
from lightning_modules.inference.runtime import load_exported
from lightning_modules.inference.support import checkpoint_setting, model_setting, unsupported
from lightning_modules.nets import MMDenseNet, MultiHeadMMDenseNet
from lightning_modules.nets.fold import fold_batchnorm
from lightning_modules.nets.mmdensenet import BottleneckDenseLayer
from lightning_modules.separators.spectrogram import SpectrogramSeparator
from tests.exported_models import (
    TINY_BAND,
    checkpoint_with,
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


# -- only the thesis's setting is exported ----------------------------------------------------

SAMSNET_STFT = {"n_fft": 4096, "hop": 1024, "window": "hamming", "keep_dc": True}


@pytest.fixture(scope="module")
def thesis_checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("thesis") / "best.ckpt")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (
            {"stft": STFTConfig(**SAMSNET_STFT)},
            ["STFT n_fft=4096, hop=1024", "window=hamming", "DC bin kept"],
        ),
        ({"stft": {"hop": 256}}, ["STFT n_fft=2048, hop=256"]),  # as LightningCLI passes it
        ({"stft": STFTConfig(win_length=1024)}, ["win_length=1024"]),
        ({"channels": 2, "net_channels": (2, 2)}, ["2 channels (stereo; supported: mono)"]),
        (
            {"multi_target": True, "targets": "all", "net_channels": (1, 4)},
            ["targets vocals, drums, bass, other estimated by the network"],
        ),
        (
            {"multi_target": True, "targets": "vocals", "net_channels": (1, 2)},
            ["targets vocals, accompaniment estimated by the network"],
        ),
        (
            {
                "stft": SAMSNET_STFT,
                "channels": 2,
                "multi_target": True,
                "targets": "all",
                "net_channels": (2, 8),
            },
            ["n_fft=4096", "stereo", "targets vocals, drums, bass, other"],
        ),
    ],
    ids=["samsnet-stft", "hop", "window-length", "stereo", "four-targets", "pair", "all"],
)
def test_export_refuses_what_it_does_not_support(options: dict, named: list[str]) -> None:
    separator = tiny_separator(**options)
    with pytest.raises(ValueError) as refused:
        inference_pipeline(separator, source="model.ckpt")
    message = str(refused.value)
    assert message.startswith("model.ckpt: export supports only the thesis's STFT, mono audio")
    for part in named:
        assert part in message


@pytest.mark.parametrize(
    "options",
    [
        {"stft": STFTConfig(), "channels": 1, "targets": "vocals"},
        {"stft": {"n_fft": 2048, "hop": 512, "win_length": 2048, "window": "hann"}},
        # a single-target model trained on four-source batches still estimates the vocals
        {"targets": "all"},
    ],
    ids=["defaults", "spelled-out", "single-target-on-all-sources"],
)
def test_export_accepts_the_thesis_setting_however_it_is_written(options: dict) -> None:
    _, info = inference_pipeline(tiny_separator(**options))
    assert (info.n_fft, info.hop, info.bins, info.window, info.keep_dc, info.channels) == (
        2048,
        512,
        1024,
        "hann",
        False,
        1,
    )


def test_a_model_without_the_attributes_is_read_from_its_hparams() -> None:
    # a separator class that records its setting only as hyper-parameters
    model = SimpleNamespace(
        hparams={"stft": {"n_fft": 1024}, "channels": 2, "multi_target": True, "targets": "all"}
    )
    reasons = unsupported(model_setting(model))
    assert [r.split(" ")[0] for r in reasons] == ["STFT", "2", "targets"]
    assert unsupported(model_setting(SimpleNamespace(hparams={"targets": "all"}))) == []


@pytest.mark.parametrize(
    ("model", "data", "named"),
    [
        ({"stft": SAMSNET_STFT}, None, "n_fft=4096"),
        ({"channels": 2}, None, "stereo"),
        ({"multi_target": True, "targets": "all"}, None, "targets vocals, drums, bass, other"),
        # recorded only by the DataModule (``data.stft``, ``data.channels``): still refused
        (
            {"stft": None, "channels": None},
            {"stft": {"n_fft": 1024, "hop": 256}, "channels": 2},
            "n_fft=1024, hop=256",
        ),
    ],
    ids=["stft", "stereo", "targets", "datamodule"],
)
def test_export_cli_refuses_a_checkpoint_before_building_it(
    tmp_path, capsys, thesis_checkpoint, model: dict | None, data: dict | None, named: str
) -> None:
    # The refusal comes from the checkpoint's recorded setting, before the model is built
    # (a separator of this build may not even take these hyper-parameters).
    checkpoint = checkpoint_with(thesis_checkpoint, tmp_path / "paper.ckpt", model, data)
    assert export_main(["--checkpoint", str(checkpoint), "--format", "onnx"]) == 2
    error = capsys.readouterr().err
    assert f"error: {checkpoint}: export supports only the thesis's STFT" in error
    assert named in error
    assert not (tmp_path / "paper.onnx").exists()


def test_a_single_target_checkpoint_on_four_source_batches_is_supported(
    tmp_path, thesis_checkpoint
) -> None:
    data = {"targets": "all", "channels": 1, "stft": None}
    checkpoint = checkpoint_with(thesis_checkpoint, tmp_path / "all.ckpt", {"targets": "all"}, data)
    assert unsupported(checkpoint_setting(checkpoint)) == []
