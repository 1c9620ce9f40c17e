"""``python -m sweeps table|sweep|hpo|render|list``: run tables and searches as Optuna studies.

- ``table 4.3``: the rows as trials of the table's study, run in this process, then rendered.
- ``sweep 4.3 --executor local|slurm --workers n --storage URL``: the same study, run by n
  workers (local processes or a SLURM job array), then rendered.
- ``hpo random-search --executor local|slurm --workers n``: a hyper-parameter search over a
  space in ``sweeps/spaces/``, with pruning of hopeless trials.
- ``plan 4.3 [--config ROW]``: what ``table 4.3`` would run and each row's status (or one
  row's resolved config); ``status``: every table's rows by status. Both run nothing.
- ``results``: ``results/README.md``, an index of every table as rendered (trains nothing).

``--seeds n`` (``make table-4.13 SEEDS=n``): n runs per row, each with its own seed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lightning_modules.cli import ignore_library_warnings
from sweeps.executors import EXECUTORS, SlurmSettings, run_search, run_sweep
from sweeps.hpo import available_spaces
from sweeps.hpo import summary as search_summary
from sweeps.plan import plan_table
from sweeps.render import render, results_dir
from sweeps.results_index import render_index
from sweeps.specs import (
    REPO,
    SEEDS_ENV,
    SpecError,
    available_tables,
    canonical_profile,
    check_seeds,
    default_profile,
    load_table,
)
from sweeps.status import format_config, format_plan, format_status
from sweeps.storage import Heartbeat, dashboard_command, ignore_experimental_warnings
from sweeps.study import RowsFailed, failures, study_name
from sweeps.tracking import LOGGERS, logging_to


def heartbeat_arg(text: str) -> Heartbeat:
    """``interval,grace,max_retry`` in seconds, seconds and retries."""
    try:
        interval, grace, retries = (int(part) for part in text.split(","))
        return Heartbeat(interval, grace, retries)
    except ValueError as error:
        message = f"--heartbeat wants INTERVAL,GRACE,RETRIES, got {text!r}"
        raise argparse.ArgumentTypeError(message) from error


SEEDS_HELP = (
    "runs per row, each with its own seed (default: the table's or profile's seeds, else 1); "
    "seed 1 is the row's usual run"
)


def seeds_arg(text: str) -> int:
    try:
        return check_seeds(int(text), "--seeds")
    except (ValueError, SpecError) as error:
        raise argparse.ArgumentTypeError(f"--seeds wants an integer >= 1, got {text!r}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweeps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "table": "run the missing rows in this process, then render",
        "sweep": "run the missing rows with n workers (local or SLURM), then render",
        "render": "render only",
        "hpo": "a hyper-parameter search with n workers (local or SLURM)",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text)
        if name == "hpo":
            sub.add_argument(
                "table_id", metavar="space", help=f"one of: {', '.join(available_spaces())}"
            )
        else:
            sub.add_argument("table_id", help=f"one of: {', '.join(available_tables())}")
        sub.add_argument(
            "--profile",
            default=None,
            help="smoke, full (alias thesis) or ci (default: full if MUSDB_ROOT is set)",
        )
        sub.add_argument(
            "--runs-dir", type=Path, default=REPO / "runs", help="where run folders live"
        )
        sub.add_argument(
            "--results-dir",
            type=Path,
            default=REPO / "results",
            help="tables go to <results-dir>/<profile>/table-<id>.*",
        )
        if name != "hpo":
            sub.add_argument("--seeds", type=seeds_arg, default=None, help=SEEDS_HELP)
        if name == "render":
            continue
        sub.add_argument(
            "--storage",
            default=None,
            help="Optuna storage: journal:<file> (default: <runs>/optuna.journal), "
            "sqlite:///<file> (one worker), postgresql://user:pw@host/db (many nodes)",
        )
        sub.add_argument(
            "--heartbeat",
            type=heartbeat_arg,
            default=Heartbeat(),
            help="INTERVAL,GRACE,RETRIES: heartbeat seconds, seconds of silence before a "
            "trial's worker counts as dead, retries of such a trial (default 60,180,3)",
        )
        if name in ("table", "sweep"):  # workers inherit the choice through the environment
            sub.add_argument(
                "--logger",
                choices=LOGGERS,
                default="csv",
                help="wandb: also one W&B run per trial (offline unless WANDB_MODE is set)",
            )
        if name in ("sweep", "hpo"):
            sub.add_argument("--executor", choices=EXECUTORS[1:], default="local")
            sub.add_argument("--workers", type=int, default=1)
            sub.add_argument(
                "--slurm-config",
                type=Path,
                default=None,
                help="YAML of submitit parameters (default experiments/cluster/slurm.yaml)",
            )
            sub.add_argument(
                "--slurm",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="override one submitit parameter, e.g. slurm_partition=gpu",
            )
            sub.add_argument("--poll", type=float, default=5.0, help="seconds between checks")
    look = commands.add_parser("plan", help="each row's run, status and size; runs nothing")
    look.add_argument("table_id", help=f"one of: {', '.join(available_tables())}")
    look.add_argument("--config", metavar="ROW", default=None, help="print this row's config")
    look.add_argument("--identity", action="store_true", help="with --config: its hashed part")
    status = commands.add_parser("status", help="every table's rows by status; runs nothing")
    for sub in (look, status):
        sub.add_argument("--profile", default=None, help="as for table (default: the same)")
        sub.add_argument("--runs-dir", type=Path, default=REPO / "runs")
        sub.add_argument("--storage", default=None, help="as for table; opened read-only")
        sub.add_argument("--heartbeat", type=heartbeat_arg, default=Heartbeat())
        sub.add_argument("--seeds", type=seeds_arg, default=None, help=SEEDS_HELP)
    commands.add_parser("list", help="list the tables")
    index = commands.add_parser("results", help="results/README.md: every table, trains nothing")
    index.add_argument("--results-dir", type=Path, default=REPO / "results")
    index.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="row statuses from these run folders (default: as the rendered tables say)",
    )
    board = commands.add_parser("dashboard", help="optuna-dashboard on a storage (localhost)")
    board.add_argument("--storage", default=None)
    board.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    board.add_argument("--port", type=int, default=8080)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ignore_experimental_warnings()
    ignore_library_warnings()
    if args.command == "list":
        print("\n".join(available_tables()))
        return 0
    if getattr(args, "seeds", None) is not None:  # planners and workers started from here
        os.environ[SEEDS_ENV] = str(args.seeds)
    if args.command == "results":
        try:
            print(f"rendered {render_index(args.results_dir, args.runs_dir)}")
        except SpecError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    if args.command == "dashboard":
        command = dashboard_command(args.storage, args.runs_dir, args.port)
        command[0] = str(Path(sys.executable).with_name(command[0]))
        print(
            f"http://127.0.0.1:{args.port} (ssh -L {args.port}:127.0.0.1:{args.port} to see it "
            "from elsewhere); Ctrl-C stops it",
            flush=True,
        )
        if not Path(command[0]).exists():
            print(f"error: {command[0]} not found: pip install -e '.[cluster]'", file=sys.stderr)
            return 2
        # replaced, not a child: a signal to this process (a terminal, a test) stops the server
        os.execv(command[0], command)
    profile = canonical_profile(args.profile or default_profile())
    if args.command in ("plan", "status"):
        return plan_or_status(args, profile)
    failed = None
    try:
        if args.command == "hpo":
            study = run_search(
                args.table_id,
                profile,
                args.runs_dir,
                args.storage,
                executor=args.executor,
                workers=args.workers,
                heartbeat=args.heartbeat,
                slurm=SlurmSettings.load(args.slurm_config, args.slurm)
                if args.executor == "slurm"
                else None,
                poll=args.poll,
            )
            print(search_summary(study))
            return 0
        spec = load_table(args.table_id)
        if args.command in ("table", "sweep"):
            group = study_name("table", spec.id, profile)
            with logging_to(getattr(args, "logger", "csv"), group):
                sweep = run_sweep(
                    spec.id,
                    profile,
                    args.runs_dir,
                    args.storage,
                    executor="inprocess" if args.command == "table" else args.executor,
                    workers=1 if args.command == "table" else args.workers,
                    heartbeat=args.heartbeat,
                    slurm=SlurmSettings.load(args.slurm_config, args.slurm)
                    if args.command == "sweep" and args.executor == "slurm"
                    else None,
                    poll=getattr(args, "poll", 5.0),
                )
            if missing := failures(sweep):
                failed = RowsFailed(missing)
        plans = plan_table(spec, profile, args.runs_dir)
        paths = render(spec, plans, results_dir(profile, args.results_dir))
    except SpecError as error:
        if failed:  # rows failed, and the table could not be rendered either
            print(f"error: {failed}", file=sys.stderr)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"rendered {paths['md']} and {paths['csv']}")
    print(paths["md"].read_text())
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    return 0


def plan_or_status(args: argparse.Namespace, profile: str) -> int:
    """``plan`` and ``status``: read the run folders and the study, print, write nothing."""
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # per row
    try:
        if args.command == "status":
            print(format_status(profile, args.runs_dir, args.storage, args.heartbeat))
        elif args.config is not None:
            spec = load_table(args.table_id)
            print(format_config(spec, profile, args.runs_dir, args.config, args.identity))
        else:
            spec = load_table(args.table_id)
            print(format_plan(spec, profile, args.runs_dir, args.storage, args.heartbeat))
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
