"""``make plan-<id>`` and ``make status``: every row's run, status, dependencies and size,
read from the run folders and the study without running, creating or writing anything."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import RDBStorage
from optuna.trial import TrialState

import sweeps.specs as specs
from sweeps.__main__ import main as sweeps_main
from sweeps.identity import config_hash, identity
from sweeps.plan import plan_table
from sweeps.runs import RESULT
from sweeps.status import (
    FAILED,
    FINISHED,
    MISSING,
    QUEUED,
    RUNNING,
    STALE,
    UNAVAILABLE,
    inspect_table,
    open_storage_readonly,
    steps_per_epoch,
)
from sweeps.storage import HEARTBEAT_ATTR, Heartbeat, HeartbeatJournalStorage
from sweeps.study import study_name

pytestmark = pytest.mark.filterwarnings(  # trials are made by hand here, not by optimize
    "ignore:Heartbeat of storage is supposed to be used with Study.optimize"
)


@pytest.fixture(autouse=True)
def _isolated(isolated_cache):
    pass


SIGMOID = {"model.init_args.net.init_args.output_activation": "sigmoid"}
ROWS = [
    {"label": "plain", "published": {}},
    {"label": "accomp", "overrides": {"model.init_args.target": "accompaniment"}},
    {
        "label": "two-stage",
        "overrides": SIGMOID,
        "stages": [
            {
                "model.init_args.objective": "mask",
                "model.init_args.mask": "wf",
                "trainer.max_epochs": 40,
            },
            {"model.init_args.objective": "learned_mask", "trainer.max_epochs": 60},
        ],
    },  # fmt: skip
    {
        "label": "wiener",
        "base": "experiments/mmdensenet/two_model_wiener.yaml",
        "overrides": {
            "model.init_args.vocals": "row:plain",
            "model.init_args.accompaniment": "row:accomp",
        },
    },
    {"label": "running", "overrides": {"model.init_args.lr": 0.001}},
    {"label": "queued", "overrides": {"model.init_args.lr": 0.0005}},
    {"label": "later", "unavailable": "family not built"},
    {"label": "summary", "source": {"table": "9.8", "row": "other"}},
]


def _tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> specs.TableSpec:
    """Table 9.9 (the rows above) and 9.8 (the row 9.9's summary row takes), loaded as the
    suite loads tables (tests/test_paper_tables.py's ``_table``, with two tables)."""
    tables = tmp_path / "tables"
    tables.mkdir()
    for table_id, rows in (
        ("9.8", [{"label": "other", "overrides": {"model.init_args.lr": 0.003}}]),
        ("9.9", ROWS),
    ):
        raw = {
            "id": table_id,
            "title": f"Test table {table_id}",
            "base": "experiments/mmdensenet/baseline.yaml",
            "columns": ["SDR"],
            "rows": [{"published": {}, **row} for row in rows],
        }
        (tables / f"table-{table_id}.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(specs, "TABLES", tables)
    return specs.load_table("9.9")


def _finished(run_dir: Path, key: str, commit: str = "abc") -> None:
    """A finished run as sweeps.runs.execute leaves one: result.json with its row key."""
    run_dir.mkdir(parents=True)
    provenance = {"commit": commit, "data": "d", "profile": "ci", "device": "cpu", "date": "t"}
    result = {"test_metrics": {}, "scores": {}, "checkpoint": None, "row_key": key,
              "provenance": provenance}  # fmt: skip
    (run_dir / RESULT).write_text(json.dumps(result))


def _study(runs: Path) -> HeartbeatJournalStorage:
    """The table's journal study as workers leave it: 'plain' complete, 'two-stage' failed
    with a two-line error, 'running' running (heartbeat 42 s ago), 'queued' waiting."""
    storage = HeartbeatJournalStorage(runs / "optuna.journal", Heartbeat())
    study = optuna.create_study(study_name=study_name("table", "9.9", "ci"), storage=storage)
    for label in ("plain", "two-stage", "running", "queued"):
        study.enqueue_trial(params={}, user_attrs={"row": label})
        if label == "queued":
            break
        trial = study.ask()
        if label == "plain":
            study.tell(trial, 1.0)
        elif label == "two-stage":
            trial.set_user_attr("error", "RuntimeError: boom\nTraceback (most recent call last)")
            study.tell(trial, state=TrialState.FAIL)
        else:
            trial.set_user_attr("worker", "node7:123")
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), trial.number
            )
            storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time() - 42)
    return storage


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def _lines(text: str) -> dict[str, list[str]]:
    """``make plan`` lines by row and stage: [run folder, status, size, overrides, needs]."""
    rows = {}
    for line in text.splitlines():
        cells = line.split(" | ")
        if len(cells) == 6 and cells[0] != "row":
            rows[cells[0]] = cells[1:]
    return rows


