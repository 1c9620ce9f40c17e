"""Latency per block: baseline, final and pruned model; eager, TorchScript, ONNX Runtime.

``python -m lightning_modules.inference.latency --out results/bench`` (part of ``make bench``)
times one block of C = 8 frames (batch 1) through each model's exported spectral pipeline, with
1 and 2 threads, all in one run: configurations are interleaved round by round, so a change in the
machine's load hits all of them alike and the ratios within the run stay meaningful even when
the absolute times are noisy. It also times ONNX Runtime with the block's STFT and iSTFT
(``stream.BlockStream``), which is what a real-time loop pays per block.

Writes ``<out>/latency.json`` and ``<out>/latency.md``: median and 95th percentile per block,
speed-up against the baseline with the same runtime and threads, real-time factor
(block time / the 128 ms of new audio per block), the thesis's targets, and where they were
measured: commit, date, machine, and the load before and after (``datamodules.provenance``).
Weights are untrained (latency does not depend on them); the JSON says how each model's
structure was obtained. Like export and streaming, it times the thesis's setting only: a
config or checkpoint with another STFT, stereo input or several targets is refused.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from jsonargparse import ArgumentParser

from datamodules.files import write_atomic
from datamodules.provenance import load_average, markdown_line, provenance
from lightning_modules.inference.export import (
    SpectralPipeline,
    check_export,
    export_onnx,
    export_torchscript,
    inference_pipeline,
)
from lightning_modules.inference.runtime import OnnxModel, TorchScriptModel, torch_threads
from lightning_modules.inference.stats import count_call_macs, count_macs
from lightning_modules.inference.stream import BlockStream
from lightning_modules.inference.support import (
    checkpoint_setting,
    config_setting,
    model_setting,
    require_thesis_setting,
)
from lightning_modules.nets.pruning import (
    get_threshold,
    has_psp,
    remove_pruned_channels,
    set_threshold,
    sparsity,
)
from lightning_modules.separators.checkpoint import load_separator
from lightning_modules.separators.separator import Separator
from lightning_modules.separators.spectrogram import SpectrogramSeparator

FRAMES = 8
THREADS = (1, 2)
BACKENDS = ("eager", "torchscript", "onnxruntime", "onnxruntime+stft")
BASELINE_CONFIG = Path("experiments/mmdensenet/baseline.yaml")
FINAL_CONFIG = Path("experiments/mmdensenet/mel_mdensenet_dc_nodsconvs_bc.yaml")
#: Thesis 5.5.1: the pruned final model ~4 ms per block, 6.5x faster than the baseline (26 ms).
TARGET_SPEEDUP, TARGET_MS = 6.5, 4.0
#: Thesis Table 5.10: PSP at epsilon 0.18 on the final model.
THESIS_PSP = {"threshold": 0.18, "macs_reduction": 0.0652, "params_reduction": 0.0524}


@dataclass
class Candidate:
    """One model to time: its separator and how its structure was obtained."""

    name: str
    separator: SpectrogramSeparator
    config: str
    structure: str


def separator_from_config(
    path: Path, frames: int = FRAMES, **overrides: object
) -> SpectrogramSeparator:
    """The experiment's model (untrained, seed 0) at ``frames`` frames of context."""
    if not path.is_file():
        raise FileNotFoundError(f"experiment config {path} does not exist")
    config = yaml.safe_load(path.read_text())
    require_thesis_setting(config_setting(config), "latency", str(path))
    model = dict(config["model"])
    model["init_args"] = {
        **model.get("init_args", {}),
        "rate": config.get("data", {}).get("rate", 32000),
        "context_frames": frames,
        **overrides,
    }
    parser = ArgumentParser()
    parser.add_argument("--model", type=Separator)
    torch.manual_seed(0)
    separator = parser.instantiate(parser.parse_object({"model": model})).model
    if not isinstance(separator, SpectrogramSeparator):
        raise ValueError(f"{path}: {type(separator).__name__} has no spectral pipeline to time")
    return separator.eval()


def net_macs(separator: SpectrogramSeparator) -> int:
    """MACs of the separator's inference net (pruned channels removed) on one block."""
    net = separator.net
    net = remove_pruned_channels(net) if has_psp(net) else net
    net = net.inference_net() if hasattr(net, "inference_net") else net
    setting = model_setting(separator)
    bins = separator.front_end.n_mels if separator.front_end is not None else setting.stft.bins
    return count_macs(net, FRAMES, bins, setting.channels)


