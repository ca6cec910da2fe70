"""``lk-study``: run studies, read their results, list kernels.

lk-study tune STUDY.yaml [--storage PATH_OR_URI] [--set key=value ...] [--smoke] [--dry-run]
    [--address ADDR] [--resume] [--retry-errored] [--verbose]
lk-study resume STUDY_FOLDER [--address ADDR] [--retry-errored] [--verbose]
lk-study train STUDY.yaml [--storage ...] [--set key=value ...] [--smoke]
lk-study results PATH [--table lra|glue|features|sparsity|pareto] [--format text|markdown|csv]
    [--out FILE.parquet|FILE.csv] [--plot DIR] [--top N]
lk-study report PATH [--out DIR] [--format md|html] [--export DIR] [--top N]
lk-study kernels
lk-study data prepare TASK [--source SRC] [--set task.key=value ...]
lk-study data generate listops|pathfinder --out DIR --num N [--seed S]
lk-study bench attention [--kernels K ...] [--lengths N ...] [--batch B] [--heads H]
    [--head-dim D] [--num-features M] [--repeats R] [--device DEV] [--out FILE.csv]
lk-study bench approx [--kernels K ...] [--features M ...] [--norms R ...] [--draws N]
    [--head-dim D] [--out FILE.csv] [--figure FILE.png]
lk-study bench study [STUDY.yaml] [--runners train trial] [--sizes smoke full] [--out FILE.csv]
lk-study bench train [--task NAME] [--kernels K ...] [--lengths N ...] [--batch B]
    [--repeats R] [--features M] [--study FILE] [--set key=value ...] [--step-cap S]
    [--max-others-cpu F] [--device DEV] [--out FILE.csv] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lk_study import report  # the report subcommand; matplotlib loads only when it runs
from lk_study.config import ConfigError, flatten, parse_value, study_refs
from lk_study.study import Study, load_study_file


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set train.lr=3e-4")
        out[key.strip()] = parse_value(value)
    return out


def describe(study: Study) -> str:
    """What ``lk-study tune --dry-run`` prints: trials, searched keys, variants, grid x
    Optuna points, the Optuna storage and the ``study:`` references."""
    seeds = f", seeds {list(study.seeds)}" if study.seeds else ""
    lines = [
        f"Study {study.name!r} from {study.source}: {study.num_trials()} trials "
        f"(searcher {study.searcher}{seeds}), "
        f"objective {', '.join(f'{o.metric} ({o.mode})' for o in study.objectives)}"
    ]
    for key, p in study.search.items():
        cond = " when " + ", ".join(f"{k} in {list(v)}" for k, v in p.when) if p.when else ""
        lines.append(f"  {key}: {p.kind} {list(p.values)}{cond}")
    if study.variants:
        names = [v.get("task.name", study.config.task.name) for v in study.variants]
        lines.append(f"  variants: {len(study.variants)} ({', '.join(names)})")
    points = study.points()
    if study.searcher == "optuna" and points != [{}]:
        once = sum(study.trials_at(pt) == 1 for pt in points)
        note = f"; {once} run once, with nothing left for Optuna to search" if once else ""
        lines.append(
            f"  grid x Optuna: {len(points)} points, each its own Optuna study of "
            f"{study.budget.num_samples} trials{note}"
        )
    if study.optuna.storage:
        lines.append(f"  optuna storage: {study.optuna.storage} (optuna-dashboard reads it)")
    for key, name in study_refs(flatten(study.config)).items():
        lines.append(f"  {key}: study:{name} (the matching trial's checkpoint, found at start)")
    return "\n".join(lines)


def cmd_tune(args: argparse.Namespace) -> int:
    study = load_study_file(args.study, parse_sets(args.set), smoke=args.smoke)
    if args.dry_run:
        print(describe(study))
        return 0
    from lk_study.tune import run_study  # imports Ray: only when a study really runs

    run_study(study, args.storage, args.address, args.resume, args.retry_errored, args.verbose)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from lk_study.tune import resume_study

    resume_study(args.path, args.address, args.retry_errored, args.verbose)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    study = load_study_file(args.study, parse_sets(args.set), smoke=args.smoke)
    from lk_study.tune import run_single

    run_single(study, args.storage, args.address)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from lk_study import analysis

    results = analysis.load_study(args.path)
    if args.table:
        text = analysis.format_table(results, args.table, args.format)
    else:
        text = analysis.format_leaderboard(results, top=args.top, fmt=args.format)
    print(text, end="" if text.endswith("\n") else "\n")
    if args.out:
        out = Path(args.out)
        if out.suffix == ".parquet":
            results.trials.to_parquet(out, index=False)
        elif out.suffix == ".csv":
            results.trials.to_csv(out, index=False)
        else:
            raise ConfigError(f"--out {out}: use a .parquet or .csv file name")
        print(f"\nWrote {len(results.trials)} trials to {out}")
    if args.plot:
        from lk_study.plots import save_figures  # imports matplotlib: only when asked

        print(f"\nFigures in {args.plot}:")
        save_figures(results, args.plot)
    return 0


def cmd_kernels(args: argparse.Namespace) -> int:
    from lk_study.kernels import KERNELS, family_params

    for name, cls in KERNELS.items():
        params = ", ".join(family_params(name))
        print(f"{name:14s} {cls.math}" + (f"  [{params}]" if params else ""))
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    import time

    from lk_study.config import Config, with_overrides
    from lk_study.tasks import Split, prepare

    overrides = {"task.name": args.task, **parse_sets(args.set)}
    if args.source:
        overrides["task.source"] = args.source
    cfg = with_overrides(Config(), overrides).task
    print(f"Preparing {args.task} ({cfg}) ...", flush=True)
    t0 = time.perf_counter()
    paths = prepare(cfg)
    for split, path in paths.items():
        print(f"  {split:12s} {len(Split(path)):>9,d} rows  {path}")
    print(f"Done in {time.perf_counter() - t0:.1f} s (cached: later runs reuse these files)")
    return 0


def generate_listops(args: argparse.Namespace) -> None:
    """Write train/val/test.tsv with the LRA distribution, printing progress about every 5 %."""
    from lk_study.tasks import listops

    num, seed = args.num, args.seed
    step = max(1, num // 20)

    def report(n: int) -> None:
        if n % step == 0 or n == num:
            print(f"listops: generated {n}/{num} examples", flush=True)

    print(f"listops: generating {num} examples (seed {seed}) into {args.out}", flush=True)
    paths = listops.write_release(args.out, num, seed, progress=report)
    counts = listops.split_counts(num, listops.LRA_FRACTIONS)
    for (name, path), count in zip(paths.items(), counts.values(), strict=True):
        print(f"listops: wrote {path} ({count} {name} examples)", flush=True)


def generate_pathfinder(args: argparse.Namespace) -> None:
    """Every difficulty, 32x32, in LRA's layout under ``args.out``, progress per batch."""
    from lk_study.tasks import pathfinder

    res = 32
    print(
        f"pathfinder: generating {args.num} {res}x{res} images per difficulty "
        f"(seed {args.seed}) into {args.out}",
        flush=True,
    )
    for difficulty in pathfinder.DIFFICULTIES:

        def report(done: int, total: int, difficulty: str = difficulty) -> None:
            print(f"pathfinder: {difficulty}: {done}/{total} images", flush=True)

        folder = pathfinder.write_release(
            args.out, args.num, args.seed, res, difficulty, progress=report
        )
        print(f"pathfinder: wrote {folder}", flush=True)


