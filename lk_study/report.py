"""``lk-study report STUDY``: one Markdown (or HTML) page about a study, beside its figures.

    DIR/report.md (or report.html)   what was run (the study record), trials by status, wall
                                     time, the machine writing the report, the leaderboard,
                                     every paper table that applies (the others say why), the
                                     failed trials with their reasons, the figures
    DIR/<figure>.png                 ``plots.save_figures``: curves, tables, spectra, ...

It reads a finished study, one still running (trials RUNNING, no trials.parquet yet) and an
exported one (``--export DIR`` writes trials.parquet, curves.parquet, lk_study.json,
timeline.json and the best learned-kernel trial's weights there; ``analysis.load_study``
reads such a folder back, so a study can be committed and reported again, spectrum
included). Every number comes from ``lk_study.analysis``; this module formats them and
counts statuses, nothing else. No Ray: the machine section reads versions
from the installed packages' metadata.
"""

from __future__ import annotations

import argparse
import html
import io
import os
import platform
import re
import socket
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from lk_study import analysis, storage

FORMATS = {"md": "report.md", "html": "report.html"}
SECTIONS = ("task", "model", "kernel", "train", "scaling")  # of the base config, in order
STATUS_ORDER = ("RUNNING", "PENDING", "PAUSED", "TERMINATED", "ERROR")
EXPORTED = (analysis.STUDY_FILE, analysis.TIMELINE_FILE)  # copied as they are, when present
TRAINING_STATE = ("optim", "sched", "rng")  # left out of exported weights: only resuming needs them


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``report`` subcommand (``lk_study.cli.build_parser`` calls this)."""
    p = sub.add_parser(
        "report", help="write a study's report (Markdown or HTML) with its tables and figures"
    )
    p.add_argument("path", help="a study folder or URI (finished, running, or exported)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: STUDY_PATH/report)")
    p.add_argument("--format", choices=list(FORMATS), default="md", help="default: md")
    p.add_argument(
        "--export",
        metavar="DIR",
        help="also write trials.parquet, curves.parquet, lk_study.json, timeline.json and the "
        "best learned-kernel trial's weights to DIR: a folder that `lk-study report DIR` and "
        "analysis.load_study read back",
    )
    p.add_argument("--top", type=int, default=20, help="leaderboard rows (default: 20)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    study = analysis.load_study(args.path)
    if args.export:
        for path in export_study(study, args.export):
            print(f"Exported {path}")
    if args.out:
        out = Path(args.out)
    elif "://" in study.path:
        raise ValueError(f"{study.path} is not a local folder: name one with --out DIR")
    else:
        out = Path(study.path) / "report"
    print(f"Figures in {out}:")
    path = write_report(study, out, args.format, args.top)
    print(f"Wrote {path}")
    return 0


def export_study(study: analysis.StudyResults, out: str | Path) -> list[str]:
    """Write ``study``'s trials and curves as Parquet, and its study record and timeline as
    they are, into ``out`` (a folder or URI): what ``analysis.load_exported`` reads."""
    out = str(out) if "://" in str(out) else str(Path(out).resolve())
    written = [
        storage.write_trials(study.trials, out),
        storage.write_trials(study.curves, out, analysis.CURVES_FILE),
    ]
    for name in EXPORTED:
        text = storage.read_text(study.path, name)
        if text is not None:
            storage.write_bytes(out, name, text.encode())
            written.append(storage.join(out, name))
    weights = _export_best_weights(study, out)
    return written + ([weights] if weights else [])


def _export_best_weights(study: analysis.StudyResults, out: str) -> str | None:
    """Copy the best learned-kernel trial's newest checkpoint without its optimiser, scheduler
    and RNG state (a third of the size), to the same place under ``out``, so the exported
    folder's report draws its learned spectrum too. None when the study has no such local
    checkpoint."""
    import torch

    from lk_study.checkpoints import CHECKPOINT_FILE, checkpoint_state

    try:
        run = analysis.best_checkpoint(study)  # STUDY/train_runs/train-<trial_id>
        file, state = checkpoint_state(run)
    except (analysis.NoResults, FileNotFoundError):
        return None
    folder = storage.join(out, file.parent.relative_to(Path(run).parent.parent).as_posix())
    buffer = io.BytesIO()
    kept = {k: v for k, v in state.items() if k not in TRAINING_STATE}
    torch.save(kept, buffer)
    storage.write_bytes(folder, CHECKPOINT_FILE, buffer.getvalue())
    return storage.join(folder, CHECKPOINT_FILE)


def write_report(
    study: analysis.StudyResults, out: str | Path, fmt: str = "md", top: int = 20
) -> Path:
    """Write ``study``'s report and figures into folder ``out``; returns the report's path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; valid: {', '.join(FORMATS)}")
    from lk_study import plots  # matplotlib: only when a report is written

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []

    def echo(line: str) -> None:  # the figures' lines go to the console and the report
        log.append(line)
        print(line)

    written = plots.save_figures(study, out, log=echo)
    text = report_markdown(study, {n: p.name for n, p in written.items()}, log, top)
    target = out / FORMATS[fmt]
    meta = _record(study)
    title = f"Study report: {meta.get('name', Path(study.path).name)}"
    target.write_text(text if fmt == "md" else to_html(text, title), encoding="utf-8")
    return target