def prune_to_thesis_macs(separator: SpectrogramSeparator, unpruned_macs: int) -> float:
    """Raise the threshold on the untrained (U[-1, 1]) structure parameters until the MAC
    reduction reaches the thesis's trained run (Table 5.10); returns the threshold."""
    low, high = 0.0, 1.0
    for _ in range(8):  # bisection (to 1/256): the reduction grows with the threshold
        middle = (low + high) / 2
        set_threshold(separator.net, middle)
        reduction = 1 - net_macs(separator) / unpruned_macs
        low, high = (middle, high) if reduction < THESIS_PSP["macs_reduction"] else (low, middle)
    set_threshold(separator.net, high)
    return high


def pruned_candidate(final: SpectrogramSeparator, checkpoint: Path | None) -> Candidate:
    """The final model with PSP: a trained PSP run's checkpoint when given, else the final
    model's structure pruned at random to the thesis's MAC reduction."""
    if checkpoint is not None:
        # from the checkpoint's hyper-parameters: refused before the model is built
        require_thesis_setting(checkpoint_setting(checkpoint), "latency", str(checkpoint))
        separator = load_separator(checkpoint)
        if not has_psp(separator.net):
            raise ValueError(f"{checkpoint} has no PSP structure parameters")
        return Candidate(
            "pruned",
            separator,
            str(checkpoint),
            f"trained PSP run, threshold {get_threshold(separator.net):.3g}, "
            f"sparsity {sparsity(separator.net):.1%}",
        )
    separator = separator_from_config(FINAL_CONFIG, pruning={"threshold": THESIS_PSP["threshold"]})
    threshold = prune_to_thesis_macs(separator, net_macs(final))
    return Candidate(
        "pruned",
        separator,
        f"{FINAL_CONFIG} + PSP",
        "NOT from a trained PSP run: the final model's untrained structure parameters "
        f"(U[-1, 1], seed 0) thresholded at {threshold:.3f}, the threshold at which the MAC "
        f"reduction reaches the thesis's {THESIS_PSP['macs_reduction']:.2%} (Table 5.10, "
        f"epsilon 0.18); sparsity {sparsity(separator.net):.1%}; random channels, not "
        "learned ones",
    )


def candidates(pruned_checkpoint: Path | None = None) -> tuple[list[Candidate], dict[str, str]]:
    found = [
        Candidate(
            "baseline",
            separator_from_config(BASELINE_CONFIG),
            str(BASELINE_CONFIG),
            "the thesis's MMDenseNet, untrained weights",
        )
    ]
    unavailable = {}
    if FINAL_CONFIG.is_file():
        final = separator_from_config(FINAL_CONFIG)
        found.append(
            Candidate("final", final, str(FINAL_CONFIG), "Mel-MDenseNet-DC-NoDSConvs-BC, untrained")
        )
        found.append(pruned_candidate(final, pruned_checkpoint))
    else:
        unavailable["final"] = f"{FINAL_CONFIG} does not exist in this build"
        unavailable["pruned"] = "needs the final model"
    return found, unavailable


def pipeline_macs(pipeline: SpectralPipeline, bins: int) -> int:
    """MACs of one block through the whole pipeline (net, Mel projections, mask)."""
    return count_call_macs(pipeline, torch.zeros(1, bins, FRAMES))


def runners(
    separator: SpectrogramSeparator, pipeline: SpectralPipeline, info, folder: Path
) -> dict[tuple[str, int], Callable[[], object]]:
    """One timed call per (backend, threads), each on the same random block; the exported
    graphs are checked against the PyTorch model first (a fast wrong graph proves nothing)."""
    block = np.random.default_rng(0).random((1, info.bins, FRAMES), dtype=np.float32)
    tensor = torch.from_numpy(block)
    onnx_path = export_onnx(pipeline, info, folder / "model.onnx")
    script_path = export_torchscript(pipeline, info, folder / "model.pt")
    for path in (onnx_path, script_path):
        check_export(separator, path, info)
    calls: dict[tuple[str, int], Callable[[], object]] = {}
    audio = np.random.default_rng(1).standard_normal(FRAMES * info.hop) * 0.1
    for threads in THREADS:

        def eager(threads: int = threads) -> object:
            with torch_threads(threads), torch.inference_mode():
                return pipeline(tensor)

        script, session = TorchScriptModel(script_path, threads), OnnxModel(onnx_path, threads)
        stream = BlockStream(OnnxModel(onnx_path, threads), info)
        stream.push(np.zeros(stream.span))  # past the first block, whose output is shorter
        calls["eager", threads] = eager
        calls["torchscript", threads] = lambda script=script: script(block)
        calls["onnxruntime", threads] = lambda session=session: session(block)
        calls["onnxruntime+stft", threads] = lambda stream=stream: stream.push(audio)
    return calls


