"""Benchmarks (``make bench``). Latency: speed-ups within the run, real-time factors, targets,
the timing loop on cheap calls, the Open-Unmix peer's published shapes, per second of audio,
the compute floor, issue #17's targets, the PSP checkpoint found under the runs. Both benchmarks
at toy size: every file they write under ``results/bench/`` says which commit, when, on what
machine and under what load."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch

from datamodules.provenance import git_commit, machine
from lightning_modules.inference.latency import (
    markdown,
    peer_targets,
    summarise,
    targets,
    time_rounds,
)


def _times() -> dict[tuple, list[float]]:
    return {
        ("baseline", "onnxruntime", 1): [26.0, 25.0, 27.0, 40.0],
        ("final", "onnxruntime", 1): [4.0, 3.9, 4.1, 9.0],
        ("pruned", "onnxruntime", 1): [3.8, 3.7, 3.9, 8.0],
        ("pruned", "eager", 2): [5.0, 5.0, 5.0, 5.0],  # no baseline row for it
    }


def test_speedups_and_realtime_factors_come_from_the_same_run() -> None:
    rows = {(r["model"], r["backend"], r["threads"]): r for r in summarise(_times(), 128.0)}
    final = rows["final", "onnxruntime", 1]
    assert final["median_ms"] == pytest.approx(4.05)
    assert final["speedup_vs_baseline"] == pytest.approx(26.5 / 4.05)
    assert final["realtime_factor"] == pytest.approx(4.05 / 128.0)
    assert final["p95_ms"] > final["median_ms"]  # the outlier shows in the tail only
    assert rows["pruned", "eager", 2]["speedup_vs_baseline"] is None


def test_targets_use_the_pruned_model_on_one_thread() -> None:
    checked = targets(summarise(_times(), 128.0))
    assert checked["model"] == "pruned"
    assert checked["speedup_met"] and checked["ms_met"]  # 26.5 / 3.85 = 6.9x, 3.85 ms
    slow = _times()
    slow["pruned", "onnxruntime", 1] = [5.0] * 4
    checked = targets(summarise(slow, 128.0))
    assert not checked["speedup_met"] and not checked["ms_met"]
    assert not targets(summarise({("baseline", "eager", 1): [1.0]}, 128.0))["checked"]


def test_markdown_states_the_load_and_what_was_not_measured() -> None:
    cpu = {key: [v - 1 for v in values] for key, values in _times().items()}
    rows = summarise(_times(), 128.0, cpu)
    result = {
        "commit": "abc1234",
        "date": "2026-12-07T20:03:05Z",
        "machine": {
            **machine(),
            "cpu": "Some CPU",
            "cores": 2,
            "usable_cores": 2,
            "torch": "2.13.0",
            "onnxruntime": "1.0",
        },
        "load_before": [3.5, 3.0, 2.0],
        "load_after": [4.25, 3.0, 2.0],
        "block": {"frames": 8, "rate": 32000, "new_ms": 128.0, "span_ms": 176.0},
        "models": {},
        "unavailable": {"pruned": "why not"},
        "rows": rows,
        "targets": targets(rows),
    }
    text = markdown(result)
    assert "load average 3.50 before and 4.25 after" in text
    assert "commit abc1234, 2026-12-07T20:03:05Z, Some CPU (2 cores" in text
    assert "**pruned**: not measured: why not" in text
    # CPU time first (ms, ms per s of audio, x floor: not measured here), wall clock beside
    assert "| final | onnxruntime | 1 | 3.05 | 23.8 | - | 4.05 |" in text
    assert "| pruned | eager | 2 | - | - | - | 5.00 |" in text
    assert "OpenVINO not installed" in text


def test_time_rounds_keeps_all_but_the_first_call_of_each_round() -> None:
    def spin() -> None:  # 5 ms of CPU
        start = time.thread_time()
        while time.thread_time() - start < 0.005:
            pass

    calls = {("sleep",): lambda: time.sleep(0.005), ("spin",): spin}
    wall, cpu = time_rounds(calls, rounds=3, per_round=2)
    assert [len(v) for v in wall.values()] == [6, 6] == [len(v) for v in cpu.values()]
    assert min(wall["sleep",]) >= 5.0 and min(wall["spin",]) >= 5.0  # milliseconds
    assert max(cpu["sleep",]) < 2.0 <= 5.0 <= min(cpu["spin",])  # waiting costs no CPU


def test_cpu_times_are_reported_for_one_thread_only() -> None:
    cpu = {key: [v / 2 for v in values] for key, values in _times().items()}
    rows = {(r["model"], r["backend"], r["threads"]): r for r in summarise(_times(), 128.0, cpu)}
    assert rows["final", "onnxruntime", 1]["cpu_median_ms"] == pytest.approx(4.05 / 2)
    assert rows["final", "onnxruntime", 1]["cpu_speedup_vs_baseline"] == pytest.approx(26.5 / 4.05)
    assert rows["pruned", "eager", 2]["cpu_median_ms"] is None


def _in_a_fresh_process(function, *args) -> None:
    """Run ``function(*args)`` in a spawned process. After OpenVINO has run the Open-Unmix
    peer's LSTM, the process segfaults at its next fork (a DataLoader's or museval's workers,
    later in this test session): the tests that run the peer in OpenVINO keep it out of pytest's
    process. ``make bench`` runs the latency benchmark in a process of its own, which never forks
    afterwards."""
    process = multiprocessing.get_context("spawn").Process(target=function, args=args)
    process.start()
    process.join()
    assert process.exitcode == 0, f"{function.__name__} failed (exit code {process.exitcode})"


def _toy_latency_run(out: Path) -> None:
    """The whole benchmark at toy size: one tiny model and a tiny peer, one round."""
    import lightning_modules.inference.latency as latency
    from lightning_modules.inference.graph import ExportInfo
    from lightning_modules.inference.peers import OpenUnmix
    from tests.exported_models import tiny_separator

    tiny = latency.Candidate("baseline", tiny_separator(), "tiny", "a tiny MMDenseNet")
    torch.manual_seed(0)
    peer_net = OpenUnmix(bins=65, channels=2, hidden=16, layers=1, max_bins=40).eval()
    peer_info = ExportInfo(
        rate=44100,
        frames=8,
        target="vocals",
        n_fft=128,
        hop=32,
        bins=65,
        parameters=sum(p.numel() for p in peer_net.parameters()),
        channels=2,
    )
    peer = latency.Candidate(
        latency.PEER, None, "peers.py", "a tiny Open-Unmix", (peer_net, peer_info)
    )
    latency.candidates = lambda checkpoint, runs: ([tiny, peer], {"final": "toy run"})
    latency.THREADS = (1,)
    latency.run(out, rounds=1, per_round=1)


def test_run_writes_commit_date_machine_and_load_into_both_files(tmp_path) -> None:
    import lightning_modules.inference.latency as latency

    _in_a_fresh_process(_toy_latency_run, tmp_path)
    result = json.loads((tmp_path / "latency.json").read_text())
    openvino = latency.openvino_available() is None
    assert result["machine"]["openvino"] == (
        __import__("openvino").__version__ if openvino else None
    )
    backends = {(r["model"], r["backend"]) for r in result["rows"]}
    # the stereo peer has no streaming row (the loop is mono); OpenVINO rows when installed
    assert ("open-unmix", "onnxruntime+stft") not in backends
    assert (("open-unmix", "openvino") in backends) is openvino
    assert result["models"]["open-unmix"]["new_audio_ms"] == pytest.approx(1000 * 8 * 32 / 44100)
    assert result["gemm"]["size"] == 512 and result["gemm"]["macs_per_s"] > 1e8
    row = next(r for r in result["rows"] if r["backend"] == "onnxruntime")
    floor_ms = 1000 * result["models"][row["model"]]["macs"] / result["gemm"]["macs_per_s"]
    assert row["floor_multiple"] == pytest.approx(row["cpu_median_ms"] / floor_ms)
    assert not result["peer_targets"]["checked"]  # no final model in this toy run
    assert result["commit"] == git_commit()
    assert result["date"].endswith("Z") and result["date"][:4].isdigit()
    assert result["machine"]["cores"] == os.cpu_count() and result["machine"]["cpu"]
    assert len(result["load_before"]) == len(result["load_after"]) == 3
    assert {r["backend"] for r in result["rows"]} == set(latency.BACKENDS) - (
        set() if openvino else {"openvino"}
    )
    text = (tmp_path / "latency.md").read_text()
    assert f"commit {result['commit']}, {result['date']}, {result['machine']['cpu']}" in text
    assert f"load average {result['load_before'][0]:.2f} before and " in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latency.json", "latency.md"]


def test_data_loading_benchmark_writes_provenance_beside_its_ratios(
    tmp_path, synthetic_root
) -> None:
    from datamodules.benchmark import run

    out = tmp_path / "bench"
    kwargs = {"batch_size": 4, "batches": 2, "baseline_batches": 1}
    run(out, cache_dir=str(tmp_path / "cache"), root=str(synthetic_root), **kwargs)
    result = json.loads((out / "data_loading.json").read_text())
    assert result["commit"] == git_commit()
    assert result["date"].endswith("Z") and result["machine"]["cores"] == os.cpu_count()
    assert len(result["load_before"]) == len(result["load_after"]) == 3
    assert [row["frames"] for row in result["rows"]] == [8, 64]
    assert all(row["ratio_vs_per_item_2_workers"] > 0 for row in result["rows"])
    text = (out / "data_loading.md").read_text()
    assert f"commit {result['commit']}, {result['date']}, {result['machine']['cpu']}" in text
    assert f"load average {result['load_before'][0]:.2f} before and " in text
    ratio = result["rows"][1]["ratio_vs_per_item_0_workers"]
    assert f"| 64 | {result['rows'][1]['datamodule_examples_per_s']:,.0f} |" in text
    assert f"{ratio:,.1f}x" in text
    assert sorted(p.name for p in out.iterdir()) == ["data_loading.json", "data_loading.md"]


def test_provenance_outside_git_and_on_a_restricted_machine(tmp_path) -> None:
    from datamodules.provenance import markdown_line, provenance

    assert git_commit(tmp_path) == "unknown"  # not a checkout (or no git): no guessing
    record = provenance(load_after=None)
    assert record["commit"] == git_commit() and record["load_after"] is None
    record["machine"] |= {"cpu": "CPU X", "cores": 16, "usable_cores": 2, "arch": "a", "os": "o"}
    assert markdown_line(record).startswith(
        f"commit {record['commit']}, {record['date']}, CPU X (2 of 16 cores usable, a, o), "
        f"load average {record['load_before'][0]:.2f} before and unknown after"
    )


def test_latency_refuses_a_paper_config_or_checkpoint(tmp_path) -> None:
    import yaml

    import lightning_modules.inference.latency as latency
    from tests.exported_models import checkpoint_with, tiny_checkpoint

    config = yaml.safe_load(latency.BASELINE_CONFIG.read_text())
    config["data"]["stft"] = {"n_fft": 1024, "hop": 256}
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=f"{paper}: latency supports only the thesis's STFT"):
        latency.separator_from_config(paper)

    base = tiny_checkpoint(tmp_path / "thesis.ckpt")
    stereo = checkpoint_with(base, tmp_path / "stereo.ckpt", {"channels": 2})
    # refused for being stereo, before it is found to have no PSP structure parameters
    with pytest.raises(ValueError, match=r"stereo\.ckpt: latency .* 2 channels \(stereo"):
        latency.pruned_candidate(latency.separator_from_config(latency.FINAL_CONFIG), stereo)


# -- the Open-Unmix peer, per second of audio, the compute floor, issue #17's targets -----------


def test_open_unmix_peer_has_the_published_umxhq_shapes() -> None:
    from lightning_modules.inference.peers import max_bin, openunmix_pipeline
    from lightning_modules.inference.stats import count_call_macs

    net, info = openunmix_pipeline(frames=8)
    # openunmix.utils.bandwidth_to_max_bin(44100, 4096, 16000) = 1487; umxhq: 8.9 M per target
    assert max_bin(44100, 4096, 16000) == net.max_bin == 1487
    lstm = 3 * 2 * (4 * 256 * (512 + 256) + 2 * 4 * 256)  # 3 layers, 2 directions, 2 biases
    by_hand = 2 * 1487 + 2974 * 512 + 2 * 512 + lstm + 1024 * 512 + 2 * 512
    by_hand += 512 * 4098 + 2 * 4098 + 2 * 2049
    assert info.parameters == by_hand == 8_893_348 and round(by_hand / 1e6, 1) == 8.9
    # MACs per 8-frame block: fc1, LSTM (gates x (input + hidden) per step, layer, direction),
    # fc2, fc3
    block = torch.rand(1, 2, 2049, 8)
    macs = 8 * (2974 * 512 + 3 * 2 * 4 * 256 * (512 + 256) + 1024 * 512 + 512 * 4098)
    assert count_call_macs(net, block) == macs
    assert (info.channels, info.bins, info.hop, info.rate) == (2, 2049, 1024, 44100)


def test_open_unmix_crops_the_network_input_and_masks_every_bin() -> None:
    from lightning_modules.inference.peers import OpenUnmix

    torch.manual_seed(0)
    net = OpenUnmix(bins=65, channels=2, hidden=16, layers=2, max_bins=40).eval()
    mixture = torch.rand(1, 2, 65, 8) + 0.1
    louder_top = mixture.clone()
    louder_top[:, :, 40:] *= 3  # above the crop: the network does not see it
    with torch.no_grad():
        out, out_top = net(mixture), net(louder_top)
    assert out.shape == mixture.shape
    torch.testing.assert_close(out_top[:, :, :40], out[:, :, :40])
    torch.testing.assert_close(out_top[:, :, 40:], 3 * out[:, :, 40:])  # a mask times the mix
    silent = mixture.clone()
    silent[0, 1] = 0
    with torch.no_grad():
        assert torch.all(net(silent)[0, 1] == 0)


def _export_open_unmix_in_every_runtime(folder: Path) -> None:
    from lightning_modules.inference.latency import exportable, openunmix_candidate, runners

    pipeline, info, check = exportable(openunmix_candidate())
    calls = runners(pipeline, info, folder, check)  # raises if a runtime differs by > 1e-4
    assert ("onnxruntime", 1) in calls and ("onnxruntime+stft", 1) not in calls
    assert check(folder / "model.onnx", "onnxruntime") < 1e-5


@pytest.mark.slow
def test_open_unmix_exports_and_matches_pytorch_in_every_runtime(tmp_path) -> None:
    _in_a_fresh_process(_export_open_unmix_in_every_runtime, tmp_path)
    assert (tmp_path / "model.onnx").exists()


def _peer_times() -> tuple[dict, dict]:
    """Issue #17's figures (one thread, CPU ms per 8-frame block): the final model 2.5 (ONNX
    Runtime) and 2.1 (OpenVINO), Open-Unmix 2.5 and 2.3."""
    cpu = {
        ("final", "onnxruntime", 1): [2.5] * 3,
        ("final", "openvino", 1): [2.1] * 3,
        ("open-unmix", "onnxruntime", 1): [2.5] * 3,
        ("open-unmix", "openvino", 1): [2.3] * 3,
    }
    wall = {key: [2 * v for v in values] for key, values in cpu.items()}
    return wall, cpu


NEW_MS = {"final": 128.0, "open-unmix": 1000 * 8 * 1024 / 44100}  # 185.76 ms


def test_rows_per_second_of_audio_and_as_multiples_of_the_floor() -> None:
    wall, cpu = _peer_times()
    macs = {"final": 75_000_000, "open-unmix": 70_909_952}
    rows = summarise(wall, NEW_MS, cpu, baseline="final", macs=macs, mac_rate=47e9)
    by = {(r["model"], r["backend"]): r for r in rows}
    final, peer = by["final", "onnxruntime"], by["open-unmix", "onnxruntime"]
    assert final["cpu_ms_per_s"] == pytest.approx(2.5 / 0.128)  # 19.5 ms per s of audio
    assert peer["cpu_ms_per_s"] == pytest.approx(2.5 / 0.18576, rel=1e-4)  # 13.5
    assert final["floor_ms"] == pytest.approx(1.5957, rel=1e-4)  # 75 M MACs at 47 GMAC/s
    assert final["floor_multiple"] == pytest.approx(2.5 / 1.5957, rel=1e-4)
    assert peer["realtime_factor"] == pytest.approx(5.0 / 185.76, rel=1e-4)
    # the same block time carries 1.45x more audio: 1.45x faster per second of audio
    assert peer["cpu_speedup_vs_baseline"] == pytest.approx(185.76 / 128, rel=1e-4)


def test_peer_targets_say_met_not_met_and_not_measured() -> None:
    wall, cpu = _peer_times()
    macs = {"final": 75_000_000, "open-unmix": 70_909_952}
    rows = summarise(wall, NEW_MS, cpu, macs=macs, mac_rate=47e9)
    t = peer_targets(rows)
    # the reading: per second of audio the final model is ~1.3x slower than Open-Unmix
    assert t["runtimes"]["openvino"]["vs_peer"] == pytest.approx((2.1 / 128) / (2.3 / 185.76), 1e-3)
    assert 1.3 < t["runtimes"]["openvino"]["vs_peer"] < 1.35
    assert t["runtimes"]["openvino"]["vs_peer_met"] is False
    assert t["runtimes"]["onnxruntime"]["floor_met"] is False  # 2.5 ms vs a 1.6 ms floor
    assert (t["best"]["model_runtime"], t["best"]["peer_runtime"]) == ("openvino", "openvino")

    fast = {key: ([0.5] * 3 if key[0] == "final" else values) for key, values in cpu.items()}
    t = peer_targets(summarise(wall, NEW_MS, fast, macs=macs, mac_rate=47e9))
    assert t["best"]["vs_peer_met"] and t["runtimes"]["onnxruntime"]["floor_met"]  # 0.31x floor

    alone = {key: values for key, values in cpu.items() if key[0] == "final"}
    t = peer_targets(summarise(wall, NEW_MS, alone))  # no peer, no GEMM rate
    assert t["checked"] and t["best"]["vs_peer_met"] is None and t["best"]["floor_met"] is None
    text = "\n".join(
        __import__("lightning_modules.inference.latency").inference.latency.peer_lines(t)
    )
    assert "open-unmix: not measured" in text and "compute floor not measured" in text
    assert "met" not in text.replace("not measured", "")
    assert not peer_targets(summarise(wall, NEW_MS, {}))["checked"]


def test_a_psp_run_under_the_runs_dir_is_found_read_only(tmp_path) -> None:
    import yaml

    from lightning_modules.inference.latency import candidates, find_psp_checkpoint

    assert find_psp_checkpoint(tmp_path) is None
    for name, pruning in (("plain", None), ("psp", {"threshold": 0.18}), ("psp-no-ckpt", {})):
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        config = {"model": {"class_path": "X", "init_args": {"pruning": pruning}}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        if name != "psp-no-ckpt":
            (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("model: [unclosed")
    before = sorted((p, p.stat().st_mtime) for p in tmp_path.rglob("*"))
    assert find_psp_checkpoint(tmp_path) == tmp_path / "psp" / "checkpoints" / "best.ckpt"
    assert sorted((p, p.stat().st_mtime) for p in tmp_path.rglob("*")) == before

    (tmp_path / "psp" / "checkpoints" / "best.ckpt").unlink()
    found, _ = candidates(runs_dir=tmp_path)
    pruned = next(c for c in found if c.name == "pruned")
    assert pruned.structure.startswith(f"no PSP checkpoint under {tmp_path}/*/checkpoints/")
    assert "NOT from a trained PSP run" in pruned.structure
    assert [c.name for c in found] == ["baseline", "final", "pruned", "open-unmix"]
