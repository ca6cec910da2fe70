"""Training-speed benchmark (DESIGN §7): ``lk-study bench train``, the paper's Figure 4.

Full training steps of a task's real model (``lk_study.train.build_model`` of the trial config
a study file gives that task and kernel; default: the LRA Text model of
``search_spaces/lra_kernels.yaml``, 4 layers, d_model 256, 4 heads, d_ff 1024, M = 256) on
random tokens of length N, batch B, for every kernel and ``softmax`` (exact attention through
``scaled_dot_product_attention``, the reference). One step is what ``lk_study.train.fit``
does: forward, loss, backward, gradient clipping, AdamW step (bf16 autocast on CUDA).

Noise control, as ``lk-study bench attention``: every candidate's model lives in one process
and sees the same tokens; per length, each candidate takes ``warmup`` untimed steps (the first
one records the peak memory: ``lk_study.bench.peak_mib``, tensors allocated during the step
beyond those before it, AdamW's state included on the very first step), then the timed steps go
round-robin over the candidates, the order rotated each repeat; steps_per_s = 1 / median step
time, tokens_per_s = B · N · steps_per_s. On a shared machine other processes stall a
multi-threaded step (every op waits for its slowest thread): ``others_cpu`` is the median share
of the machine's CPU time other processes used during a row's timed steps (Linux /proc/stat),
and with ``max_others_cpu`` < 1 a timed step above it is retaken, at most ``repeats`` times per
candidate and length (then kept, and ``others_cpu`` shows it).

A candidate whose step runs out of memory, or would exceed ``step_cap_s`` (measured, or
predicted from its previous length by the FLOP count below), gets NaN from there on, with a
``note``; the run goes on. (On the CPU the kernel's out-of-memory killer cannot be caught: cap
the lengths.)

**The FLOP bound.** Per layer and sequence, with T = N + 1 positions (the [CLS] row),
D = d_model, H heads of width d_h = D/H, F = d_ff, one multiply-add = 2 FLOPs, the forward
matmuls are

    dense     8·T·D² + 4·T·D·F       (q, k, v and output projections; the FFN)   every kernel
    softmax   4·T²·D                 (Q Kᵀ and A V: 2·T²·d_h each, per head)
    kernel    4·T·m·D + 4·T·M'·(D + H)

where the kernel's m frequencies give θ = x'ωᵀ for queries and keys (2·T·d_h·m each, per
head; m = 0 for ``elu``) and its M' feature columns per head (M, plus the constant smoothing
column of a signed map with s > 0; d_h for ``elu``) give Σ_s φ(k_s)[v_s, 1]ᵀ and φ(q)·that
(2·T·M'·(d_h + 1) each). With backward ≈ 2 × forward, one step costs

    FLOPs_step = 3 · B · L · (dense + attention),

and ``flop_ratio_bound`` = FLOPs_step(softmax) / FLOPs_step(kernel) = (dense + 4T²D) /
(dense + 4TmD + 4TM'(D + H)): the speed-up over softmax a kernel could at best reach if time
followed matmul FLOPs. Not counted: the embedding, dropout, LayerNorm, GELU and residual adds
(the same work in both, so measured speed-ups fall short of the bound), softmax's exponentials
over T² scores and the features' exp / cos, the recomputation in both backward passes, the
classifier head, AdamW (O(parameters), independent of T).
``speedup`` = steps_per_s / softmax's and ``memory_ratio`` = peak_mib / softmax's, at the same
length in the same run. ``num_features`` in the output is M' (0 for softmax), ``step_gflop``
FLOPs_step / 10⁹.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lk_study.bench import peak_mib, sync
from lk_study.config import Config, ConfigError, flatten, with_overrides
from lk_study.kernels import KERNELS, FeatureMap, RandomFeatureMap, kernel_from_config
from lk_study.study import load_study_file
from lk_study.tasks import get_task
from lk_study.train import _optimiser, build_model

COLUMNS = (
    "kernel",
    "seq_len",
    "batch",
    "num_features",
    "steps_per_s",
    "tokens_per_s",
    "step_ms_median",
    "step_ms_min",
    "peak_mib",
    "step_gflop",
    "flop_ratio_bound",
    "speedup",
    "memory_ratio",
    "others_cpu",
    "note",
)
REFERENCE = "softmax"
DEFAULT_STUDY = Path(__file__).resolve().parents[1] / "search_spaces" / "lra_kernels.yaml"


@dataclass(frozen=True)
class TrainBench:
    """What ``bench_train`` measures. ``softmax`` (the reference) always runs.

    ``overrides``: dotted config keys applied last (e.g. a tiny ``model.d_model`` for tests);
    ``num_features`` > 0 overrides the study's ``kernel.num_features``.
    """

    task: str = "text"
    kernels: tuple[str, ...] = tuple(KERNELS)
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
    batch: int = 2
    repeats: int = 3
    warmup: int = 1
    num_features: int = 0
    study: str = str(DEFAULT_STUDY)
    overrides: dict[str, Any] = field(default_factory=dict)
    step_cap_s: float = 300.0
    max_others_cpu: float = 1.0  # retake a timed step if others used more CPU share (1: never)
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [k for k in self.kernels if k not in KERNELS]
        if unknown:
            raise ValueError(f"unknown kernels {unknown}; valid: {', '.join(KERNELS)}")
        for name in ("batch", "repeats", "warmup"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_features < 0:
            raise ValueError(f"num_features must be >= 0 (0: the study's), got {self.num_features}")
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths must be positive sequence lengths, got {self.lengths}")
        if not 0 < self.max_others_cpu <= 1:
            raise ValueError(f"max_others_cpu must be in (0, 1], got {self.max_others_cpu}")
        if not self.step_cap_s > 0:
            raise ValueError(f"step_cap_s must be > 0, got {self.step_cap_s}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r}: CUDA is not available; use --device cpu")

    @property
    def candidates(self) -> tuple[str, ...]:
        """The reference first, then the requested kernels (no duplicates)."""
        return tuple(dict.fromkeys([REFERENCE, *self.kernels]))


# ---------------------------------------------------------------------------- configs and FLOPs


def trial_config(cfg: TrainBench, kernel: str) -> Config:
    """The config the study would train for (``cfg.task``, ``kernel``): its first trial with
    that task and kernel (seed 0, the kernel's conditional keys), else the task's first trial
    with only ``kernel.name`` changed; then ``task.max_len`` = the longest length (where the
    task has the key), ``train.batch_size`` = B, ``num_features``, ``overrides``."""
    study = load_study_file(cfg.study)
    base_task = study.config.task.name
    points = [p for p in study.points() if p.get("task.name", base_task) == cfg.task]
    if not points:
        tasks = dict.fromkeys(p.get("task.name", base_task) for p in study.points())
        raise ConfigError(f"{cfg.study}: no trial of task {cfg.task!r}; tasks: {', '.join(tasks)}")
    same = [p for p in points if p.get("kernel.name", study.config.kernel.name) == kernel]
    point = same[0] if same else {k: v for k, v in points[0].items() if k not in study.search}
    config = with_overrides(study.config, {**point, "kernel.name": kernel})
    sizes: dict[str, Any] = {"train.batch_size": cfg.batch}
    if "task.max_len" in flatten(config):
        sizes["task.max_len"] = max(cfg.lengths)
    if cfg.num_features:
        sizes["kernel.num_features"] = cfg.num_features
    config = with_overrides(config, {**sizes, **cfg.overrides})
    room = get_task(cfg.task).max_len(config.task)
    if room < max(cfg.lengths):
        raise ConfigError(f"task {cfg.task!r} takes sequences up to {room}, not {max(cfg.lengths)}")
    return config


def attention_widths(fm: FeatureMap) -> tuple[int, int] | None:
    """(M', m) of the FLOP count (module docstring): feature columns per head and frequencies;
    None for exact softmax attention."""
    if fm.exact_attention:
        return None
    if isinstance(fm, RandomFeatureMap):
        smoothing = 0 if fm.positive else int(fm.component.smoothing > 0)
        return fm.num_features + smoothing, fm.num_frequencies
    return fm.num_features, 0  # a deterministic map (elu): M' = d_h columns, no projection


def step_flops(config: Config, seq_len: int, batch: int) -> float:
    """Matmul FLOPs of one training step of ``config``'s model on (batch, seq_len) tokens:
    3 · B · L · (8TD² + 4TDF + attention), T = seq_len + 1 (module docstring)."""
    m = config.model
    d, h, t = m.d_model, m.num_heads, seq_len + 1
    fm = kernel_from_config(config.kernel, d // h, h)
    widths = attention_widths(fm)
    dense = 8 * t * d**2 + 4 * t * d * m.d_ff
    if widths is None:
        attention = 4 * t**2 * d
    else:
        cols, freqs = widths
        attention = 4 * t * freqs * d + 4 * t * cols * (d + h)
    return 3.0 * batch * m.num_layers * (dense + attention)


def flop_ratio_bound(config: Config, seq_len: int) -> float:
    """FLOPs_step(softmax) / FLOPs_step(config's kernel) at ``seq_len`` (same model)."""
    softmax = with_overrides(config, {"kernel.name": REFERENCE})
    return step_flops(softmax, seq_len, 1) / step_flops(config, seq_len, 1)


# ---------------------------------------------------------------------------- one training step


@dataclass
class _Candidate:
    name: str
    config: Config
    model: torch.nn.Module
    optim: torch.optim.Optimizer
    stopped: str = ""  # why it runs no longer (out of memory, over the cap); "" = running
    last: tuple[int, float] | None = None  # (seq_len, seconds) of its last measured step


def _candidate(cfg: TrainBench, name: str, device: torch.device) -> _Candidate:
    """The trial's model and AdamW (as ``lk_study.train.fit`` builds them; seeded)."""
    config = trial_config(cfg, name)
    t = config.train
    torch.manual_seed(cfg.seed)
    model = build_model(config).to(device).train()
    model.encoder.resample_kernels(cfg.seed, 0)
    optim, _ = _optimiser(model, t)  # the loop's own AdamW (its schedule is not timed)
    return _Candidate(name, config, model, optim)


def _batch(config: Config, n: int, batch: int, seed: int, device: torch.device) -> dict:
    """Random tokens (batch, n), never the task's padding id (no key is masked), and labels of
    the task's head: classes (classify, dual: also ``ids2``), values (regress), tokens (mlm)."""
    task = get_task(config.task.name)
    g = torch.Generator().manual_seed(seed + n)

    def tokens() -> Tensor:
        ids = torch.randint(0, task.vocab_size(config.task) - 1, (batch, n), generator=g)
        return ids + (ids >= task.pad_id).long()  # skip the padding id

    out = {"ids": tokens()}
    if task.head == "dual":
        out["ids2"] = tokens()
    if task.head == "regress":
        out["label"] = torch.randn(batch, generator=g)
    elif task.head == "mlm":
        out["label"] = tokens()
    else:
        out["label"] = torch.randint(task.num_outputs(config.task), (batch,), generator=g)
    return {k: v.to(device) for k, v in out.items()}


def _step(c: _Candidate, batch: dict) -> None:
    """One ``fit`` step: forward and loss (bf16 autocast on CUDA), backward, clipping, AdamW;
    gradients freed at the end, so nothing of a step outlives it."""
    device = batch["ids"].device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = c.model.loss(c.model(batch), batch["label"])
    loss.backward()
    if c.config.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(c.model.parameters(), c.config.train.grad_clip)
    c.optim.step()
    c.optim.zero_grad(set_to_none=True)


def _cpu_seconds() -> tuple[float, float, float] | None:
    """CPU seconds so far: (all CPUs' time, their busy time, this process's time), from
    /proc/stat and ``os.times``; None where /proc/stat is missing (not Linux)."""
    try:
        with open("/proc/stat") as f:
            ticks = [float(x) for x in f.readline().split()[1:9]]  # user .. steal
    except (OSError, ValueError):
        return None
    hz, own = os.sysconf("SC_CLK_TCK"), os.times()
    return sum(ticks) / hz, (sum(ticks) - ticks[3] - ticks[4]) / hz, own.user + own.system


def _timed(c: _Candidate, batch: dict, memory: bool = False) -> tuple[float, float, float]:
    """(seconds, peak MiB or NaN, others) of one step, ``others`` = the share of the machine's
    CPU time that other processes used meanwhile (NaN if unknown); the peak (``memory``)
    costs profiler time."""
    device = batch["ids"].device
    sync(device)
    before, start = _cpu_seconds(), time.perf_counter()
    peak = peak_mib(lambda: _step(c, batch), device) if memory else math.nan
    if not memory:
        _step(c, batch)
    sync(device)
    seconds, after = time.perf_counter() - start, _cpu_seconds()
    others = math.nan
    if before and after and after[0] > before[0]:
        busy = (after[1] - before[1]) - (after[2] - before[2])
        others = min(max(busy / (after[0] - before[0]), 0.0), 1.0)
    return seconds, peak, others


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate" in text)
    )


def _guarded(c: _Candidate, n: int, run: Callable[[], tuple]) -> tuple[float, float, float]:
    """``run()``, or NaNs with ``c.stopped`` set when the step runs out of memory."""
    try:
        return run()
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if not _out_of_memory(e):
            raise
        c.optim.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        c.stopped = f"out of memory at N={n}"
        return math.nan, math.nan, math.nan


# ---------------------------------------------------------------------------- the benchmark


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _over_cap(c: _Candidate, n: int, cfg: TrainBench) -> str:
    """Why ``c`` must not run at ``n`` (already stopped; its step predicted from the last
    length by the FLOP count exceeds the cap), or ""."""
    if c.stopped or c.last is None:
        return c.stopped
    last_n, seconds = c.last
    predicted = seconds * step_flops(c.config, n, 1) / step_flops(c.config, last_n, 1)
    if predicted > cfg.step_cap_s:
        c.stopped = (
            f"skipped from N={n}: step predicted {predicted:.0f} s > cap {cfg.step_cap_s:g} s"
        )
    return c.stopped


def _warm_up(cands: list[_Candidate], n: int, batch: dict, cfg: TrainBench) -> dict:
    """name -> (peak MiB, note): ``warmup`` untimed steps each, the first recording memory;
    a candidate over the cap (predicted or measured) or out of memory stops."""
    out = {}
    for c in cands:
        note, peak = _over_cap(c, n, cfg), math.nan
        for w in range(0 if note else cfg.warmup):
            seconds, peak_w, _ = _guarded(c, n, lambda c=c, w=w: _timed(c, batch, w == 0))
            peak = peak_w if w == 0 else peak
            if c.stopped:
                break
            c.last = (n, seconds)
            if seconds > cfg.step_cap_s:
                c.stopped = f"step {seconds:.0f} s > cap {cfg.step_cap_s:g} s at N={n}"
                break
        out[c.name] = (peak, note or c.stopped)
    return out


def _measure(cands: list[_Candidate], n: int, cfg: TrainBench, log: Callable) -> dict:
    """name -> (step seconds, others' CPU shares, peak MiB, note) at length ``n``: warm-up,
    then ``repeats`` round-robin steps; a step during which other processes used more than
    ``max_others_cpu`` of the CPU is retaken (at most ``repeats`` retakes per candidate)."""
    batch = _batch(cands[0].config, n, cfg.batch, cfg.seed, torch.device(cfg.device))
    started = time.perf_counter()
    warm = _warm_up(cands, n, batch, cfg)
    log(f"  N={n}: warm-up and memory done ({time.perf_counter() - started:.1f} s)")
    steps: dict[str, list[tuple[float, float]]] = {c.name: [] for c in cands}
    retakes = dict.fromkeys(steps, cfg.repeats)
    active = [c for c in cands if not warm[c.name][1]]
    for r in range(cfg.repeats):
        for c in active[r % max(len(active), 1) :] + active[: r % max(len(active), 1)]:
            while not c.stopped:
                seconds, _, others = _guarded(c, n, lambda c=c: _timed(c, batch))
                if not others > cfg.max_others_cpu or retakes[c.name] == 0:
                    steps[c.name].append((seconds, others))
                    break
                retakes[c.name] -= 1
        log(f"  N={n}: repeat {r + 1}/{cfg.repeats} ({time.perf_counter() - started:.1f} s)")
    out = {}
    for c in cands:
        peak, note = warm[c.name][0], warm[c.name][1] or c.stopped
        kept = [] if note else steps[c.name]
        out[c.name] = ([s for s, _ in kept], [o for _, o in kept], peak, note)
        if kept:
            c.last = (n, statistics.median(s for s, _ in kept))
    return out


def _row(
    c: _Candidate, n: int, cfg: TrainBench, seconds: list, others: list, peak: float, note: str
) -> dict[str, Any]:
    median = statistics.median(seconds) if seconds else math.nan
    known = [o for o in others if not math.isnan(o)]
    widths = attention_widths(c.model.encoder.layers[0].attn.kernel)
    return {
        "kernel": c.name,
        "seq_len": n,
        "batch": cfg.batch,
        "num_features": 0 if widths is None else widths[0],
        "steps_per_s": 1.0 / median,
        "tokens_per_s": cfg.batch * n / median,
        "step_ms_median": median * 1e3,
        "step_ms_min": min(seconds) * 1e3 if seconds else math.nan,
        "peak_mib": peak,
        "step_gflop": step_flops(c.config, n, cfg.batch) / 1e9,
        "flop_ratio_bound": flop_ratio_bound(c.config, n),
        "others_cpu": statistics.median(known) if known else math.nan,
        "note": note,
    }


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``speedup`` = steps_per_s / softmax's and ``memory_ratio`` = peak_mib / softmax's
    at the same (seq_len, batch); NaN without a finite positive softmax value."""
    ref = {(r["seq_len"], r["batch"]): r for r in rows if r["kernel"] == REFERENCE}

    def ratio(r: dict, key: str) -> float:
        base = ref.get((r["seq_len"], r["batch"]), {}).get(key, math.nan)
        return r[key] / base if math.isfinite(base) and base > 0 else math.nan

    for r in rows:
        r["speedup"], r["memory_ratio"] = ratio(r, "steps_per_s"), ratio(r, "peak_mib")
    return rows


def bench_train(
    cfg: TrainBench, log: Callable[[str], None] | None = _stderr
) -> list[dict[str, Any]]:
    """Run the benchmark; one row (a dict with ``COLUMNS``) per (candidate, length), lengths
    in increasing order. ``log`` receives progress lines (None: silent)."""
    log = log or (lambda message: None)
    device = torch.device(cfg.device)
    cands = [_candidate(cfg, name, device) for name in cfg.candidates]
    m = cands[0].config.model
    log(
        f"bench train: {', '.join(c.name for c in cands)} | task {cfg.task}: L={m.num_layers} "
        f"D={m.d_model} H={m.num_heads} F={m.d_ff} M={cands[-1].config.kernel.num_features} | "
        f"B={cfg.batch} | {cfg.repeats} repeats | {device}"
        + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    )
    rows = []
    for n in sorted(cfg.lengths):
        measured = _measure(cands, n, cfg, log)
        rows += [_row(c, n, cfg, *measured[c.name]) for c in cands]
    return add_ratios(rows)


# ---------------------------------------------------------------------------- output


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write benchmark rows with exactly ``COLUMNS`` (floats to 6 significant digits)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def format_table(rows: list[dict[str, Any]]) -> str:
    """One block per length: steps/s, tokens/s, peak MiB, speed-up over softmax against the
    FLOP bound, memory ratio, and the note."""
    lines = []
    for n in dict.fromkeys(r["seq_len"] for r in rows):
        lines.append(f"N={n}")
        lines.append(
            f"  {'kernel':14s} {'steps/s':>8s} {'tokens/s':>9s} {'peak_mib':>9s} "
            f"{'speedup':>8s} {'bound':>6s} {'memory':>7s}"
        )
        for r in (r for r in rows if r["seq_len"] == n):
            lines.append(
                f"  {r['kernel']:14s} {r['steps_per_s']:8.3f} {r['tokens_per_s']:9.0f} "
                f"{r['peak_mib']:9.1f} {r['speedup']:8.2f} {r['flop_ratio_bound']:6.2f} "
                f"{r['memory_ratio']:7.3f}" + (f"  ({r['note']})" if r["note"] else "")
            )
    return "\n".join(lines)


def plot_train(eff: Any) -> Any:
    """The paper's Figure 4 from ``lk_study.tables.efficiency_train``: steps/s and peak memory
    against sequence length, one line per kernel (log-log; softmax black, dashed). A
    ``matplotlib.figure.Figure`` built without pyplot (render with ``fig.savefig``, Agg)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (("steps_per_s", "training steps / s"), ("peak_mib", "peak memory (MiB)"))
    for ax, (col, label) in zip(axes, panels, strict=True):
        for name, k in eff.groupby("kernel", sort=False):
            k = k.sort_values("seq_len")
            style = {"ls": "--", "color": "k"} if name == REFERENCE else {}
            ax.plot(k["seq_len"], k[col], marker="o", label=str(name), **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize="small")
    batch = ", ".join(str(b) for b in dict.fromkeys(eff["batch"]))
    fig.suptitle(f"Training speed and memory vs sequence length (batch {batch})")
    return fig