def cmd_data_generate(args: argparse.Namespace) -> int:
    generators = {"listops": generate_listops, "pathfinder": generate_pathfinder}
    generators[args.kind](args)
    return 0


def cmd_bench_attention(args: argparse.Namespace) -> int:
    from lk_study.bench import AttentionBench, bench_attention, format_ratios, write_csv

    if args.out and Path(args.out).suffix != ".csv":
        raise ConfigError(f"--out {args.out}: use a .csv file name")
    device = {"device": args.device} if args.device else {}
    cfg = AttentionBench(
        kernels=tuple(args.kernels),
        lengths=tuple(args.lengths),
        batch=args.batch,
        heads=args.heads,
        head_dim=args.head_dim,
        num_features=args.num_features,
        repeats=args.repeats,
        warmup=args.warmup,
        **device,
    )
    try:
        rows = bench_attention(cfg)
    except ImportError as e:  # performer-pytorch missing: say which extra to install
        raise ConfigError(str(e)) from e
    print(format_ratios(rows))
    if args.out:
        write_csv(rows, args.out)
        print(f"\nWrote {len(rows)} rows to {args.out}")
    return 0


def cmd_bench_approx(args: argparse.Namespace) -> int:
    from lk_study.bench_approx import ApproxBench, bench_approx, format_table
    from lk_study.bench_approx import write_csv as write_approx_csv

    if args.out and Path(args.out).suffix != ".csv":
        raise ConfigError(f"--out {args.out}: use a .csv file name")
    if args.figure and Path(args.figure).suffix != ".png":
        raise ConfigError(f"--figure {args.figure}: use a .png file name")
    cfg = ApproxBench(
        kernels=tuple(args.kernels),
        num_features=tuple(args.features),
        input_norms=tuple(args.norms),
        draws=args.draws,
        head_dim=args.head_dim,
    )
    rows = bench_approx(cfg)
    print(format_table(rows))
    if args.out:
        write_approx_csv(rows, args.out)
        print(f"\nWrote {len(rows)} rows to {args.out}")
    if args.figure:
        from lk_study.bench_approx import plot_approx  # imports matplotlib: only when asked

        plot_approx(rows).savefig(args.figure, dpi=120)
        print(f"Wrote the figure to {args.figure}")
    return 0


