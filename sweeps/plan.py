"""From a table spec to the runs it needs: one or more stages per row, and the other rows it
uses, each stage a fully resolved config in its own hashed run folder.

References between runs are written ``run:<hash>`` in the hashed configs, so a run's identity
includes the identity of every run it starts from or combines; they become checkpoint paths
only when a run executes (``sweeps.runs.execute``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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


def plan_table(spec: TableSpec, profile: str, runs_root: Path) -> list[RowPlan]:
    """Every row's stages, resolved and validated before anything runs."""
    overrides = load_profile(profile)
    rows = {row.label: row for row in spec.rows}
    plans: dict[str, RowPlan] = {}
    keys: dict[str, str] = {}  # run hash -> row key, for the rows that use it

    def plan(row: Row, visiting: tuple[str, ...]) -> RowPlan:
        if row.label in plans:
            return plans[row.label]
        if row.label in visiting:
            raise SpecError(f"{spec.path}: rows reference each other in a cycle: {visiting}")
        if row.unavailable:
            plans[row.label] = RowPlan(row, (), ())
            return plans[row.label]
        if row.source:  # the row of another table, planned (and run) as that table does
            other = plan_table(load_table(row.source["table"]), profile, runs_root)
            matches = [p for p in other if p.row.label == row.source["row"]]
            if not matches:
                raise SpecError(f"{spec.path}: row '{row.label}' names unknown {row.source}")
            plans[row.label] = RowPlan(row, matches[0].stages, ())
            return plans[row.label]
        mapping, requires = {}, []
        for label in _references(row.overrides) + [r for s in row.stages for r in _references(s)]:
            if label not in rows:
                raise SpecError(f"{spec.path}: row '{row.label}' uses unknown row '{label}'")
            used = plan(rows[label], (*visiting, row.label))
            mapping[ROW_REFERENCE + label] = RUN_REFERENCE + used.run_dir.name
            requires.append(label)
        stages: list[Stage] = []
        for stage in row.stages:
            config = compose(spec, row, overrides, stage)
            config = deep_merge(config, spec.profile_overrides.get(canonical_profile(profile), {}))
            config = _substitute(config, mapping)
            config = with_data_root(config)
            if stages:  # start from the previous stage's trained weights
                config = deep_merge(
                    config, {"model.init_args.init_from": RUN_REFERENCE + stages[-1].run_dir.name}
                )
            resolved = resolve(config)
            run_dir = run_dir_for(resolved, runs_root)
            keys[run_dir.name] = row_key(resolved, keys)
            stages.append(Stage(resolved, run_dir, keys[run_dir.name]))
        plans[row.label] = RowPlan(row, tuple(stages), tuple(dict.fromkeys(requires)))
        return plans[row.label]

    return [plan(row, ()) for row in spec.rows]
