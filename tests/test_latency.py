"""Latency benchmark bookkeeping: speed-ups within the run, real-time factors, targets; the
timing loop on cheap calls."""

from __future__ import annotations

import time

import pytest

from lightning_modules.latency import markdown, summarise, targets, time_rounds


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
        "date": "now",
        "machine": {"cpu": "x86_64", "cores": 2, "load_before": [3.5], "load_after": [4.25]},
        "block": {"frames": 8, "rate": 32000, "new_ms": 128.0, "span_ms": 176.0},
        "models": {},
        "unavailable": {"pruned": "why not"},
        "rows": rows,
        "targets": targets(rows),
    }
    text = markdown(result)
    assert "load average 3.50 before and 4.25 after" in text
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
