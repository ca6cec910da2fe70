"""``lk-study``: run studies, read their results, list kernels.

lk-study tune STUDY.yaml [--storage PATH_OR_URI] [--set key=value ...] [--smoke] [--dry-run]
lk-study results PATH [--out FILE.parquet|FILE.csv]
lk-study kernels
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lk_study.config import ConfigError, load_study, parse_value


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set train.lr=3e-4")
        out[key.strip()] = parse_value(value)
    return out


def cmd_tune(args: argparse.Namespace) -> int:
    study = load_study(args.study, parse_sets(args.set), smoke=args.smoke)
    if args.smoke:
        study = study.__class__(**{**study.__dict__, "name": f"{study.name}-smoke"})
    if args.dry_run:
        print(
            f"Study {study.name!r} from {study.source}: {study.budget.num_samples} trials, "
            f"objective {study.objective.metric} ({study.objective.mode})"
        )
        for key, p in study.search.items():
            cond = " when " + ", ".join(f"{k} in {list(v)}" for k, v in p.when) if p.when else ""
            print(f"  {key}: {p.kind} {list(p.values)}{cond}")
        return 0
    from lk_study.tune import run_study  # imports Ray: only when a study really runs

    run_study(study, args.storage)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from lk_study.analysis import format_leaderboard
    from lk_study.analysis import load_study as load_results

    results = load_results(args.path)
    print(format_leaderboard(results, top=args.top))
    if args.out:
        out = Path(args.out)
        if out.suffix == ".parquet":
            results.trials.to_parquet(out, index=False)
        elif out.suffix == ".csv":
            results.trials.to_csv(out, index=False)
        else:
            raise ConfigError(f"--out {out}: use a .parquet or .csv file name")
        print(f"\nWrote {len(results.trials)} trials to {out}")
    return 0


def cmd_kernels(args: argparse.Namespace) -> int:
    from lk_study.kernels import KERNELS, family_params

    for name, cls in KERNELS.items():
        params = ", ".join(family_params(name))
        print(f"{name:14s} {cls.math}" + (f"  [{params}]" if params else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lk-study", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tune", help="run (or resume) a study file on Ray Tune + Train")
    p.add_argument("study", help="study YAML, e.g. search_spaces/quickstart.yaml")
    p.add_argument("--storage", help="results folder or s3:// / gs:// URI (default ./lk_results)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a dotted key (config, objective.*, budget.*, scheduler.*); "
        "a searched key becomes fixed",
    )
    p.add_argument(
        "--smoke", action="store_true", help="apply the file's smoke: overrides (about a minute)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the compiled search space, start nothing"
    )
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("results", help="print a study's leaderboard; write its trials table")
    p.add_argument("path", help="the study folder, e.g. lk_results/quickstart")
    p.add_argument("--out", help="write one row per trial to FILE.parquet or FILE.csv")
    p.add_argument("--top", type=int, default=20)
    p.set_defaults(func=cmd_results)
    p = sub.add_parser("kernels", help="list the kernel registry")
    p.set_defaults(func=cmd_kernels)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"lk-study: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