def report_markdown(
    study: analysis.StudyResults,
    figures: dict[str, str] | None = None,
    log: list[str] | None = None,
    top: int = 20,
) -> str:
    """The report as Markdown: ``figures`` (name -> file name beside the report) are
    embedded, the ``save_figures`` log lines of skipped ones listed."""
    meta = _record(study)
    name = meta.get("name", Path(study.path).name)
    parts = [
        f"# Study report: {name}",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `lk-study report` from "
        f"`{study.path}` ({_state(study)}).",
        "## What was run",
        _what_was_run(study, meta),
        "## Machine",
        _machine(),
        "## Leaderboard",
        _leaderboard(study, top),
        "## Tables",
        _tables(study),
        "## Failed trials",
        _failures(study),
        "## Figures",
        _figures(study, figures or {}, log or []),
    ]
    return "\n\n".join(parts) + "\n"


def _record(study: analysis.StudyResults) -> dict[str, Any]:
    """The study record (lk_study.json); {} for an exported study without one."""
    return storage.read_json(study.path, analysis.STUDY_FILE) or {}


def _state(study: analysis.StudyResults) -> str:
    exported = storage.statuses(study.path) == {} and storage.exists(
        storage.join(study.path, analysis.TRIALS_FILE)
    )
    if exported:
        return "an exported study: trials.parquet, no Tune files"
    statuses = set(study.trials.get("status", []))
    if statuses & {"RUNNING", "PENDING", "PAUSED"}:
        return "a study still running, or interrupted: its trials so far"
    return "a finished study" if len(study.trials) else "a study with no trials yet"


def _status_counts(study: analysis.StudyResults) -> str:
    counts = study.trials["status"].value_counts() if "status" in study.trials else {}
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts.keys()) - {*STATUS_ORDER})
    return ", ".join(f"{counts[s]} {s}" for s in order) or "none"


def _what_was_run(study: analysis.StudyResults, meta: dict[str, Any]) -> str:
    objectives = ", ".join(f"{o['metric']} ({o['mode']})" for o in study.objectives)
    lines = []
    if not meta:
        lines.append(f"- study record: none (no {analysis.STUDY_FILE} in the folder)")
    if meta.get("source"):
        lines.append(f"- study file: `{meta['source']}`")
    for key in ("searcher", "seeds"):
        if meta.get(key):
            lines.append(f"- {key}: {_values(meta[key])}")
    lines.append(f"- objective: {objectives}")
    if meta.get("variants"):
        names = [str(v.get("task.name", "(base task)")) for v in meta["variants"]]
        lines.append(f"- variants: {len(names)} ({', '.join(names)})")
    lines.append(f"- trials: {len(study.trials)} ({_status_counts(study)})")
    lines.append(f"- wall time: {_wall_time(study)}")
    search = meta.get("search", {})
    if search:
        rows = [
            {
                "key": key,
                "kind": p.get("kind", ""),
                "values": _values(p.get("values", [])),
                "when": ", ".join(f"{k} in {_values(v)}" for k, v in p.get("when", [])),
            }
            for key, p in search.items()
        ]
        lines += ["", "**Searched**", "", analysis.to_markdown(pd.DataFrame(rows), index=False)]
    config = meta.get("config", {})
    if config:
        rows = [
            {"section": section, "settings": ", ".join(_settings(config, section, search))}
            for section in SECTIONS
        ]
        rows = [r for r in rows if r["settings"]]
        note = "**Base config** (searched keys above; variants change the task)"
        lines += ["", note, "", analysis.to_markdown(pd.DataFrame(rows), index=False)]
    return "\n".join(lines)


def _settings(config: dict[str, Any], section: str, search: dict[str, Any]) -> list[str]:
    prefix = f"{section}."
    return [
        f"{key[len(prefix) :]}={_values(value) if value != '' else repr('')}"
        for key, value in config.items()
        if key.startswith(prefix) and key not in search
    ]


