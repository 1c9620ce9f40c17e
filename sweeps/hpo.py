"""Hyper-parameter searches: a search space in ``sweeps/spaces/<name>.yaml`` as an Optuna study.

Every trial samples the space, becomes overrides on the space's base experiment, and runs like
a table row (folder named by the resolved config's hash, resumed from ``last.ckpt`` when
retried). The objective is the best validation SDR over epochs (framewise SNR = museval v4
SDR, never the test set); Optuna's Lightning pruning callback stops hopeless trials on the
way, and ``MaxTrialsCallback`` caps the finished trials over all workers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from sweeps.plan import checked_root, with_data_root
from sweeps.plots import epoch_metrics
from sweeps.runs import execute, resolve, run_dir_for
from sweeps.specs import REPO, SpecError, apply_profile, deep_merge, load_profile
from sweeps.storage import DEFAULT_HEARTBEAT, Heartbeat, describe, open_storage
from sweeps.study import study_name, trial_counts, worker_name

SPACES = REPO / "sweeps" / "spaces"


def space_dirs() -> list[Path]:
    """``$SWEEPS_SPACES`` (folders of one's own search spaces, searched first), then ours."""
    extra = [Path(p) for p in os.environ.get("SWEEPS_SPACES", "").split(os.pathsep) if p]
    return [*extra, SPACES]


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialSeededRandomSampler(optuna.samplers.BaseSampler):
    """Random search whose draws depend on (seed, trial number, parameter) only.

    Every worker builds its own sampler; with one shared seed, plain ``RandomSampler`` would
    draw the same values in every worker (and their runs would share one folder). Trial numbers
    are unique across workers, so this gives distinct and reproducible samples: each value is
    drawn by a ``RandomSampler`` seeded by (seed, trial number, parameter name).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def infer_relative_search_space(self, study, trial) -> dict:  # noqa: ANN001
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:  # noqa: ANN001
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
        digest = hashlib.sha256(f"{self.seed}/{trial.number}/{param_name}".encode()).digest()
        sampler = optuna.samplers.RandomSampler(seed=int.from_bytes(digest[:4], "little"))
        return sampler.sample_independent(study, trial, param_name, param_distribution)


@dataclass
class SearchSpace:
    name: str
    title: str
    base: Path
    parameters: dict[str, dict[str, Any]]
    n_trials: int
    monitor: str = "val/sdr"
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "random", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    path: Path | None = None

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """One sample of the space as dotted-key overrides."""
        overrides = {}
        for key, spec in self.parameters.items():
            kind = spec["type"]
            log = spec.get("log", False)
            if kind == "float":
                value = trial.suggest_float(key, spec["low"], spec["high"], log=log)
            elif kind == "int":
                value = trial.suggest_int(key, spec["low"], spec["high"], log=log)
            elif kind == "categorical":
                value = trial.suggest_categorical(key, spec["choices"])
            else:
                raise SpecError(f"{self.path}: parameter {key} has unknown type {kind!r}")
            overrides[key] = value
        return overrides

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        options = {k: v for k, v in self.sampler.items() if k != "type"}
        samplers = {"random": TrialSeededRandomSampler, "tpe": optuna.samplers.TPESampler}
        return samplers[self.sampler["type"]](**options)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        options = {k: v for k, v in self.pruner.items() if k != "type"}
        pruners = {
            "median": optuna.pruners.MedianPruner,
            "none": optuna.pruners.NopPruner,
            "hyperband": optuna.pruners.HyperbandPruner,
            "threshold": optuna.pruners.ThresholdPruner,
        }
        return pruners[self.pruner["type"]](**options)


def available_spaces() -> list[str]:
    return sorted({p.stem for folder in space_dirs() for p in folder.glob("*.yaml")})


def load_space(name: str) -> SearchSpace:
    path = next((d / f"{name}.yaml" for d in space_dirs() if (d / f"{name}.yaml").exists()), None)
    if path is None:
        known = ", ".join(available_spaces())
        raise SpecError(f"unknown search space '{name}'; available: {known}")
    raw = yaml.safe_load(path.read_text())
    try:
        space = SearchSpace(
            name=name,
            title=raw["title"],
            base=REPO / raw["base"],
            parameters=raw["parameters"],
            n_trials=int(raw["n_trials"]),
            monitor=raw.get("monitor", "val/sdr"),
            sampler=raw.get("sampler", {"type": "random", "seed": 0}),
            pruner=raw.get("pruner", {"type": "median"}),
            path=path,
        )
        space.make_sampler(), space.make_pruner()
    except (KeyError, TypeError, ValueError) as error:
        raise SpecError(f"{path}: malformed search space ({error!r})") from error
    if not space.base.exists():
        raise SpecError(f"{path}: base experiment {space.base} does not exist")
    return space


def trial_config(space: SearchSpace, profile: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Base experiment, then the profile, then the sampled values (which win over both)."""
    config = apply_profile(yaml.safe_load(space.base.read_text()), load_profile(profile))
    return with_data_root(deep_merge(config, overrides))


def open_search(
    name: str,
    profile: str,
    runs_root: Path,
    storage: str | None = None,
    workers: int = 1,
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
) -> tuple[SearchSpace, optuna.Study, str]:
    """Validate the space (one sample resolves) and create the study before any worker."""
    space = load_space(name)
    checked_root(os.environ.get("MUSDB_ROOT"))  # a wrong data set: nothing is created
    probe = optuna.create_study(sampler=space.make_sampler())  # in memory: a dry sample
    resolve(trial_config(space, profile, space.suggest(probe.ask())))
    study = optuna.create_study(
        study_name=study_name("hpo", space.name, profile),
        storage=open_storage(storage, runs_root, workers, heartbeat),
        sampler=space.make_sampler(),
        pruner=space.make_pruner(),
        direction="maximize",
        load_if_exists=True,
    )
    return space, study, describe(storage, runs_root)


def objective(space: SearchSpace, profile: str, runs_root: Path):  # noqa: ANN201
    from optuna_integration import PyTorchLightningPruningCallback

    def run(trial: optuna.Trial) -> float:
        overrides = space.suggest(trial)
        resolved = resolve(trial_config(space, profile, overrides))
        run_dir = run_dir_for(resolved, runs_root)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", worker_name())
        pruning = PyTorchLightningPruningCallback(trial, monitor=space.monitor)
        try:
            result = execute(
                resolved,
                run_dir,
                profile=profile,
                label=f"{space.name} trial {trial.number}",
                wait=True,
                test=False,
                callbacks=[pruning],
            )
        except FloatingPointError as error:  # a NaN/inf loss: this trial fails, not the worker
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
            raise
        if result.get("resumed_from_epoch") is not None:
            trial.set_user_attr("resumed_from_epoch", result["resumed_from_epoch"])
        per_epoch = epoch_metrics(run_dir).get(space.monitor, {})
        if not per_epoch:
            raise RuntimeError(f"run {run_dir} logged no {space.monitor}")
        return max(per_epoch.values())

    return run


def run_search_worker(
    name: str,
    profile: str,
    runs_root: Path,
    storage: str,
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
) -> int:
    """One worker: optimise until the space's trial cap is reached over all workers."""
    space, study, _ = open_search(name, profile, runs_root, storage, heartbeat=heartbeat)
    before = len(study.get_trials(deepcopy=False, states=FINISHED))
    study.optimize(
        objective(space, profile, runs_root),
        callbacks=[MaxTrialsCallback(space.n_trials, states=FINISHED)],
        # Failures of one trial (a NaN loss, a bad sample) fail that trial; the worker goes on.
        catch=(RuntimeError, ValueError, FloatingPointError),
    )
    return len(study.get_trials(deepcopy=False, states=FINISHED)) - before


def summary(study: optuna.Study) -> str:
    counts = trial_counts(study)
    lines = [
        f"{study.study_name}: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
        f"{counts['FAIL']} failed"
    ]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = max(complete, key=lambda t: t.value)
        lines.append(f"best validation SDR {best.value:.2f} dB (trial {best.number}):")
        lines += [f"  {key} = {value}" for key, value in best.params.items()]
        lines.append(f"  run folder: {best.user_attrs.get('run_dir')}")
    return "\n".join(lines)