def cmd_bench_study(args: argparse.Namespace) -> int:
    from lk_study.bench_study import bench_study, format_summary, summary, write_csv

    rows = bench_study(args.study, args.runners, args.sizes, args.storage)
    write_csv(rows, args.out)
    print(f"\n{format_summary(summary(rows))}\nWrote {len(rows)} trials to {args.out}")
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from lk_study.bench_train import TrainBench, bench_train, format_table, write_csv

    for flag, path, suffix in [("--out", args.out, ".csv"), ("--plot", args.plot, ".png")]:
        if path and Path(path).suffix != suffix:
            raise ConfigError(f"{flag} {path}: use a {suffix} file name")
    given = {
        "task": args.task,
        "kernels": args.kernels and tuple(args.kernels),
        "lengths": args.lengths and tuple(args.lengths),
        "batch": args.batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "num_features": args.features,
        "study": args.study,
        "step_cap_s": args.step_cap,
        "max_others_cpu": args.max_others_cpu,
        "device": args.device,
    }
    cfg = TrainBench(
        **{k: v for k, v in given.items() if v is not None}, overrides=parse_sets(args.set)
    )
    rows = bench_train(cfg)
    print(format_table(rows))
    if args.out:
        write_csv(rows, args.out)
        print(f"\nWrote {len(rows)} rows to {args.out}")
    if args.plot:
        import pandas as pd

        from lk_study.bench_train import plot_train  # imports matplotlib: only when asked
        from lk_study.tables import efficiency_train

        plot_train(efficiency_train(pd.DataFrame(rows))).savefig(args.plot, dpi=120)
        print(f"Wrote the figure to {args.plot}")
    return 0


def _add_tune_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--address",
        help="join a running Ray cluster: 'auto' (this machine's `ray start`) or an address; "
        "default: RAY_ADDRESS if set, else an embedded local Ray",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted study in --storage (an error if there is none); "
        "finished trials are kept, unfinished ones continue from their checkpoints "
        "(rerunning without --resume also resumes)",
    )
    p.add_argument(
        "--retry-errored", action="store_true", help="on resume, also rerun ERROR trials"
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Tune's own progress output and every worker's log on the console (default: one "
        "line per trial start and end, a status table every 30 s; logs in STUDY/logs)",
    )
    p.set_defaults(func=cmd_tune)


def _add_resume_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "resume", help="continue an interrupted study from its folder (no study file needed)"
    )
    p.add_argument("path", help="the study folder or URI, e.g. lk_results/quickstart")
    p.add_argument("--address", help="join a running Ray cluster (see tune --address)")
    p.add_argument(
        "--retry-errored", action="store_true", help="also rerun ERROR trials from checkpoints"
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Tune's own progress output and every worker's log on the console (default: one "
        "line per trial start and end, a status table every 30 s; logs in STUDY/logs)",
    )
    p.set_defaults(func=cmd_resume)


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="one Ray Train run of a study file's base config, no search")
    p.add_argument("study", help="study YAML; its search space is ignored (fix keys with --set)")
    p.add_argument("--storage", help="checkpoint folder or URI (default ./lk_results)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--smoke", action="store_true", help="apply the file's smoke: overrides")
    p.add_argument("--address", help="join a running Ray cluster")
    p.set_defaults(func=cmd_train)


