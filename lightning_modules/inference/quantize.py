"""int8 post-training static quantisation of an exported model, measured: its SDR change on the
test set of the run it was trained in, and its CPU time per block against the float model's.

``python -m lightning_modules.inference.quantize --checkpoint runs/<hash>/checkpoints/best.ckpt
--out DIR`` exports the checkpoint's spectral pipeline (``export.py``, blocks of 8 frames),
quantises it with ONNX Runtime's static quantisation (QDQ format, int8 weights per output
channel, uint8 activations, MinMax calibration), calibrated on the run's **training** tracks:
``--calibration-seconds`` of mixture taken evenly from every training track and streamed through
the float model exactly as ``make separate`` streams (``stream.BlockStream``), so the calibration
sees the blocks the runtime sees. The test tracks of the same run's data (its ``config.yaml``)
are then streamed through the float and the int8 model, both scored with the suite's BSS Eval
(``evaluation.bss.evaluate_track``: vocals and accompaniment, median over frames, then over
tracks), and both models are timed on one thread, interleaved (``latency.time_rounds``).

Writes ``DIR/model.onnx``, ``DIR/model.int8.onnx`` (with the export's metadata, so
``make separate MODEL=DIR/model.int8.onnx`` runs it) and ``DIR/quantization.json``: the SDR of
both per track and the change of the median (issue #17's target: no more than 0.1 dB lost),
CPU and wall ms per block, commit, machine and load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import yaml

# First: importing datamodules puts ffmpeg on PATH, which the evaluation's museval needs.
from datamodules.files import write_atomic
from datamodules.musdb_datamodule import MUSDBDataModule
from datamodules.provenance import load_average, provenance
from lightning_modules.evaluation.bss import evaluate_track
from lightning_modules.inference.graph import INPUT_NAME, METADATA_KEY, ExportInfo
from lightning_modules.inference.runtime import OnnxModel
from lightning_modules.inference.stream import BlockStream, stream_array

#: Issue #17: int8 may lose at most this much median SDR (dB) on the test set.
TARGET_SDR_LOSS = 0.1
FRAMES = 8


class Recorder:
    """A model callable that also keeps a copy of every block it is given."""

    def __init__(self, model: Callable[[np.ndarray], np.ndarray]) -> None:
        self.model = model
        self.blocks: list[np.ndarray] = []

    def __call__(self, magnitude: np.ndarray) -> np.ndarray:
        self.blocks.append(np.array(magnitude, dtype=np.float32, copy=True))
        return self.model(magnitude)


def calibration_blocks(
    model: Callable[[np.ndarray], np.ndarray], info: ExportInfo, mixtures: Iterable[np.ndarray]
) -> list[np.ndarray]:
    """The magnitude blocks the streaming loop feeds ``model`` for each mono mixture."""
    recorder = Recorder(model)
    for mixture in mixtures:
        stream = BlockStream(recorder, info)
        stream_array(stream, np.asarray(mixture, dtype=np.float64), stream.step)
    return recorder.blocks


def quantize_int8(source: Path, blocks: list[np.ndarray], out: Path) -> Path:
    """Static int8 quantisation of the ONNX export ``source``, calibrated on ``blocks``; the
    export's metadata is copied into ``out`` so the suite's runtimes load it."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not blocks:
        raise ValueError(f"{source}: no calibration blocks")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(blocks)

        def get_next(self) -> dict | None:
            block = next(self.remaining, None)
            return None if block is None else {INPUT_NAME: block}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    metadata = {p.key: p.value for p in onnx.load(str(source)).metadata_props}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{source} was not written by lightning_modules.inference.export")
    model = onnx.load(str(out))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(out))
    return out


def separated(model: OnnxModel, mixture: np.ndarray) -> np.ndarray:
    """(vocals, accompaniment) of a mono mixture, streamed as ``make separate`` does."""
    stream = BlockStream(model, model.info)
    vocals, accompaniment = stream_array(stream, np.asarray(mixture, np.float64), stream.step)
    return np.stack([vocals, accompaniment])


def sdr_report(
    models: dict[str, OnnxModel], tracks: Iterable[tuple[str, np.ndarray, np.ndarray]], rate: int
) -> dict:
    """Each model's median SDR per track and target over ``(name, mixture, references)``
    (references: vocals and accompaniment, mono), and the median over tracks."""
    per_track: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    for track, mixture, references in tracks:
        for name, model in models.items():
            scored = evaluate_track(track, references, separated(model, mixture), rate)
            per_track[name][track] = {t["name"]: t["median"]["SDR"] for t in scored["targets"]}
    report: dict = {"per_track": per_track, "median": {}}
    for name, tracks_sdr in per_track.items():
        report["median"][name] = {
            target: float(np.nanmedian([values[target] for values in tracks_sdr.values()]))
            for target in ("vocals", "accompaniment")
        }
    return report