def time_rounds(
    calls: dict[tuple, Callable[[], object]], rounds: int, per_round: int
) -> tuple[dict[tuple, list[float]], dict[tuple, list[float]]]:
    """Round-robin timing: every round runs every configuration ``per_round + 1`` times and
    keeps all but the first (it pays for switching thread pools). Returns wall-clock and
    calling-thread CPU milliseconds per call: on a loaded machine the wall clock includes the
    time the process waits for a core; the thread's CPU time does not, and with one thread it
    is the whole computation."""
    wall: dict[tuple, list[float]] = {key: [] for key in calls}
    cpu: dict[tuple, list[float]] = {key: [] for key in calls}
    for call in calls.values():  # warm-up: allocations, TorchScript's profiling runs
        for _ in range(3):
            call()
    for index in range(rounds):
        for key, call in calls.items():
            call()
            for _ in range(per_round):
                start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
                call()
                cpu[key].append((time.thread_time_ns() - start_cpu) / 1e6)
                wall[key].append((time.perf_counter_ns() - start) / 1e6)
        if (index + 1) % 5 == 0:
            print(f"  round {index + 1}/{rounds}", flush=True)
    return wall, cpu


def summarise(
    times: dict[tuple, list[float]],
    block_ms: float,
    cpu: dict[tuple, list[float]] | None = None,
    baseline: str = "baseline",
) -> list[dict]:
    """One row per configuration. ``cpu_median_ms`` only for one thread (with two, the
    calling thread's CPU time misses the worker's)."""
    rows = []
    medians = {key: float(np.median(values)) for key, values in times.items()}
    cpu_medians = {
        key: float(np.median(values)) for key, values in (cpu or {}).items() if key[2] == 1
    }
    for (model, backend, threads), values in times.items():
        key = (model, backend, threads)
        median, reference = medians[key], medians.get((baseline, backend, threads))
        cpu_median = cpu_medians.get(key)
        cpu_reference = cpu_medians.get((baseline, backend, threads))
        rows.append(
            {
                "model": model,
                "backend": backend,
                "threads": threads,
                "median_ms": median,
                "p95_ms": float(np.percentile(values, 95)),
                "n": len(values),
                "realtime_factor": median / block_ms,
                "speedup_vs_baseline": reference / median if reference else None,
                "cpu_median_ms": cpu_median,
                "cpu_speedup_vs_baseline": (
                    cpu_reference / cpu_median if cpu_reference and cpu_median else None
                ),
            }
        )
    return rows


def targets(rows: list[dict]) -> dict:
    """The thesis's figures against this run's ONNX Runtime network pass on one thread."""
    by = {(r["model"], r["backend"], r["threads"]): r for r in rows}
    best = next((m for m in ("pruned", "final") if (m, "onnxruntime", 1) in by), None)
    if best is None:
        return {"checked": False, "why": "neither the final nor the pruned model is in this run"}
    row = by[best, "onnxruntime", 1]
    return {
        "checked": True,
        "model": best,
        "backend": "onnxruntime, 1 thread, network pass",
        "speedup_vs_baseline": row["speedup_vs_baseline"],
        "speedup_target": TARGET_SPEEDUP,
        "speedup_met": row["speedup_vs_baseline"] >= TARGET_SPEEDUP,
        "median_ms": row["median_ms"],
        "ms_target": TARGET_MS,
        "ms_met": row["median_ms"] < TARGET_MS,
        # load-independent reading: the CPU time of the one thread that computes the block
        "cpu_median_ms": row["cpu_median_ms"],
        "cpu_speedup_vs_baseline": row["cpu_speedup_vs_baseline"],
        "cpu_ms_met": row["cpu_median_ms"] is not None and row["cpu_median_ms"] < TARGET_MS,
    }