def test_plan_shows_every_status_and_dependency_and_writes_nothing(
    tmp_path, monkeypatch, capsys
) -> None:
    spec = _tables(tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    plans = {plan.row.label: plan for plan in plan_table(spec, "ci", runs)}
    _finished(plans["plain"].run_dir, plans["plain"].stages[-1].key)
    # a run of 'accomp' made by older code: same row key, another folder
    _finished(runs / "0123456789ab", plans["accomp"].stages[-1].key, commit="old")
    (plans["queued"].run_dir / "checkpoints").mkdir(parents=True)  # a preempted run
    (plans["queued"].run_dir / "checkpoints" / "last.ckpt").touch()
    storage = _study(runs)
    study = optuna.load_study(study_name="table-9.9-ci", storage=storage)
    trials_before = [(t.number, t.state, t.user_attrs) for t in study.get_trials()]
    monkeypatch.chdir(tmp_path)  # anything written to a relative path would land here
    before = _snapshot(tmp_path)

    args = ["--profile", "ci", "--runs-dir", str(runs)]
    assert sweeps_main(["plan", "9.9", *args]) == 0
    text = capsys.readouterr().out
    rows = _lines(text)
    first, second = plans["two-stage"].stages
    run = {label: plan.run_dir.name for label, plan in plans.items() if plan.runnable}

    assert rows["plain"][:2] == [str(plans["plain"].run_dir), "finished: current, commit abc"]
    assert rows["accomp"][1] == (
        "stale: only 0123456789ab exists (commit old, an older results version)"
    )
    stage1, stage2 = rows["two-stage [stage 1/2]"], rows["two-stage [stage 2/2]"]
    assert stage1[:2] == [str(first.run_dir), "failed: trial 1: RuntimeError: boom"]
    assert stage2[:2] == [str(second.run_dir), "missing: after stage 1"]
    assert re.fullmatch(r"running: trial 2 on node7:123, heartbeat 4\d s ago", rows["running"][1])
    assert rows["queued"][1] == "queued: trial 3; resumes from its checkpoints/last.ckpt"
    assert rows["later"][:2] == ["-", "unavailable: family not built"]
    assert rows["wiener"][1] == rows["summary"][1] == "missing"
    # dependencies: the previous stage, the rows used (row:), the other table's row (source:)
    assert stage1[4] == "-"
    assert stage2[4] == f"stage 1 ({first.run_dir.name}, failed)"
    assert rows["wiener"][4] == (
        f"row 'plain' ({run['plain']}, finished); row 'accomp' ({run['accomp']}, stale)"
    )
    assert rows["summary"][4] == "source: table 9.8, row 'other'"
    # overrides on the table's base, the stage's own marked
    assert rows["plain"][3] == "(the base)"
    assert rows["accomp"][3] == "model.init_args.target=accompaniment"
    assert "base=experiments/mmdensenet/two_model_wiener.yaml" in rows["wiener"][3]
    assert "model.init_args.vocals=row:plain" in rows["wiener"][3]
    assert stage2[3] == (
        "model.init_args.net.init_args.output_activation=sigmoid; "
        "stage 2: model.init_args.objective=learned_mask; stage 2: trainer.max_epochs=60"
    )
    assert rows["summary"][3] == "model.init_args.lr=0.003"  # as table 9.8 writes the row
    # ci: 1% of 40 / 60 / 100 epochs is 1 each, limit_train_batches 2; the Wiener row only tests
    assert stage1[2] == stage2[2] == rows["accomp"][2] == "1 epoch x 2 steps"
    assert rows["wiener"][2] == "test only"
    # make table-9.9 would run accomp, both stages of two-stage, wiener and queued: not the
    # finished row, not the one a live worker runs, not the other table's row
    assert "would start 5 runs now, 4 epochs, 8 steps; rows under way in live workers: " in text
    assert "['running']" in text

    # nothing was written: no file, no folder, the study as it was
    assert _snapshot(tmp_path) == before
    trials_after = [(t.number, t.state, t.user_attrs) for t in study.get_trials()]
    assert trials_after == trials_before
    assert not (tmp_path / "results").exists()

    # a worker silent past the grace period is dead: its row would be started again
    journal = open_storage_readonly(None, runs)
    table = inspect_table(spec, "ci", runs, journal, heartbeat=Heartbeat(10, 30, 3))
    (line,) = [line for line in table.lines if line.label == "running"]
    assert line.status == RUNNING and "past the 30 s grace" in line.detail and line.starts
    assert table.row_status() == {
        "plain": FINISHED, "accomp": STALE, "two-stage": FAILED, "wiener": MISSING,
        "running": RUNNING, "queued": QUEUED, "later": UNAVAILABLE, "summary": MISSING,
    }  # fmt: skip

    # make status: every table's rows counted by status, from the same sources
    assert sweeps_main(["status", *args]) == 0
    status = capsys.readouterr().out.splitlines()
    header = status[1].split(" | ")
    by_table = {cells[0]: dict(zip(header, cells, strict=True))
                for cells in (line.split(" | ") for line in status[2:])}  # fmt: skip
    assert by_table["9.9"] == {
        "table": "9.9", "rows": "8", "finished": "1", "running": "1", "failed": "1",
        "queued": "1", "stale": "1", "missing": "2", "unavailable": "1",
        "runs make table would start": "5",
    }  # fmt: skip
    assert by_table["9.8"]["missing"] == "1" and by_table["9.8"]["rows"] == "1"
    assert _snapshot(tmp_path) == before


def test_plan_config_prints_what_each_stage_is_hashed_from(tmp_path, monkeypatch, capsys):
    spec = _tables(tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    plan = next(p for p in plan_table(spec, "ci", runs) if p.row.label == "two-stage")
    args = ["plan", "9.9", "--profile", "ci", "--runs-dir", str(runs), "--config", "two-stage"]
    assert sweeps_main(args) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [config_hash(d) for d in documents] == [s.run_dir.name for s in plan.stages]
    assert documents[1]["model"]["init_args"]["init_from"] == f"run:{plan.stages[0].run_dir.name}"
    assert documents[0]["trainer"]["max_epochs"] == 1  # the profile's effect, resolved
    assert sweeps_main([*args, "--identity"]) == 0
    hashed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert hashed == [json.loads(json.dumps(identity(s.resolved))) for s in plan.stages]
    assert sweeps_main([*args[:-1], "nobody"]) == 2
    assert "table 9.9 has no row 'nobody'" in capsys.readouterr().err
    assert sweeps_main(args[:-2]) == 0  # the plan of a table never run: all missing
    assert "would start 7 runs now" in capsys.readouterr().out
    assert not runs.exists()  # no runs folder, no journal file


def test_unknown_table_and_wrong_musdb_root_are_refused_before_anything(
    tmp_path, monkeypatch, capsys
) -> None:
    runs = tmp_path / "runs"
    assert sweeps_main(["plan", "7.7", "--profile", "ci", "--runs-dir", str(runs)]) == 2
    assert "unknown table '7.7'" in capsys.readouterr().err
    monkeypatch.setenv("MUSDB_ROOT", str(tmp_path / "no-musdb"))
    for command in (["plan", "4.3"], ["status"]):
        assert sweeps_main([*command, "--runs-dir", str(runs)]) == 2
        assert str(tmp_path / "no-musdb") in capsys.readouterr().err
    assert not runs.exists()


def test_a_database_study_is_read_with_its_heartbeats_and_nothing_is_created(
    tmp_path, monkeypatch, capsys
) -> None:
    spec = _tables(tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    assert open_storage_readonly(absent, runs) is None
    assert not (tmp_path / "absent.db").exists()  # SQLite would have created it

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = RDBStorage(url, heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(study_name="table-9.9-ci", storage=storage)
    study.enqueue_trial(params={}, user_attrs={"row": "running"})
    trial = study.ask()
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("table-9.9-ci"), trial.number))  # fmt: skip
    storage.engine.dispose()
    before = (tmp_path / "optuna.db").read_bytes()
    table = inspect_table(spec, "ci", runs, open_storage_readonly(url, runs), url)
    (line,) = [line for line in table.lines if line.label == "running"]
    assert line.status == RUNNING
    assert re.fullmatch(r"trial 0 on a worker, heartbeat [0-5] s ago", line.detail)
    assert (tmp_path / "optuna.db").read_bytes() == before
    assert not runs.exists()


def _batches_of_the_datamodule(data: dict) -> int:
    from datamodules.musdb_datamodule import MUSDBDataModule

    datamodule = MUSDBDataModule(**data)
    datamodule.setup("fit")
    return len(datamodule.train_dataloader())


@pytest.mark.parametrize("mixing", ["random", "coherent"])
def test_steps_per_epoch_are_the_datamodules_batches(tmp_path, mixing) -> None:
    """Counted from the config alone, they equal what the DataModule's sampler makes of the
    decoded synthetic set (ci sizes, without the profile's limit_train_batches)."""
    (plan,) = plan_table(specs.load_table("4.3"), "ci", tmp_path / "runs")
    resolved = json.loads(json.dumps(plan.resolved))
    resolved["data"]["mixing"] = mixing
    resolved["trainer"]["limit_train_batches"] = None
    expected = _batches_of_the_datamodule(resolved["data"])
    assert expected > 2  # more than the ci profile's limit, so the limit is not what is tested
    assert steps_per_epoch(resolved) == expected
    resolved["trainer"]["limit_train_batches"] = 2
    assert steps_per_epoch(resolved) == 2


def test_thesis_protocol_sizes_at_the_full_profile(tmp_path, monkeypatch) -> None:
    """The thesis's baseline on MUSDB18: 80 training tracks of at most 150 s at 32 kHz,
    34,304-sample chunks (64 frames), batches of 32: at most 347 batches per epoch
    (80 x (4,800,000 - 34,303) starts / (34,304 x 32)), 100 epochs."""
    from tests.conftest import fake_musdb_root

    monkeypatch.setenv("MUSDB_ROOT", str(fake_musdb_root(tmp_path / "musdb")))
    (plan,) = plan_table(specs.load_table("4.3"), "full", tmp_path / "runs")
    table = inspect_table(specs.load_table("4.3"), "full", tmp_path / "runs", None)
    (line,) = table.lines
    assert (line.epochs, line.steps_per_epoch) == (100, 347)
    assert line.data == "80 MUSDB18 training tracks x at most 150 s (an upper bound)"
    assert steps_per_epoch(plan.resolved) == 347