def run_data(checkpoint: Path) -> MUSDBDataModule:
    """The data module of the run that wrote ``checkpoint`` (``<run>/config.yaml``)."""
    config_path = checkpoint.parent.parent / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{checkpoint}: no run config at {config_path} (a checkpoint of a table row's run "
            "folder is needed: its data decide the calibration and test tracks)"
        )
    data = dict(yaml.safe_load(config_path.read_text()).get("data") or {})
    data.pop("class_path", None)
    data = {**data.pop("init_args", {}), **data}
    return MUSDBDataModule(**data)


def training_mixtures(data: MUSDBDataModule, seconds: float) -> list[np.ndarray]:
    """``seconds`` of mono mixture in all, the same share from the start of every training
    track."""
    data.setup("fit")
    train = data.splits["train"]
    share = int(seconds * train.rate / len(train.names))
    return [train.sources_of(i).sum(axis=0)[0, :share] for i in range(len(train.names))]


def test_tracks(data: MUSDBDataModule) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, mono mixture, vocals and accompaniment) of the run's test tracks."""
    data.setup("test")
    tracks = []
    for item in data.test_dataloader():
        targets = item["targets"].numpy()  # (vocals, accompaniment) x channels x samples
        tracks.append((item["name"], item["mixture"].numpy()[0], targets[:, 0]))
    return tracks


def run(
    checkpoint: Path, out_dir: Path, calibration_seconds: float = 60.0, rounds: int = 10
) -> dict:
    from lightning_modules.inference.export import export
    from lightning_modules.inference.latency import time_rounds
    from lightning_modules.separators.checkpoint import load_separator

    record = provenance()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = run_data(checkpoint)
    float_path, info = export(
        load_separator(checkpoint), out_dir / "model.onnx", "onnx", FRAMES, str(checkpoint)
    )
    if data.hparams.rate != info.rate:
        raise ValueError(
            f"{checkpoint}: the model separates at {info.rate} Hz but its run's data are at "
            f"{data.hparams.rate} Hz"
        )
    float_model = OnnxModel(float_path, threads=1)
    blocks = calibration_blocks(float_model, info, training_mixtures(data, calibration_seconds))
    print(f"calibrating on {len(blocks)} blocks of the training tracks ...", flush=True)
    int8_path = quantize_int8(float_path, blocks, out_dir / "model.int8.onnx")
    models = {"float32": float_model, "int8": OnnxModel(int8_path, threads=1)}
    print("scoring the test tracks ...", flush=True)
    sdr = sdr_report(models, test_tracks(data), info.rate)
    block = np.random.default_rng(0).random((1, info.bins, FRAMES), dtype=np.float32)
    calls = {(name,): (lambda model=model: model(block)) for name, model in models.items()}
    wall, cpu = time_rounds(calls, rounds, per_round=5)
    change = sdr["median"]["int8"]["vocals"] - sdr["median"]["float32"]["vocals"]
    result = {
        **record,
        "load_after": load_average(),
        "checkpoint": str(checkpoint),
        "calibration": {"seconds": calibration_seconds, "blocks": len(blocks), "split": "train"},
        "quantization": "onnxruntime quantize_static: QDQ, int8 weights per channel, uint8 "
        "activations, MinMax calibration",
        "sdr": sdr,
        "vocals_sdr_change_db": change,
        "target_sdr_loss_db": TARGET_SDR_LOSS,
        "sdr_target_met": bool(change >= -TARGET_SDR_LOSS),
        "latency": {
            name: {
                "cpu_median_ms": float(np.median(cpu[(name,)])),
                "wall_median_ms": float(np.median(wall[(name,)])),
            }
            for name in models
        },
    }
    write_atomic(out_dir / "quantization.json", json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a table row's checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--calibration-seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        result = run(args.checkpoint, args.out, args.calibration_seconds, args.rounds)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    medians, latency = result["sdr"]["median"], result["latency"]
    print(
        f"vocals SDR: float32 {medians['float32']['vocals']:.2f} dB, int8 "
        f"{medians['int8']['vocals']:.2f} dB ({result['vocals_sdr_change_db']:+.2f} dB; target "
        f">= -{TARGET_SDR_LOSS} dB: {'met' if result['sdr_target_met'] else 'not met'}); CPU ms "
        f"per block: float32 {latency['float32']['cpu_median_ms']:.2f}, int8 "
        f"{latency['int8']['cpu_median_ms']:.2f}; wrote {args.out / 'quantization.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