def _add_results_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "results", help="print a study's leaderboard or tables; write its trials and figures"
    )
    p.add_argument("path", help="the study folder, e.g. lk_results/quickstart")
    p.add_argument(
        "--table",
        choices=["lra", "glue", "features", "sparsity", "pareto"],
        help="print a paper table instead of the leaderboard: lra (kernels x LRA tasks), "
        "glue (best grid point per GLUE task), features (metric vs kernel.num_features), "
        "sparsity (kernels x ideal attention density k/L), pareto (the Pareto-optimal trials)",
    )
    p.add_argument("--format", choices=["text", "markdown", "csv"], default="text")
    p.add_argument("--out", help="write one row per trial to FILE.parquet or FILE.csv")
    p.add_argument("--plot", metavar="DIR", help="write the study's figures as PNG into DIR")
    p.add_argument("--top", type=int, default=20, help="leaderboard rows")
    p.set_defaults(func=cmd_results)


def _add_kernels_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernels", help="list the kernel registry")
    p.set_defaults(func=cmd_kernels)


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare task data, or generate offline data files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("prepare", help="build a task's cached Parquet splits")
    p.add_argument("task", help="a task name (see lk_study.tasks.TASKS), e.g. listops")
    p.add_argument("--source", help="task.source: hub, generate or a PATH (task-dependent)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another task.* key, e.g. --set task.size=1000",
    )
    p.set_defaults(func=cmd_data_prepare)
    p = data_sub.add_parser("generate", help="write offline data in a release's file format")
    p.add_argument("kind", choices=["listops", "pathfinder"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, required=True, help="number of examples")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_generate)