def _values(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_values, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_values(v)}" for k, v in value.items()) + "}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _wall_time(study: analysis.StudyResults) -> str:
    timing = analysis.wall_time(study)
    if not timing:
        return "unknown (no timeline.json and no trial folders with reports)"
    clock = "%Y-%m-%d %H:%M:%S"
    start, end = (time.strftime(clock, time.localtime(timing[k])) for k in ("start", "end"))
    return (
        f"{_duration(timing['seconds'])} from the first trial's start to the last one's end "
        f"({start} to {end}, driver clock); Σ trial time {_duration(timing['trial_seconds'])} "
        f"over {timing['trials']} trials; from {timing['source']}"
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def machine() -> dict[str, str]:
    """The machine running this: hostname, CPUs, GPUs torch sees, Python/torch/Ray versions
    (package metadata: Ray is not imported)."""

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    gpus = "none seen by torch"
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            gpus = ", ".join(names)
    except ImportError:
        gpus = "unknown (no torch)"
    return {
        "hostname": socket.gethostname(),
        "CPUs": str(os.cpu_count()),
        "GPU": gpus,
        "Python": platform.python_version(),
        "torch": version("torch"),
        "ray": version("ray"),
        "platform": platform.platform(),
    }


def _machine() -> str:
    facts = machine()
    note = (
        "The machine that wrote this report, which need not be the one that ran the study "
        "(a cluster's workers, another laptop):"
    )
    rows = "\n".join(f"| {k} | {v} |" for k, v in facts.items())
    return f"{note}\n\n| | |\n| --- | --- |\n{rows}"


def _leaderboard(study: analysis.StudyResults, top: int) -> str:
    board = analysis.format_leaderboard(study, top=top, fmt="markdown")
    obj = study.objective
    shown = min(top, len(study.trials))
    head = f"Best first on `best.{obj['metric']}` ({obj['mode']}); {shown} of {len(study.trials)}"
    return f"{head} trials.\n\n{board}"


def _tables(study: analysis.StudyResults) -> str:
    shown, skipped = [], []
    for name in analysis.TABLES:
        try:
            shown.append(f"### {name}\n\n{analysis.format_table(study, name, 'markdown')}")
        except ValueError as e:  # NoResults included: the study holds nothing for this table
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            skipped.append(f"- {name}: not applicable ({reason})")
    if skipped:
        shown.append("Not shown:\n\n" + "\n".join(skipped))
    return "\n\n".join(shown)


def _failures(study: analysis.StudyResults) -> str:
    trials = study.trials
    if trials.empty or "status" not in trials:
        return "None."
    failed = trials["status"].eq("ERROR")
    if "error" in trials:
        failed |= trials["error"].notna()
    if not failed.any():
        return "None."
    cols = ["trial_id", "status", *analysis.results_searched(study), "step", "error"]
    shown = trials.loc[failed, [c for c in dict.fromkeys(cols) if c in trials]]
    return f"{int(failed.sum())} trials:\n\n" + analysis.to_markdown(shown, index=False)


def _figures(study: analysis.StudyResults, figures: dict[str, str], log: list[str]) -> str:
    captions = {name: "" for name in figures}
    if "spectrum" in figures:
        run = analysis.best_checkpoint(study)
        captions["spectrum"] = f"The learned kernel of the best learned-kernel trial (`{run}`).\n\n"
    if "curves" in figures:
        captions["curves"] = f"`{study.objective['metric']}` of every trial against the step.\n\n"
    parts = [f"### {name}\n\n{captions[name]}![{name}]({file})" for name, file in figures.items()]
    skipped = [line.strip() for line in log if ": skipped (" in line]
    if skipped:
        parts.append("Not drawn:\n\n" + "\n".join(f"- {line}" for line in skipped))
    return "\n\n".join(parts) or "No figures."


# ---------------------------------------------------------------------------- HTML

_INLINE = [
    (re.compile(r"!\[([^\]]*)\]\(([^)]+)\)"), r'<img alt="\1" src="\2">'),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
]
_STYLE = (
    "body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
    "img{max-width:100%}code{background:#f4f4f4}"
)


def to_html(markdown: str, title: str) -> str:
    """The subset of Markdown ``report_markdown`` writes (headings, paragraphs, bullet lists,
    pipe tables, images, bold, code) as one HTML page."""
    body = []
    for block in re.split(r"\n\s*\n", markdown.strip()):
        lines = block.splitlines()
        heading = re.match(r"^(#{1,6}) (.*)$", block)
        if heading and len(lines) == 1:
            level = len(heading.group(1))
            body.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif all(line.startswith("|") for line in lines):
            body.append(_html_table(lines))
        elif all(line.startswith("- ") for line in lines):
            items = "".join(f"<li>{_inline(line[2:])}</li>" for line in lines)
            body.append(f"<ul>{items}</ul>")
        else:
            body.append(f"<p>{'<br>'.join(_inline(line) for line in lines)}</p>")
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style>"
    return (
        f"<!DOCTYPE html>\n<html><head>{head}</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _html_table(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        return [_inline(c.strip().replace("\\|", "|")) for c in parts]

    head = "".join(f"<th>{c}</th>" for c in cells(lines[0]))
    rows = ["".join(f"<td>{c}</td>" for c in cells(line)) for line in lines[2:]]
    body = "".join(f"<tr>{r}</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
