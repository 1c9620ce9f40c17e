"""``python -m sweeps table 4.3 [--profile smoke]``: run a table's missing rows and render it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweeps.plan import plan_table
from sweeps.render import render
from sweeps.specs import REPO, SpecError, available_tables, default_profile, load_table
from sweeps.study import RowsFailed, run_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeps", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("table", "run the missing rows, then render"), ("render", "render only")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("table_id", help=f"one of: {', '.join(available_tables())}")
        sub.add_argument(
            "--profile", default=None, help="smoke or thesis (default: thesis if MUSDB_ROOT is set)"
        )
        sub.add_argument(
            "--runs-dir", type=Path, default=REPO / "runs", help="where run folders live"
        )
        sub.add_argument("--results-dir", type=Path, default=REPO / "results")
        if name == "table":
            sub.add_argument(
                "--storage",
                default=None,
                help="Optuna storage URL (default: journal file in the runs folder)",
            )
    commands.add_parser("list", help="list the tables")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(available_tables()))
        return 0
    profile = args.profile or default_profile()
    try:
        spec = load_table(args.table_id)
        failed = None
        if args.command == "table":
            try:
                run_table(spec, profile, args.runs_dir, args.storage)
            except RowsFailed as error:
                failed = error
        paths = render(spec, plan_table(spec, profile, args.runs_dir), args.results_dir)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"rendered {paths['md']} and {paths['csv']}")
    print(paths["md"].read_text())
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
