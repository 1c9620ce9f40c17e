"""Latency per block: baseline, final and pruned model and an Open-Unmix peer; eager,
TorchScript, ONNX Runtime, OpenVINO.

``python -m lightning_modules.inference.latency --out results/bench`` (part of ``make bench``)
times one block of C = 8 frames (batch 1) through each model's exported spectral pipeline, with
1 and 2 threads, all in one run: configurations are interleaved round by round, so a change in the
machine's load hits all of them alike and the ratios within the run stay meaningful even when
the absolute times are noisy. It also times ONNX Runtime with the block's STFT and iSTFT
(``stream.BlockStream``), which is what a real-time loop pays per block (the thesis's models
only: the streaming loop is mono). OpenVINO rows need the ``openvino`` extra; without it the
files say so.

Each call is timed twice: the calling thread's CPU time (``time.thread_time``), which is the
whole computation with one thread and which waiting for a busy core does not inflate, and the
wall clock beside it. The peer (``peers.OpenUnmix``: UMX-HQ, one target, stereo, 44.1 kHz, hop
1024) carries 186 ms of new audio per 8-frame block against our 128 ms, so models are compared
per second of audio (CPU ms per second, real-time factor), not per block.

The compute floor: a 512 x 512 x 512 single-thread float32 matrix product (``torch.mm``) is
timed in the same rounds, interleaved with the models; its MACs per CPU second are the machine's
rate, and each model's floor is its block MACs (``stats.count_call_macs``, the suite's counter)
divided by that rate. A block's CPU time divided by its floor says how far a runtime is from
running the model's products at GEMM speed.

Writes ``<out>/latency.json`` and ``<out>/latency.md``: CPU and wall medians per block, 95th
percentile, per second of audio, speed-ups against the baseline with the same runtime and
threads, multiples of the compute floor, the thesis's targets and issue #17's (final model at
most half of Open-Unmix's CPU time per second of audio, within 1.3x of its floor), and where
they were measured: commit, date, machine, and the load before and after
(``datamodules.provenance``). Weights are untrained (latency does not depend on them); the JSON
says how each model's structure was obtained. The pruned model is a trained PSP checkpoint when
one is given or found under ``--runs-dir`` (the newest run whose config has ``pruning``), else
the final model's structure pruned at random, and the files say which. Like export and
streaming, it times the thesis's setting only: a config or checkpoint with another STFT, stereo
input or several targets is refused (the peer is the benchmark's own model).
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
from torch import nn

from datamodules.files import write_atomic
from datamodules.provenance import load_average, markdown_line, provenance
from lightning_modules.inference.export import (
    check_export,
    check_outputs,
    example_block,
    export_onnx,
    export_torchscript,
    inference_pipeline,
)
from lightning_modules.inference.graph import ExportInfo
from lightning_modules.inference.peers import UMXHQ, openunmix_pipeline
from lightning_modules.inference.runtime import (
    OnnxModel,
    OpenVinoModel,
    TorchScriptModel,
    torch_threads,
)
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
BACKENDS = ("eager", "torchscript", "onnxruntime", "openvino", "onnxruntime+stft")
#: Runtimes of an exported graph whose one-thread CPU times the targets compare.
EXPORTED = ("onnxruntime", "openvino")
#: The compute floor's matrix product: GEMM x GEMM times GEMM x GEMM, float32, one thread.
GEMM = 512
GEMM_KEY = ("gemm", f"torch.mm {GEMM}x{GEMM}", 1)
BASELINE_CONFIG = Path("experiments/mmdensenet/baseline.yaml")
FINAL_CONFIG = Path("experiments/mmdensenet/mel_mdensenet_dc_nodsconvs_bc.yaml")
#: Thesis 5.5.1: the pruned final model ~4 ms per block, 6.5x faster than the baseline (26 ms).
TARGET_SPEEDUP, TARGET_MS = 6.5, 4.0
#: Thesis Table 5.10: PSP at epsilon 0.18 on the final model.
THESIS_PSP = {"threshold": 0.18, "macs_reduction": 0.0652, "params_reduction": 0.0524}
#: Issue #17: the final model's CPU time per second of audio at most this fraction of
#: Open-Unmix's (same run, same runtime), and its block within this multiple of its floor.
TARGET_VS_PEER, TARGET_FLOOR = 0.5, 1.3
PEER = "open-unmix"


@dataclass
class Candidate:
    """One model to time: its separator (or, for a peer, its network and export metadata)
    and how its structure was obtained."""

    name: str
    separator: SpectrogramSeparator | None
    config: str
    structure: str
    peer: tuple[nn.Module, ExportInfo] | None = None


def openunmix_candidate() -> Candidate:
    net, info = openunmix_pipeline(FRAMES)
    return Candidate(
        PEER,
        None,
        "lightning_modules/inference/peers.py",
        f"Open-Unmix UMX-HQ shapes, one target, untrained: stereo, {UMXHQ['rate']} Hz, STFT "
        f"{UMXHQ['n_fft']} / hop {UMXHQ['hop']} ({info.bins} bins, the first "
        f"{net.max_bin} below {UMXHQ['bandwidth']} Hz into the network), hidden "
        f"{UMXHQ['hidden']}, {UMXHQ['layers']} bidirectional LSTM layers; input and output "
        f"(1, 2, {info.bins}, {FRAMES})",
        (net, info),
    )


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


def find_psp_checkpoint(runs_dir: Path) -> Path | None:
    """The newest ``<runs_dir>/<run>/checkpoints/best.ckpt`` whose run config has PSP
    (``model.init_args.pruning`` set), read only; None when there is none."""
    found = []
    for config in sorted(runs_dir.glob("*/config.yaml")):
        checkpoint = config.parent / "checkpoints" / "best.ckpt"
        try:
            model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
        except (OSError, yaml.YAMLError):
            continue  # a run being written or a foreign file: not a candidate
        if isinstance(model, dict) and (model.get("init_args") or {}).get("pruning"):
            if checkpoint.is_file():
                found.append((checkpoint.stat().st_mtime, checkpoint))
    return max(found)[1] if found else None


def pruned_candidate(
    final: SpectrogramSeparator, checkpoint: Path | None, searched: str = ""
) -> Candidate:
    """The final model with PSP: a trained PSP run's checkpoint when given, else the final
    model's structure pruned at random to the thesis's MAC reduction (``searched``: where a
    checkpoint was looked for, which the structure's description names)."""
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
        f"{searched}NOT from a trained PSP run: the final model's untrained structure parameters "
        f"(U[-1, 1], seed 0) thresholded at {threshold:.3f}, the threshold at which the MAC "
        f"reduction reaches the thesis's {THESIS_PSP['macs_reduction']:.2%} (Table 5.10, "
        f"epsilon 0.18); sparsity {sparsity(separator.net):.1%}; random channels, not "
        "learned ones",
    )


