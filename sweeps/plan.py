"""From a table spec to the runs it needs: one or more stages per row, and the other rows it
uses, each stage a fully resolved config in its own hashed run folder.

References between runs are written ``run:<hash>`` in the hashed configs, so a run's identity
includes the identity of every run it starts from or combines; they become checkpoint paths
only when a run executes (``sweeps.runs.execute``).

Seeds: with n seeds per row (``sweeps.specs.seeds_for``), every row is planned n times; seed 1
is the row's own config (its run is the one it always had), seed k > 1 sets
``seed_everything`` to the config's seed + k - 1 in every stage, so it is its own run folder.
Seed k of a row uses seed k of the rows it names (``row:``) and of its ``source:`` row. Seed
k > 1 is a row of its own to the study (label ``<label> [seed k]``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from datamodules.musdb_datamodule import check_musdb_root
from sweeps.identity import RUN_REFERENCE, row_key
from sweeps.runs import resolve, run_dir_for
from sweeps.specs import (
    Row,
    SpecError,
    TableSpec,
    canonical_profile,
    compose,
    deep_merge,
    load_profile,
    load_table,
    seeds_for,
)

ROW_REFERENCE = "row:"


@dataclass(frozen=True)
class Stage:
    resolved: dict[str, Any]
    run_dir: Path
    key: str  # its row key (sweeps.identity.row_key): the same for its stale predecessors


@dataclass(frozen=True)
class RowPlan:
    row: Row
    stages: tuple[Stage, ...]
    requires: tuple[str, ...]  # labels of the rows whose trained models this row uses
    seed: int = 1  # 1..n: which of the row's seeds
    of: str | None = None  # seed > 1: the table row's own label (``row.label`` is seeded)

    @property
    def table_label(self) -> str:
        """The label of the table row this plan is a seed of."""
        return self.of or self.row.label

    @property
    def runnable(self) -> bool:
        return bool(self.stages)

    @property
    def resolved(self) -> dict[str, Any] | None:
        """The config of the run whose results the table shows (the last stage)."""
        return self.stages[-1].resolved if self.stages else None

    @property
    def run_dir(self) -> Path | None:
        return self.stages[-1].run_dir if self.stages else None


def _references(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.removeprefix(ROW_REFERENCE)] if value.startswith(ROW_REFERENCE) else []
    if isinstance(value, dict):
        return [ref for v in value.values() for ref in _references(v)]
    if isinstance(value, list):
        return [ref for v in value for ref in _references(v)]
    return []


def _substitute(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, str) and value in mapping:
        return mapping[value]
    if isinstance(value, dict):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    return value


def seeded_label(label: str, seed: int) -> str:
    """The study's name for seed ``seed`` of a row: the row's own label for seed 1."""
    return label if seed == 1 else f"{label} [seed {seed}]"


def seeded(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Seed ``seed`` (1-based) of a config: itself for 1, else ``seed_everything`` moved on
    by ``seed - 1`` (from 0 where the config sets no integer seed)."""
    if seed == 1:
        return config
    base = config.get("seed_everything")
    base = base if isinstance(base, int) and not isinstance(base, bool) else 0
    return deep_merge(config, {"seed_everything": base + seed - 1})


def checked_root(root: str | None) -> str | None:
    """The MUSDB18 root, absolute, after checking that it holds MUSDB18 (``SpecError`` naming
    the path otherwise); None for the synthetic data set."""
    if not root:
        return None
    try:
        check_musdb_root(root)  # before any row is planned or any job submitted
    except FileNotFoundError as error:
        raise SpecError(str(error)) from error
    return str(Path(root).expanduser().resolve())


def with_data_root(config: dict[str, Any]) -> dict[str, Any]:
    """Write ``$MUSDB_ROOT`` into the config so that the data set is part of the run's hash:
    runs on synthetic data, on MUSDB18 and on two different MUSDB18 copies never share a
    folder. (Without a root, the synthetic data set's own arguments are in the config.)"""
    root = checked_root((config.get("data") or {}).get("root") or os.environ.get("MUSDB_ROOT"))
    return deep_merge(config, {"data.root": root}) if root else config


def plan_table(
    spec: TableSpec, profile: str, runs_root: Path, seeds: int | None = None
) -> list[RowPlan]:
    """Every row's stages, resolved and validated before anything runs: for each row of the
    spec, its seeds 1..n in order (``seeds``: n, default ``seeds_for(spec, profile)``)."""
    n_seeds = seeds or seeds_for(spec, profile)
    overrides = load_profile(profile)
    rows = {row.label: row for row in spec.rows}
    plans: dict[tuple[str, int], RowPlan] = {}
    keys: dict[str, str] = {}  # run hash -> row key, for the rows that use it
    others: dict[str, list[RowPlan]] = {}  # tables that rows are taken from

    def plan(row: Row, seed: int, visiting: tuple[str, ...]) -> RowPlan:
        if (row.label, seed) in plans:
            return plans[row.label, seed]
        if row.label in visiting:
            raise SpecError(f"{spec.path}: rows reference each other in a cycle: {visiting}")
        of = row.label if seed > 1 else None
        seed_row = replace(row, label=seeded_label(row.label, seed)) if of else row
        if row.unavailable:
            plans[row.label, seed] = RowPlan(seed_row, (), (), seed, of)
            return plans[row.label, seed]
        if row.source:  # the row of another table, planned (and run) as that table does
            table = str(row.source["table"])
            if table not in others:
                others[table] = plan_table(load_table(table), profile, runs_root, n_seeds)
            matches = [
                p for p in others[table] if p.table_label == row.source["row"] and p.seed == seed
            ]
            if not matches:
                raise SpecError(f"{spec.path}: row '{row.label}' names unknown {row.source}")
            plans[row.label, seed] = RowPlan(seed_row, matches[0].stages, (), seed, of)
            return plans[row.label, seed]
        mapping, requires = {}, []
        for label in _references(row.overrides) + [r for s in row.stages for r in _references(s)]:
            if label not in rows:
                raise SpecError(f"{spec.path}: row '{row.label}' uses unknown row '{label}'")
            used = plan(rows[label], seed, (*visiting, row.label))
            mapping[ROW_REFERENCE + label] = RUN_REFERENCE + used.run_dir.name
            requires.append(used.row.label)
        stages: list[Stage] = []
        for stage in row.stages:
            config = compose(spec, row, overrides, stage)
            config = deep_merge(config, spec.profile_overrides.get(canonical_profile(profile), {}))
            config = _substitute(config, mapping)
            config = with_data_root(seeded(config, seed))
            if stages:  # start from the previous stage's trained weights
                config = deep_merge(
                    config, {"model.init_args.init_from": RUN_REFERENCE + stages[-1].run_dir.name}
                )
            resolved = resolve(config)
            run_dir = run_dir_for(resolved, runs_root)
            keys[run_dir.name] = row_key(resolved, keys)
            stages.append(Stage(resolved, run_dir, keys[run_dir.name]))
        requires = list(dict.fromkeys(requires))
        plans[row.label, seed] = RowPlan(seed_row, tuple(stages), tuple(requires), seed, of)
        return plans[row.label, seed]

    return [plan(row, seed, ()) for row in spec.rows for seed in range(1, n_seeds + 1)]
