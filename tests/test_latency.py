"""Benchmarks (``make bench``). Latency: speed-ups within the run, real-time factors, targets,
the timing loop on cheap calls. Both benchmarks at toy size: every file they write under
``results/bench/`` says which commit, when, on what machine and under what load."""

from __future__ import annotations

import json
import os
import time

import pytest

from datamodules.provenance import git_commit, machine
from lightning_modules.inference.latency import markdown, summarise, targets, time_rounds


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
    rows = summarise(_times(), 128.0)
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
    assert "| final | onnxruntime | 1 | 4.05 |" in text


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


def test_run_writes_commit_date_machine_and_load_into_both_files(tmp_path, monkeypatch) -> None:
    """The whole benchmark at toy size: one tiny model, one round."""
    import lightning_modules.inference.latency as latency
    from tests.exported_models import tiny_separator

    tiny = latency.Candidate("baseline", tiny_separator(), "tiny", "a tiny MMDenseNet")
    monkeypatch.setattr(latency, "candidates", lambda checkpoint: ([tiny], {"final": "toy run"}))
    monkeypatch.setattr(latency, "THREADS", (1,))
    latency.run(tmp_path, rounds=1, per_round=1)

    result = json.loads((tmp_path / "latency.json").read_text())
    assert result["commit"] == git_commit()
    assert result["date"].endswith("Z") and result["date"][:4].isdigit()
    assert result["machine"]["cores"] == os.cpu_count() and result["machine"]["cpu"]
    assert len(result["load_before"]) == len(result["load_after"]) == 3
    assert {r["backend"] for r in result["rows"]} == set(latency.BACKENDS)
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