def candidates(
    pruned_checkpoint: Path | None = None, runs_dir: Path | None = None
) -> tuple[list[Candidate], dict[str, str]]:
    searched = ""
    if pruned_checkpoint is None and runs_dir is not None:
        pruned_checkpoint = find_psp_checkpoint(runs_dir)
        if pruned_checkpoint is None:
            searched = f"no PSP checkpoint under {runs_dir}/*/checkpoints/best.ckpt; "
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
        found.append(pruned_candidate(final, pruned_checkpoint, searched))
    else:
        unavailable["final"] = f"{FINAL_CONFIG} does not exist in this build"
        unavailable["pruned"] = "needs the final model"
    found.append(openunmix_candidate())
    return found, unavailable


Check = Callable[[Path, str], float]


def exportable(candidate: Candidate) -> tuple[nn.Module, ExportInfo, Check]:
    """The module to export, its metadata, and the check of an exported file in a runtime
    against the PyTorch model (``export.TOLERANCE``, 1e-4 of the output's scale)."""
    if candidate.peer is not None:
        net, info = candidate.peer
        block = example_block(info, torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = net(block).numpy()

        def check_peer(path: Path, runtime: str) -> float:
            return check_outputs(expected, block.numpy(), path, runtime)

        return net, info, check_peer
    separator = candidate.separator
    pipeline, info = inference_pipeline(separator, FRAMES, candidate.config)

    def check(path: Path, runtime: str) -> float:
        return check_export(separator, path, info, runtime=runtime)

    return pipeline, info, check


def pipeline_macs(pipeline: nn.Module, info: ExportInfo) -> int:
    """MACs of one block through the whole pipeline (net, Mel projections, mask)."""
    return count_call_macs(pipeline, torch.zeros(example_block(info).shape))


def openvino_available() -> str | None:
    """None when OpenVINO can be imported, else why not."""
    try:
        import openvino  # noqa: F401
    except ImportError as error:
        return f"OpenVINO is not installed (pip install -e '.[openvino]'): {error}"
    return None


def runners(
    pipeline: nn.Module, info: ExportInfo, folder: Path, check: Check
) -> dict[tuple[str, int], Callable[[], object]]:
    """One timed call per (backend, threads), each on the same random block; the exported
    graphs are checked against the PyTorch model first in every runtime that runs them (a
    fast wrong graph proves nothing)."""
    block = example_block(info, torch.Generator().manual_seed(1)).numpy()
    tensor = torch.from_numpy(block)
    onnx_path = export_onnx(pipeline, info, folder / "model.onnx")
    script_path = export_torchscript(pipeline, info, folder / "model.pt")
    openvino = openvino_available() is None
    check(onnx_path, "onnxruntime")
    check(script_path, "torchscript")
    if openvino:
        check(onnx_path, "openvino")
    calls: dict[tuple[str, int], Callable[[], object]] = {}
    audio = np.random.default_rng(1).standard_normal(FRAMES * info.hop) * 0.1
    for threads in THREADS:

        def eager(threads: int = threads) -> object:
            with torch_threads(threads), torch.inference_mode():
                return pipeline(tensor)

        script, session = TorchScriptModel(script_path, threads), OnnxModel(onnx_path, threads)
        calls["eager", threads] = eager
        calls["torchscript", threads] = lambda script=script: script(block)
        calls["onnxruntime", threads] = lambda session=session: session(block)
        if openvino:
            compiled = OpenVinoModel(onnx_path, threads)
            calls["openvino", threads] = lambda compiled=compiled: compiled(block)
        if info.channels == 1:  # the streaming loop is mono (the peer is stereo)
            stream = BlockStream(OnnxModel(onnx_path, threads), info)
            stream.push(np.zeros(stream.span))  # past the first block, whose output is shorter
            calls["onnxruntime+stft", threads] = lambda stream=stream: stream.push(audio)
    return calls


def gemm_call() -> Callable[[], object]:
    """One single-thread float32 GEMM x GEMM x GEMM product, the compute floor's yardstick."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.rand(GEMM, GEMM, generator=generator) for _ in range(2))
    out = torch.empty(GEMM, GEMM)

    def gemm() -> object:
        with torch_threads(1):
            return torch.mm(a, b, out=out)

    return gemm


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
    block_ms: float | dict[str, float],
    cpu: dict[tuple, list[float]] | None = None,
    baseline: str = "baseline",
    macs: dict[str, int] | None = None,
    mac_rate: float | None = None,
) -> list[dict]:
    """One row per configuration. ``block_ms``: the new audio per block, one figure or one per
    model. ``cpu_median_ms`` only for one thread (with two, the calling thread's CPU time misses
    the worker's); with ``macs`` (per model, per block) and ``mac_rate`` (MACs per CPU second),
    each one-thread row's CPU time as a multiple of its compute floor."""
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
        new_ms = block_ms[model] if isinstance(block_ms, dict) else block_ms
        # speed-ups per second of audio: a peer's block carries more audio than ours
        per_s = new_ms / (block_ms.get(baseline, new_ms) if isinstance(block_ms, dict) else new_ms)
        floor_ms = 1000 * macs[model] / mac_rate if macs and mac_rate and model in macs else None
        rows.append(
            {
                "model": model,
                "backend": backend,
                "threads": threads,
                "new_audio_ms": new_ms,
                "cpu_median_ms": cpu_median,
                "cpu_ms_per_s": 1000 * cpu_median / new_ms if cpu_median else None,
                "floor_ms": floor_ms,
                "floor_multiple": cpu_median / floor_ms if cpu_median and floor_ms else None,
                "median_ms": median,
                "p95_ms": float(np.percentile(values, 95)),
                "n": len(values),
                "realtime_factor": median / new_ms,
                "cpu_realtime_factor": cpu_median / new_ms if cpu_median else None,
                "speedup_vs_baseline": per_s * reference / median if reference else None,
                "cpu_speedup_vs_baseline": (
                    per_s * cpu_reference / cpu_median if cpu_reference and cpu_median else None
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


def peer_targets(rows: list[dict], model: str = "final", peer: str = PEER) -> dict:
    """Issue #17's targets for ``model`` in each exported runtime on one thread, from CPU times
    of this run: CPU ms per second of audio at most ``TARGET_VS_PEER`` of the peer's, and the
    block within ``TARGET_FLOOR`` x its compute floor. ``best`` compares each model in its own
    fastest runtime. A figure that was not measured is reported as such, never as met."""
    by = {(r["model"], r["backend"], r["threads"]): r for r in rows}
    runtimes = {}
    for runtime in EXPORTED:
        ours, theirs = by.get((model, runtime, 1)), by.get((peer, runtime, 1))
        if ours is None or not ours.get("cpu_ms_per_s"):
            continue
        entry = {
            "cpu_ms_per_s": ours["cpu_ms_per_s"],
            "floor_multiple": ours.get("floor_multiple"),
            "floor_met": (
                ours["floor_multiple"] <= TARGET_FLOOR if ours.get("floor_multiple") else None
            ),
        }
        if theirs is not None and theirs.get("cpu_ms_per_s"):
            ratio = ours["cpu_ms_per_s"] / theirs["cpu_ms_per_s"]
            entry |= {
                "peer_cpu_ms_per_s": theirs["cpu_ms_per_s"],
                "vs_peer": ratio,
                "vs_peer_met": ratio <= TARGET_VS_PEER,
            }
        runtimes[runtime] = entry
    if not runtimes:
        return {"checked": False, "why": f"no one-thread CPU time of {model} in this run"}

    def fastest(name: str) -> dict | None:
        measured = [
            by[name, runtime, 1]
            for runtime in EXPORTED
            if by.get((name, runtime, 1)) and by[name, runtime, 1].get("cpu_ms_per_s")
        ]
        return min(measured, key=lambda r: r["cpu_ms_per_s"]) if measured else None

    ours, theirs = fastest(model), fastest(peer)
    best = {"model_runtime": ours["backend"], "cpu_ms_per_s": ours["cpu_ms_per_s"]}
    if theirs is not None:
        ratio = ours["cpu_ms_per_s"] / theirs["cpu_ms_per_s"]
        best |= {
            "peer_runtime": theirs["backend"],
            "peer_cpu_ms_per_s": theirs["cpu_ms_per_s"],
            "vs_peer": ratio,
            "vs_peer_met": ratio <= TARGET_VS_PEER,
        }
    else:
        best |= {"vs_peer": None, "vs_peer_met": None, "why": f"{peer} was not measured"}
    multiple = ours.get("floor_multiple")
    best |= {
        "floor_multiple": multiple,
        "floor_met": multiple <= TARGET_FLOOR if multiple else None,
    }
    return {
        "checked": True,
        "model": model,
        "peer": peer,
        "vs_peer_target": TARGET_VS_PEER,
        "floor_target": TARGET_FLOOR,
        "runtimes": runtimes,
        "best": best,
    }


def _met(value: bool | None) -> str:
    return "not measured" if value is None else ("met" if value else "not met")


def peer_lines(t: dict) -> list[str]:
    """Markdown lines of ``peer_targets``."""
    if not t["checked"]:
        return [f"- not checked: {t['why']}"]
    lines = []
    for runtime, entry in t["runtimes"].items():
        vs_peer = (
            f"{entry['cpu_ms_per_s']:.2f} CPU ms per s of audio against {t['peer']}'s "
            f"{entry['peer_cpu_ms_per_s']:.2f} = {entry['vs_peer']:.2f}x (target <= "
            f"{t['vs_peer_target']}x: {_met(entry['vs_peer_met'])})"
            if "vs_peer" in entry
            else f"{entry['cpu_ms_per_s']:.2f} CPU ms per s of audio ({t['peer']}: not measured)"
        )
        floor = (
            f"{entry['floor_multiple']:.2f}x its compute floor"
            if entry["floor_multiple"]
            else "compute floor not measured"
        )
        lines.append(
            f"- {t['model']}, {runtime}, 1 thread: {vs_peer}; {floor} (target <= "
            f"{t['floor_target']}x: {_met(entry['floor_met'])})"
        )
    b = t["best"]
    if b.get("vs_peer") is not None:
        lines.append(
            f"- each in its fastest runtime: {t['model']} ({b['model_runtime']}) "
            f"{b['cpu_ms_per_s']:.2f} vs {t['peer']} ({b['peer_runtime']}) "
            f"{b['peer_cpu_ms_per_s']:.2f} CPU ms per s of audio = {b['vs_peer']:.2f}x "
            f"({_met(b['vs_peer_met'])}); floor {_met(b['floor_met'])}"
        )
    return lines


def markdown(result: dict) -> str:
    block = result["block"]
    lines = [
        "# Latency per block",
        "",
        f"One block of {block['frames']} frames (batch 1): {block['new_ms']:.0f} ms of new "
        f"audio, {block['span_ms']:.0f} ms seen, at {block['rate']} Hz. Measured on "
        f"{markdown_line(result)} the run (torch {result['machine']['torch']}, ONNX Runtime "
        f"{result['machine']['onnxruntime']}, OpenVINO "
        f"{result['machine'].get('openvino') or 'not installed'}): on a loaded machine wall "
        "times are noisy; the configurations were interleaved, so ratios within the run are "
        "fairer.",
        "",
        "CPU ms: the calling thread's CPU time per block (one thread only: with two, the "
        "worker's time is missed), which waiting for a busy core does not inflate; lead with it. "
        "Wall ms beside it. Per s: CPU ms per second of new audio (the Open-Unmix peer's "
        "block carries more audio than ours). x floor: CPU ms / (block MACs / the measured "
        "single-thread GEMM rate). Speed-ups are per second of audio, against the baseline in "
        "the same runtime and threads.",
        "",
    ]
    gemm = result.get("gemm")
    if gemm:
        lines += [
            f"Compute floor: a {gemm['size']}x{gemm['size']} float32 `torch.mm` on one thread, "
            f"timed in the same rounds: {gemm['cpu_median_ms']:.3f} CPU ms "
            f"({gemm['wall_median_ms']:.3f} wall) = {gemm['macs_per_s'] / 1e9:.1f} GMAC/s.",
            "",
        ]
    lines += [
        "| model | runtime | threads | CPU ms | CPU ms per s | x floor | wall ms | wall p95 ms | "
        "real-time factor (wall) | speed-up (CPU) | speed-up (wall) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(value: float | None) -> str:
        return f"{value:.2f}x" if value else "-"

    def figure(value: float | None, digits: int = 2) -> str:
        return f"{value:.{digits}f}" if value else "-"

    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['threads']} | {figure(r.get('cpu_median_ms'))} "
            f"| {figure(r.get('cpu_ms_per_s'), 1)} | {ratio(r.get('floor_multiple'))} | "
            f"{r['median_ms']:.2f} | {r['p95_ms']:.2f} | {r['realtime_factor']:.3f} | "
            f"{ratio(r.get('cpu_speedup_vs_baseline'))} | {ratio(r['speedup_vs_baseline'])} |"
        )
    lines += ["", "Models:"]
    for name, model in result["models"].items():
        new_ms = f", {model['new_audio_ms']:.0f} ms of new audio" if "new_audio_ms" in model else ""
        lines.append(
            f"- **{name}**: {model['parameters']:,} parameters, {model['macs'] / 1e6:.1f} M MACs "
            f"per block{new_ms}, {model['folded_batchnorms']} BatchNorms folded; "
            f"{model['structure']} (`{model['config']}`)"
        )
    for name, why in result["unavailable"].items():
        lines.append(f"- **{name}**: not measured: {why}")
    if result.get("peer_targets"):
        lines += [
            "",
            f"Targets (issue #17: CPU time per second of audio at most {TARGET_VS_PEER}x "
            f"Open-Unmix's, block within {TARGET_FLOOR}x its compute floor; CPU times, this run):",
            *peer_lines(result["peer_targets"]),
        ]
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
    out_dir: Path,
    rounds: int = 10,
    per_round: int = 2,
    pruned_checkpoint: Path | None = None,
    runs_dir: Path | None = None,
) -> dict:
    record = provenance()  # the load before anything is built
    print("building the models ...", flush=True)
    found, unavailable = candidates(pruned_checkpoint, runs_dir)
    calls, models, infos = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for candidate in found:
            print(f"exporting {candidate.name} ...", flush=True)
            pipeline, info, check = exportable(candidate)
            folder = Path(tmp) / candidate.name
            folder.mkdir()
            for (backend, threads), call in runners(pipeline, info, folder, check).items():
                calls[candidate.name, backend, threads] = call
            infos[candidate.name] = info
            models[candidate.name] = {
                "config": candidate.config,
                "structure": candidate.structure,
                "parameters": info.parameters,
                "macs": pipeline_macs(pipeline, info),
                "folded_batchnorms": len(info.folded_batchnorms),
                "pruned": info.pruned,
                "rate": info.rate,
                "channels": info.channels,
                "new_audio_ms": 1000 * FRAMES * info.hop / info.rate,
            }
        calls[GEMM_KEY] = gemm_call()  # timed in the same rounds as the models
        print(f"timing {len(calls)} configurations, {rounds} rounds ...", flush=True)
        times, cpu = time_rounds(calls, rounds, per_round)
    gemm_wall, gemm_cpu = times.pop(GEMM_KEY), cpu.pop(GEMM_KEY)
    gemm = {
        "size": GEMM,
        "what": f"torch.mm, float32, 1 thread, torch {torch.__version__}",
        "cpu_median_ms": float(np.median(gemm_cpu)),
        "wall_median_ms": float(np.median(gemm_wall)),
    }
    gemm["macs_per_s"] = GEMM**3 / (gemm["cpu_median_ms"] / 1000)
    thesis = next(c for c in found if c.separator is not None)
    info = infos[thesis.name]
    block_ms = 1000 * FRAMES * info.hop / info.rate
    rows = summarise(
        times,
        {name: model["new_audio_ms"] for name, model in models.items()},
        cpu,
        macs={name: model["macs"] for name, model in models.items()},
        mac_rate=gemm["macs_per_s"],
    )
    missing_openvino = openvino_available()
    if missing_openvino:
        unavailable["openvino rows"] = missing_openvino
    result = {
        **record,
        "machine": {
            **record["machine"],
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
            "openvino": None if missing_openvino else __import__("openvino").__version__,
        },
        "load_after": load_average(),
        "block": {
            "frames": FRAMES,
            "rate": info.rate,
            "new_ms": block_ms,
            "span_ms": 1000 * (info.n_fft + (FRAMES - 1) * info.hop) / info.rate,
        },
        "timing": {
            "rounds": rounds,
            "per_round": per_round,
            "warm_up_calls": 3,
            "cpu": "time.thread_time of the calling thread (one-thread rows only)",
            "wall": "time.perf_counter",
        },
        "gemm": gemm,
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
    result["peer_targets"] = peer_targets(rows)
    write_atomic(out_dir / "latency.json", json.dumps(result, indent=1))
    write_atomic(out_dir / "latency.md", markdown(result))
    print(markdown(result))
    print(f"wrote {out_dir / 'latency.json'} and {out_dir / 'latency.md'}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=2, help="timed calls per round")
    parser.add_argument(
        "--pruned-checkpoint",
        type=Path,
        help="a trained PSP run to time as the pruned model (default: the newest PSP run under "
        "--runs-dir, else the final model's structure pruned at random to the thesis's MAC "
        "reduction)",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        help="where to look for a PSP run's checkpoint (read only; default: runs)",
    )
    args = parser.parse_args()
    run(args.out, args.rounds, args.per_round, args.pruned_checkpoint, args.runs_dir)


if __name__ == "__main__":
    main()