def _add_bench_attention_parser(bench_sub: argparse._SubParsersAction) -> None:
    from lk_study.bench import AttentionBench  # the defaults shown in --help

    p = bench_sub.add_parser(
        "attention",
        help="time the attention core fwd and fwd+bwd against sdpa, floor and performer",
    )
    defaults = AttentionBench(device="cpu")
    p.add_argument(
        "--kernels",
        nargs="+",
        default=list(defaults.kernels),
        metavar="K",
        help="registry kernels (sdpa, floor and performer always run; default: all but softmax)",
    )
    p.add_argument("--lengths", nargs="+", type=int, default=list(defaults.lengths), metavar="N")
    for flag, name in [
        ("--batch", "batch"),
        ("--heads", "heads"),
        ("--head-dim", "head_dim"),
        ("--num-features", "num_features"),
        ("--repeats", "repeats"),
        ("--warmup", "warmup"),
    ]:
        p.add_argument(flag, type=int, default=getattr(defaults, name))
    p.add_argument("--device", help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--out", help="write one row per (kernel, length, pass) to FILE.csv")
    p.set_defaults(func=cmd_bench_attention)


def _add_bench_approx_parser(bench_sub: argparse._SubParsersAction) -> None:
    from lk_study.bench_approx import ApproxBench  # the defaults shown in --help

    p = bench_sub.add_parser(
        "approx",
        help="error of φ(x)·φ(y) against the exact kernel vs num_features, per kernel and norm",
    )
    approx = ApproxBench()
    p.add_argument(
        "--kernels",
        nargs="+",
        default=list(approx.kernels),
        metavar="K",
        help="random-feature registry kernels and the references sm_trig_iid, sm_positive_iid "
        "(default: all)",
    )
    p.add_argument(
        "--features",
        nargs="+",
        type=int,
        default=list(approx.num_features),
        metavar="M",
        help="num_features values, even (default: %(default)s)",
    )
    p.add_argument(
        "--norms",
        nargs="+",
        type=float,
        default=list(approx.input_norms),
        metavar="R",
        help="input norms ‖x‖ = ‖y‖ before the kernels' x / d^(1/4) scaling (default: "
        "%(default)s; at d=16 ‖x'‖ = R/2)",
    )
    p.add_argument(
        "--draws", type=int, default=approx.draws, help="resamples per row (default: %(default)s)"
    )
    p.add_argument("--head-dim", type=int, default=approx.head_dim)
    p.add_argument("--out", help="write one row per (kernel, orthogonal, M, norm) to FILE.csv")
    p.add_argument("--figure", help="write rel_err vs M (log-log, a panel per norm) to FILE.png")
    p.set_defaults(func=cmd_bench_approx)


def _add_bench_train_parser(bench_sub: argparse._SubParsersAction) -> None:
    # defaults (None here) are lk_study.bench_train.TrainBench's: it imports the training code
    p = bench_sub.add_parser(
        "train",
        help="training steps/s and peak memory vs sequence length, kernels against softmax "
        "(the paper's Figure 4)",
    )
    p.add_argument("--task", help="whose trial model is benchmarked (default: text)")
    p.add_argument(
        "--kernels",
        nargs="+",
        metavar="K",
        help="registry kernels (softmax, the reference, always runs; default: all)",
    )
    p.add_argument(
        "--lengths", nargs="+", type=int, metavar="N", help="default: 1024 2048 4096 8192 16384"
    )
    p.add_argument("--batch", type=int, help="sequences per step (default: 2)")
    p.add_argument("--repeats", type=int, help="timed steps per kernel and length (default: 3)")
    p.add_argument(
        "--warmup", type=int, help="untimed steps, the first measuring peak memory (default: 1)"
    )
    p.add_argument("--features", type=int, help="kernel.num_features (default: the study's)")
    p.add_argument(
        "--study",
        help="study file whose trial config for --task and each kernel is benchmarked "
        "(default: search_spaces/lra_kernels.yaml)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a dotted config key, e.g. --set model.d_model=64",
    )
    p.add_argument(
        "--step-cap",
        type=float,
        metavar="S",
        help="a kernel whose step takes (or is predicted to take) over S seconds stops there: "
        "NaN rows with a note (default: 300)",
    )
    p.add_argument(
        "--max-others-cpu",
        type=float,
        metavar="F",
        help="retake a timed step during which other processes used more than this share of "
        "the CPU (at most --repeats retakes per kernel and length; default: 1, never)",
    )
    p.add_argument("--device", help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--out", help="write one row per (kernel, length) to FILE.csv")
    p.add_argument("--plot", help="write steps/s and peak memory vs length to FILE.png")
    p.set_defaults(func=cmd_bench_train)


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="efficiency benchmarks (CSV out)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    _add_bench_attention_parser(bench_sub)
    _add_bench_approx_parser(bench_sub)
    _add_bench_train_parser(bench_sub)
    p = bench_sub.add_parser(
        "study", help="per-trial start-up and Ray's share of a study, train vs trial runner"
    )
    p.add_argument("study", nargs="?", default="search_spaces/quickstart.yaml")
    p.add_argument("--runners", nargs="+", default=["train", "trial"], choices=["train", "trial"])
    p.add_argument("--sizes", nargs="+", default=["smoke", "full"], choices=["smoke", "full"])
    p.add_argument("--storage", help="where the studies run (default: a temporary folder)")
    p.add_argument("--out", default="bench_study.csv", help="CSV, one row per trial")
    p.set_defaults(func=cmd_bench_study)


def build_parser() -> argparse.ArgumentParser:
    """The ``lk-study`` parser: one ``_add_<command>_parser`` per subcommand."""
    parser = argparse.ArgumentParser(prog="lk-study", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_tune_parser(sub)
    _add_resume_parser(sub)
    _add_train_parser(sub)
    _add_results_parser(sub)
    _add_kernels_parser(sub)
    _add_data_parser(sub)
    _add_bench_parser(sub)
    report.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"lk-study: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full / read-only storage (StorageError names the study), or I/O
        from lk_study.storage import FAULTS

        kind = FAULTS.get(e.errno or 0)
        if kind and e.filename:
            e = f"storage {e.filename} is {kind}; free space or make it writable and retry"
        print(f"lk-study: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
