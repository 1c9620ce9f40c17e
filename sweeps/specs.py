"""Table specs and profiles: from ``experiments/`` YAML to fully resolved, hashed run configs.

A table spec (``experiments/tables/table-<id>.yaml``) names a base experiment, its rows (dotted
overrides on the base), the columns it reports and the thesis's published numbers per row.
A profile (``experiments/profiles/<name>.yaml``) scales any experiment: ``smoke`` (synthetic
data, CPU, a few minutes) or ``full`` (MUSDB18, each paper's full protocol, GPU; ``thesis`` is
an alias).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
TABLES = EXPERIMENTS / "tables"
PROFILES = EXPERIMENTS / "profiles"


class SpecError(ValueError):
    """A table spec, profile or override is invalid; the message names the file."""


@dataclass(frozen=True)
class Row:
    """One line of a table. ``stages`` (default: one) are trained one after the other, each
    starting from the previous stage's best checkpoint (thesis 4.2: pre-train on a mask for 40
    epochs, then re-train for 60). A string ``"row:<label>"`` anywhere in the overrides stands
    for the trained model of another row of the same table (e.g. the two baselines that a
    Wiener-filter row combines)."""

    label: str
    overrides: dict[str, Any]
    published: dict[str, float | None]
    notes: dict[str, str] = field(default_factory=dict)
    stages: tuple[dict[str, Any], ...] = ({},)
    base: Path | None = None  # another base experiment than the table's
    report: str = "vocals"  # the target whose metrics the row shows
    source: dict[str, str] | None = None  # {table, row}: the row is another table's row
    unavailable: str | None = None  # why the row cannot run yet (a family not built)
    # columns this row cannot have here, with the reason (e.g. a data set we do not have)
    unavailable_columns: dict[str, str] = field(default_factory=dict)
    # the paper's ordering of this row against another (sweeps.statistics): ``{than: <row>,
    # column: SDR, direction: higher|lower, quote: "<the paper's words>"}``
    claim: dict[str, str] | None = None


@dataclass(frozen=True)
class TableSpec:
    id: str
    title: str
    caption: str
    base: Path
    columns: list[str]
    rows: list[Row]
    layout: str = "rows"  # "rows": one line per run; "statistics": metrics x median/MAD/mean/std
    stats_frames: int | None = None  # frames for the Parameters/MACs columns
    # Label of the row that the relative changes (Delta %) of every numeric column refer to.
    relative_to: str | None = None
    figures: tuple[str, ...] = ()  # table-level figures by name (sweeps.render.TABLE_FIGURES)
    paper: str = "thesis"  # whose table it is: experiments/papers.yaml
    # {profile: {dotted key: value}} applied after the profile (context, epochs, sizes of the
    # data; never the model): a smoke row of a 285 G-MAC network stays minutes on CPU
    profile_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # {metric: aggregation} of the columns read from the runs' scores.json (not museval)
    aggregates: dict[str, str] = field(default_factory=dict)
    # runs per row, each with its own seed (default 1; a profile or --seeds/SEEDS= may set it)
    seeds: int | None = None
    # the row every other row's paired test compares with (default: relative_to)
    baseline: str | None = None
    path: Path | None = None

    @property
    def reference(self) -> str | None:
        """The row the paired tests compare the others with, if any."""
        return self.baseline or self.relative_to


def available_tables() -> list[str]:
    return sorted(p.stem.removeprefix("table-") for p in TABLES.glob("table-*.yaml"))


def load_table(table_id: str) -> TableSpec:
    path = TABLES / f"table-{table_id}.yaml"
    if not path.exists():
        raise SpecError(f"unknown table '{table_id}'; available: {', '.join(available_tables())}")
    raw = yaml.safe_load(path.read_text())
    try:
        rows = [
            Row(
                label=str(r["label"]),
                overrides=r.get("overrides") or {},
                published=r.get("published") or {},
                notes=r.get("notes") or {},
                stages=tuple(r.get("stages") or ({},)),
                base=REPO / r["base"] if r.get("base") else None,
                report=r.get("report", "vocals"),
                source=r.get("source"),
                unavailable=r.get("unavailable"),
                unavailable_columns=r.get("unavailable_columns") or {},
                claim=r.get("claim"),
            )
            for r in raw["rows"]
        ]
        spec = TableSpec(
            id=str(raw["id"]),
            title=raw["title"],
            caption=raw.get("caption", ""),
            base=REPO / raw["base"],
            columns=list(raw["columns"]),
            rows=rows,
            layout=raw.get("layout", "rows"),
            stats_frames=raw.get("stats_frames"),
            relative_to=raw.get("relative_to"),
            figures=tuple(raw.get("figures") or ()),
            paper=raw.get("paper", "thesis"),
            profile_overrides={
                canonical_profile(str(name)): overrides
                for name, overrides in (raw.get("profile_overrides") or {}).items()
            },
            aggregates=raw.get("aggregates") or {},
            seeds=raw.get("seeds"),
            baseline=raw.get("baseline"),
            path=path,
        )
    except (KeyError, TypeError) as error:
        raise SpecError(f"{path}: malformed table spec ({error!r})") from error
    for base in {spec.base, *(r.base for r in rows if r.base)}:
        if not base.exists():
            raise SpecError(f"{path}: base experiment {base} does not exist")
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels):
        raise SpecError(f"{path}: duplicate row labels {labels}")
    if spec.relative_to is not None and spec.relative_to not in labels:
        raise SpecError(f"{path}: relative_to '{spec.relative_to}' is not a row ({labels})")
    if spec.baseline is not None and spec.baseline not in labels:
        raise SpecError(f"{path}: baseline '{spec.baseline}' is not a row ({labels})")
    if spec.seeds is not None:
        check_seeds(spec.seeds, f"{path}: seeds")
    for row in rows:
        if row.claim is not None:
            _check_claim(spec, row)
    if spec.paper not in papers():
        raise SpecError(f"{path}: paper '{spec.paper}' is not in {PAPERS} ({sorted(papers())})")
    known = available_profiles()
    for profile, overrides in spec.profile_overrides.items():
        if profile not in known:  # a typo would silently leave the table unscaled
            raise SpecError(
                f"{path}: profile_overrides.{profile}: no such profile ({', '.join(known)})"
            )
        models = [
            key
            for key in overrides
            if str(key).split(".")[0] == "model" and key not in MODEL_BUDGET_KEYS
        ]
        if models:  # a profile scales data and training, never an architecture
            raise SpecError(f"{path}: profile_overrides.{profile} may not set {models}")
    for metric, how in spec.aggregates.items():
        if how not in AGGREGATIONS:
            raise SpecError(f"{path}: aggregates.{metric}: '{how}' is not one of {AGGREGATIONS}")
    return spec


CLAIM_KEYS = ("than", "column", "direction", "quote")


def _check_claim(spec: TableSpec, row: Row) -> None:
    """A claim names a row, a column of the table, a direction and the paper's own words; the
    row and column default to the table's reference row and first column."""
    where = f"{spec.path}: row '{row.label}': claim"
    claim = row.claim
    if not isinstance(claim, dict) or set(claim) - set(CLAIM_KEYS):
        raise SpecError(f"{where} is a mapping of {CLAIM_KEYS}, got {claim!r}")
    than = claim.get("than", spec.reference)
    if than not in [r.label for r in spec.rows] or than == row.label:
        raise SpecError(f"{where}: than '{than}' is not another row of the table")
    if claim.get("column", spec.columns[0]) not in spec.columns:
        raise SpecError(f"{where}: column '{claim.get('column')}' is not in {spec.columns}")
    if claim.get("direction") not in ("higher", "lower"):
        raise SpecError(
            f"{where}: direction is 'higher' or 'lower', not {claim.get('direction')!r}"
        )
    if not str(claim.get("quote", "")).strip():
        raise SpecError(f"{where}: quote the paper's sentence that states it (quote: ...)")