def markdown(result: dict) -> str:
    block = result["block"]
    lines = [
        "# Latency per block",
        "",
        f"One block of {block['frames']} frames (batch 1): {block['new_ms']:.0f} ms of new "
        f"audio, {block['span_ms']:.0f} ms seen, at {block['rate']} Hz. Measured on "
        f"{markdown_line(result)} the run (torch {result['machine']['torch']}, ONNX Runtime "
        f"{result['machine']['onnxruntime']}): on a loaded machine absolute times are noisy; "
        "the configurations were interleaved, so ratios within the run are fairer.",
        "",
        "CPU ms: the calling thread's CPU time per block (one thread only), which the",
        "load does not inflate.",
        "",
        "| model | runtime | threads | median ms | p95 ms | real-time factor | "
        "speed-up vs baseline | CPU ms | CPU speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(value: float | None) -> str:
        return f"{value:.2f}x" if value else "-"

    for r in result["rows"]:
        cpu_ms = f"{r['cpu_median_ms']:.2f}" if r.get("cpu_median_ms") else "-"
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['threads']} | {r['median_ms']:.2f} | "
            f"{r['p95_ms']:.2f} | {r['realtime_factor']:.3f} | "
            f"{ratio(r['speedup_vs_baseline'])} | {cpu_ms} | "
            f"{ratio(r.get('cpu_speedup_vs_baseline'))} |"
        )
    lines += ["", "Models:"]
    for name, model in result["models"].items():
        lines.append(
            f"- **{name}**: {model['parameters']:,} parameters, {model['macs'] / 1e6:.1f} M MACs "
            f"per block, {model['folded_batchnorms']} BatchNorms folded; {model['structure']} "
            f"(`{model['config']}`)"
        )
    for name, why in result["unavailable"].items():
        lines.append(f"- **{name}**: not measured: {why}")
    t = result["targets"]
    lines += ["", "Targets (thesis 5.5.1: ~4 ms per block, 6.5x faster than the baseline):"]
    if t["checked"]:
        lines.append(
            f"- {t['model']}, {t['backend']}: {t['speedup_vs_baseline']:.2f}x vs baseline "
            f"(target {t['speedup_target']}x: {'met' if t['speedup_met'] else 'missed'}), "
            f"{t['median_ms']:.2f} ms (target < {t['ms_target']} ms: "
            f"{'met' if t['ms_met'] else 'missed'})"
        )
        if t.get("cpu_median_ms"):
            lines.append(
                f"- the same on CPU time: {t['cpu_speedup_vs_baseline']:.2f}x vs baseline, "
                f"{t['cpu_median_ms']:.2f} ms ({'met' if t['cpu_ms_met'] else 'missed'})"
            )
    else:
        lines.append(f"- not checked: {t['why']}")
    return "\n".join(lines) + "\n"


def run(
    out_dir: Path, rounds: int = 10, per_round: int = 2, pruned_checkpoint: Path | None = None
) -> dict:
    record = provenance()  # the load before anything is built
    print("building the models ...", flush=True)
    found, unavailable = candidates(pruned_checkpoint)
    calls, models = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for candidate in found:
            print(f"exporting {candidate.name} ...", flush=True)
            pipeline, info = inference_pipeline(candidate.separator, FRAMES, candidate.config)
            folder = Path(tmp) / candidate.name
            folder.mkdir()
            for (backend, threads), call in runners(
                candidate.separator, pipeline, info, folder
            ).items():
                calls[candidate.name, backend, threads] = call
            models[candidate.name] = {
                "config": candidate.config,
                "structure": candidate.structure,
                "parameters": info.parameters,
                "macs": pipeline_macs(pipeline, info.bins),
                "folded_batchnorms": len(info.folded_batchnorms),
                "pruned": info.pruned,
            }
        print(f"timing {len(calls)} configurations, {rounds} rounds ...", flush=True)
        times, cpu = time_rounds(calls, rounds, per_round)
    rate = found[0].separator.rate
    block_ms = 1000 * FRAMES * info.hop / rate
    rows = summarise(times, block_ms, cpu)
    result = {
        **record,
        "machine": {
            **record["machine"],
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "load_after": load_average(),
        "block": {
            "frames": FRAMES,
            "rate": rate,
            "new_ms": block_ms,
            "span_ms": 1000 * (info.n_fft + (FRAMES - 1) * info.hop) / rate,
        },
        "timing": {"rounds": rounds, "per_round": per_round, "warm_up_calls": 3},
        "thesis": {
            "block_ms": {"baseline": 26.0, "pruned": 4.0},
            "machine": "Intel Core i7-8700B, 6 cores (Mac mini 2018), ONNX Runtime with DNNL",
            "psp": THESIS_PSP,
        },
        "models": models,
        "unavailable": unavailable,
        "rows": rows,
    }
    result["targets"] = targets(rows)
    write_atomic(out_dir / "latency.json", json.dumps(result, indent=1))
    write_atomic(out_dir / "latency.md", markdown(result))
    print(markdown(result))
    print(f"wrote {out_dir / 'latency.json'} and {out_dir / 'latency.md'}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--pruned-checkpoint",
        type=Path,
        help="a trained PSP run to time as the pruned model (default: the final model's "
        "structure pruned at random to the thesis's MAC reduction)",
    )
    args = parser.parse_args()
    run(args.out, args.rounds, pruned_checkpoint=args.pruned_checkpoint)


if __name__ == "__main__":
    main()
