"""int8 post-training quantisation (``inference/quantize.py``): calibration on the blocks the
streaming loop feeds, a quantised graph that keeps the export's metadata and stays near the
float graph without being it, the SDR report, and the run's data found beside the checkpoint."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from lightning_modules.inference.export import export
from lightning_modules.inference.quantize import (
    calibration_blocks,
    quantize_int8,
    run_data,
    sdr_report,
    separated,
)
from lightning_modules.inference.runtime import OnnxModel
from lightning_modules.inference.stream import BlockStream, stream_array
from tests.exported_models import tiny_final_separator

RATE = 16000


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path, _ = export(tiny_final_separator(), tmp_path_factory.mktemp("q") / "m.onnx", "onnx")
    return path


def _mixture(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return 0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * noise


def test_calibration_records_every_streamed_block_and_changes_nothing(exported) -> None:
    model = OnnxModel(exported)
    mixture = _mixture(1.3)
    blocks = calibration_blocks(model, model.info, [mixture, mixture[:5000]])
    counted = []
    for part in (mixture, mixture[:5000]):
        stream = BlockStream(model, model.info)
        stream_array(stream, part, stream.step)
        counted.append(len(stream.block_seconds))
    assert len(blocks) == sum(counted) > 2
    assert all(b.shape == (1, 1024, 8) and b.dtype == np.float32 for b in blocks)
    assert len({b.tobytes() for b in blocks}) > 2  # copies, not one reused buffer


def test_int8_graph_is_quantised_keeps_the_metadata_and_stays_close(exported, tmp_path) -> None:
    model = OnnxModel(exported)
    blocks = calibration_blocks(model, model.info, [_mixture(2.0, seed) for seed in range(3)])
    path = quantize_int8(exported, blocks, tmp_path / "m.int8.onnx")
    int8 = OnnxModel(path)  # refuses a file without the export's metadata
    assert int8.info == model.info
    graph = onnx.load(str(path)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)
    block = blocks[len(blocks) // 2]
    expected, got = model(block), int8(block)
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert 0 < error < 0.1
    with pytest.raises(ValueError, match="no calibration blocks"):
        quantize_int8(exported, [], tmp_path / "none.onnx")


def test_sdr_report_of_the_same_model_twice_changes_nothing(exported) -> None:
    model = OnnxModel(exported)
    mixture = _mixture(3.0)
    vocals = 0.4 * np.sin(2 * np.pi * 440 * np.arange(mixture.size) / RATE)
    references = np.stack([vocals, mixture - vocals])
    report = sdr_report({"a": model, "b": model}, [("song", mixture, references)], RATE)
    assert report["median"]["a"] == report["median"]["b"]
    assert np.isfinite(report["median"]["a"]["vocals"])
    assert report["per_track"]["a"]["song"]["vocals"] == report["median"]["a"]["vocals"]
    assert separated(model, mixture).shape == (2, mixture.size)


def test_run_data_needs_the_run_folder_config(tmp_path) -> None:
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"best\.ckpt: no run config at .*config\.yaml"):
        run_data(checkpoint)
    (tmp_path / "run" / "config.yaml").write_text("data:\n  rate: 16000\n  batch_size: 3\n")
    data = run_data(checkpoint)
    assert data.hparams.rate == 16000 and data.hparams.batch_size == 3


@pytest.mark.slow
def test_quantize_a_run_end_to_end(tmp_path, synthetic_dm_kwargs) -> None:
    """A tiny row's run folder (checkpoint and config.yaml over the synthetic data): the CLI
    writes both models and the report, whose figures agree with each other."""
    import json

    import yaml

    from lightning_modules.inference.quantize import main
    from tests.exported_models import checkpoint_with, tiny_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    base = tiny_checkpoint(tmp_path / "base.ckpt")
    checkpoint = checkpoint_with(base, run / "checkpoints" / "best.ckpt", {"rate": 16000})
    (run / "config.yaml").write_text(yaml.safe_dump({"data": synthetic_dm_kwargs}))
    out = tmp_path / "out"
    args = ["--checkpoint", str(checkpoint), "--out", str(out), "--calibration-seconds", "4"]
    assert main([*args, "--rounds", "1"]) == 0
    report = json.loads((out / "quantization.json").read_text())
    medians = report["sdr"]["median"]
    change = medians["int8"]["vocals"] - medians["float32"]["vocals"]
    assert report["vocals_sdr_change_db"] == pytest.approx(change)
    assert report["sdr_target_met"] == (change >= -0.1)
    assert report["calibration"]["blocks"] > 0 and report["calibration"]["split"] == "train"
    assert set(report["sdr"]["per_track"]["int8"]) == set(report["sdr"]["per_track"]["float32"])
    assert OnnxModel(out / "model.int8.onnx").info == OnnxModel(out / "model.onnx").info
    assert all(v["cpu_median_ms"] > 0 for v in report["latency"].values())

    other_rate = dict(synthetic_dm_kwargs, rate=22050)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": other_rate}))
    assert main(args) == 2