def claim_of(spec: TableSpec, row: Row) -> dict[str, str] | None:
    """The row's claim with its defaults filled in (``than``, ``column``)."""
    if row.claim is None:
        return None
    return {"than": spec.reference, "column": spec.columns[0], **row.claim}


def check_seeds(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{where}: the number of seeds per row is an integer >= 1, not {value!r}")
    return value


#: Environment variable by which ``--seeds`` (``make table-<id> SEEDS=n``) reaches the
#: processes that plan the table (workers of a sweep included).
SEEDS_ENV = "SWEEPS_SEEDS"


def seeds_for(spec: TableSpec, profile: str) -> int:
    """Seeds per row: ``--seeds`` / ``$SWEEPS_SEEDS``, else the table spec's ``seeds``, else
    the profile's, else 1."""
    if text := os.environ.get(SEEDS_ENV):
        try:
            return check_seeds(int(text), f"${SEEDS_ENV}")
        except ValueError as error:
            raise SpecError(f"${SEEDS_ENV}={text!r} is not a number of seeds") from error
    if spec.seeds is not None:
        return spec.seeds
    raw = _read_profile(profile)
    return check_seeds(raw.get("seeds", 1), f"profile {canonical_profile(profile)}: seeds")


#: Model arguments that are a computing budget, not the model (the neural couplings
#: algorithm's iterations and segments of the DAE paper): profile_overrides may set them.
MODEL_BUDGET_KEYS = ("model.init_args.nca_iterations", "model.init_args.nca_max_segments")
#: How a column read from the runs' ``scores.json`` records is summarised (sweeps.render).
AGGREGATIONS = ("median", "mean", "mean_std", "length_weighted_mean")
PAPERS = EXPERIMENTS / "papers.yaml"


def papers() -> dict[str, dict[str, str]]:
    """The papers a table can belong to: ``{id: {short, citation}}``."""
    return yaml.safe_load(PAPERS.read_text())


#: Old profile names that still work: ``thesis`` is every paper's full protocol now.
PROFILE_ALIASES = {"thesis": "full"}
FULL = "full"


def canonical_profile(name: str) -> str:
    """A profile's own name (``thesis`` -> ``full``): studies, results folders and provenance
    use it, so the alias and the name never make two of them."""
    return PROFILE_ALIASES.get(name, name)


def default_profile() -> str:
    """``full`` when a real MUSDB18 root is configured, else ``smoke``."""
    return FULL if os.environ.get("MUSDB_ROOT") else "smoke"


def profile_dirs() -> list[Path]:
    """``$SWEEPS_PROFILES`` (folders of one's own profiles, searched first), then the suite's."""
    extra = [Path(p) for p in os.environ.get("SWEEPS_PROFILES", "").split(os.pathsep) if p]
    return [*extra, PROFILES]


def available_profiles() -> list[str]:
    return sorted({p.stem for folder in profile_dirs() for p in folder.glob("*.yaml")})


def _read_profile(name: str) -> dict[str, Any]:
    name = canonical_profile(name)
    candidates = [folder / f"{name}.yaml" for folder in profile_dirs()]
    path = next((p for p in candidates if p.exists()), candidates[-1])
    if not path.exists():
        raise SpecError(f"unknown profile '{name}'; available: {', '.join(available_profiles())}")
    return yaml.safe_load(path.read_text()) or {}


def load_profile(name: str) -> dict[str, Any]:
    """The profile's overrides of a config (its ``seeds`` count is read by ``seeds_for``)."""
    name = canonical_profile(name)
    profile = _read_profile(name)
    profile.pop("seeds", None)
    if profile.pop("requires_musdb_root", False) and not os.environ.get("MUSDB_ROOT"):
        raise SpecError(
            f"profile '{name}' runs on MUSDB18: set MUSDB_ROOT to the data set's root "
            "(stem.mp4 or wav layout), or use PROFILE=smoke"
        )
    return profile


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` on ``base``; dotted keys (``model.init_args.lr``) address nested dicts."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        node, parts = merged, str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"override '{key}': '{part}' is not a section")
        last = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = deep_merge(node[last], value)
        else:
            node[last] = copy.deepcopy(value)
    return merged


def _get(config: dict, dotted: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``."""
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def compose(
    spec: TableSpec, row: Row, profile: dict[str, Any], stage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Base experiment, then the row, then the stage, then the profile (a profile scales data
    and training; it never changes an architecture). A profile's ``scale`` section multiplies
    numbers instead of replacing them (``trainer.max_epochs: 0.03``: 100 -> 3, 600 -> 18), so
    rows that differ by such a number stay different at every scale."""
    base = yaml.safe_load((row.base or spec.base).read_text())
    return apply_profile(deep_merge(deep_merge(base, row.overrides), stage or {}), profile)


def apply_profile(config: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """The profile's ``scale`` section multiplies, the rest replaces."""
    profile = dict(profile)
    for key, factor in (profile.pop("scale", None) or {}).items():
        try:
            value = _get(config, key)
        except (KeyError, TypeError):
            continue  # e.g. no epochs in an evaluation-only experiment: nothing to scale
        config = deep_merge(config, {key: max(1, round(value * factor))})
    return deep_merge(config, profile)
