"""Efficiency benchmarks (DESIGN §7): ``lk-study bench attention``.

The attention core alone, given q, k, v (B, H, N, d): for each sequence length N, each
candidate is timed forward (``fwd``, under ``torch.no_grad``) and forward + backward
(``fwdbwd``: out.backward(g) for a fixed random g, gradients to q, k, v and to the kernel's
learned parameters, as in training). Candidates:

    <registry kernel>   ``kernel_attention(q, k, v, build_kernel(name, d, H, M))``
    sdpa                ``torch.nn.functional.scaled_dot_product_attention`` (exact softmax)
    floor               ``FloorAttention``: bare positive random features, nothing else
    performer           ``performer_pytorch.FastAttention(d, nb_features=M)`` (FAVOR+)

Noise control: all candidates run in one process on the same inputs; after a warm-up, the
repeats go round-robin over candidates (the order rotated each repeat), so machine noise hits
all alike. Reported per (candidate, N, pass): median and min wall-clock ms of the repeats and
the peak memory, measured in one extra, untimed run:

- CUDA: ``torch.cuda.max_memory_allocated`` minus the bytes allocated before the call;
- CPU: the same quantity, from the allocation events of PyTorch's CPU allocator that
  ``torch.profiler`` records with ``profile_memory=True``: the running sum of allocated minus
  freed bytes during the call, in time order, and its maximum. Tensors only (not the
  allocator's cached pages, not oneDNN/MKL scratch space), inputs excluded.

``num_features`` in the output is the candidate's feature width: M, or 0 for ``sdpa``, or d
for ``elu``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lk_study.attention import kernel_attention
from lk_study.kernels import KERNELS, build_kernel

COLUMNS = (
    "kernel",
    "seq_len",
    "batch",
    "heads",
    "head_dim",
    "num_features",
    "pass",
    "ms_median",
    "ms_min",
    "peak_mib",
)
PASSES = ("fwd", "fwdbwd")
REFERENCES = ("sdpa", "floor", "performer")
DEFAULT_KERNELS = tuple(name for name in KERNELS if name != "softmax")  # softmax is `sdpa`


@dataclass(frozen=True)
class AttentionBench:
    """What ``bench_attention`` measures. The references (sdpa, floor, performer) always run."""

    kernels: tuple[str, ...] = DEFAULT_KERNELS
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192)
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    num_features: int = 256
    repeats: int = 5
    warmup: int = 1
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    seed: int = 0

    def __post_init__(self) -> None:
        valid = [*REFERENCES, *KERNELS]
        unknown = [k for k in self.kernels if k not in valid]
        if unknown:
            raise ValueError(f"unknown kernels {unknown}; valid: {', '.join(valid)}")
        for name in ("batch", "heads", "head_dim", "num_features", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths must be positive sequence lengths, got {self.lengths}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r}: CUDA is not available; use --device cpu")

    @property
    def candidates(self) -> tuple[str, ...]:
        """The references first, then the requested registry kernels (no duplicates)."""
        return tuple(dict.fromkeys([*REFERENCES, *self.kernels]))


class FloorAttention(nn.Module):
    """The speed floor: bare positive-random-feature linear attention, written plainly.

        φ(x) = exp(W x' − ‖x'‖²/2),   x' = x / d^(1/4),   W (H, M, d) ~ N(0, I), fixed
        out = φ(Q) (φ(K)ᵀ V) / (φ(Q) Σ_s φ(k_s))            (B, H, N, d) -> (B, H, N, d)

    Nothing else: no 1/√M factor (it cancels), no orthogonal rows, no log-space
    stabilisation, no padding mask, no clamped normaliser, nothing learned. It is a lower bound
    on the work of a positive-feature kernel, not a usable attention (it overflows for large
    q, k).
    """

    def __init__(self, head_dim: int, num_heads: int, num_features: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("omega", torch.randn(num_heads, num_features, head_dim, generator=g))
        self.num_features = num_features

    def features(self, x: Tensor) -> Tensor:
        """(B, H, N, d) -> φ(x) (B, H, N, M)."""
        xs = x * x.shape[-1] ** -0.25
        return torch.exp(xs @ self.omega.transpose(-2, -1) - 0.5 * xs.pow(2).sum(-1, keepdim=True))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        phi_q, phi_k = self.features(q), self.features(k)
        kv = phi_k.transpose(-2, -1) @ v  # (B, H, M, d)
        den = phi_q @ phi_k.sum(-2).unsqueeze(-1)  # (B, H, N, 1)
        return (phi_q @ kv) / den


@dataclass
class _Candidate:
    name: str
    fn: Callable[[Tensor, Tensor, Tensor], Tensor]
    num_features: int
    module: nn.Module | None = None  # its parameters get gradients in fwdbwd


def _performer(cfg: AttentionBench) -> nn.Module:
    try:
        with warnings.catch_warnings():  # the package imports distutils, torch.cuda.amp
            warnings.simplefilter("ignore")
            from performer_pytorch import FastAttention
    except ImportError as e:
        raise ImportError(
            "the `performer` reference needs performer-pytorch: pip install 'lk_study[bench]'"
        ) from e
    with torch.random.fork_rng(devices=[]):  # it draws its projection from the global RNG
        torch.manual_seed(cfg.seed)
        return FastAttention(dim_heads=cfg.head_dim, nb_features=cfg.num_features)


def _candidate(name: str, cfg: AttentionBench) -> _Candidate:
    h, d, m = cfg.heads, cfg.head_dim, cfg.num_features
    if name == "sdpa":
        return _Candidate(name, F.scaled_dot_product_attention, 0)
    if name == "floor":
        floor = FloorAttention(d, h, m, cfg.seed).to(cfg.device)
        return _Candidate(name, floor, m, floor)
    if name == "performer":
        performer = _performer(cfg).to(cfg.device)
        return _Candidate(name, performer, m, performer)
    fm = build_kernel(name, head_dim=d, num_heads=h, num_features=m).to(cfg.device)
    fm.resample(torch.Generator().manual_seed(cfg.seed))
    return _Candidate(name, lambda q, k, v: kernel_attention(q, k, v, fm), fm.num_features, fm)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(cand: _Candidate, inputs: tuple[Tensor, ...], grad: Tensor, pass_: str) -> None:
    if pass_ == "fwd":
        with torch.no_grad():
            cand.fn(*inputs)
        return
    cand.fn(*inputs).backward(grad)


def _reset_grads(cand: _Candidate, inputs: tuple[Tensor, ...]) -> None:
    for x in inputs:
        x.grad = None
    if cand.module is not None:
        cand.module.zero_grad(set_to_none=True)


def _time_ms(cand: _Candidate, inputs: tuple[Tensor, ...], grad: Tensor, pass_: str) -> float:
    _reset_grads(cand, inputs)
    sync(grad.device)
    start = time.perf_counter()
    _run(cand, inputs, grad, pass_)
    sync(grad.device)
    return (time.perf_counter() - start) * 1e3


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: the profiler's C++ side logs every start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(run: Callable[[], None]) -> float:
    """Peak of (allocated − freed) tensor bytes during ``run()``, from the profiler's events."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    try:
        events = prof.profiler.kineto_results.events()
        deltas = sorted(
            (e.start_ns(), e.nbytes())
            for e in events
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        )
    except AttributeError as e:  # the profiler's result API moved
        print(f"bench: cannot read CPU memory events ({e}); peak_mib = nan", file=sys.stderr)
        return math.nan
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return float(peak)


def peak_mib(run: Callable[[], None], device: torch.device) -> float:
    """Peak tensor memory (MiB) that ``run()`` allocates beyond what was allocated before it,
    on ``device`` (CUDA: the allocator's peak statistics; CPU: ``_cpu_peak_bytes``)."""
    if device.type != "cuda":
        return _cpu_peak_bytes(run) / 2**20
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _peak_mib(cand: _Candidate, inputs: tuple[Tensor, ...], grad: Tensor, pass_: str) -> float:
    _reset_grads(cand, inputs)
    peak = peak_mib(lambda: _run(cand, inputs, grad, pass_), grad.device)
    _reset_grads(cand, inputs)
    return peak


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_attention(
    cfg: AttentionBench, log: Callable[[str], None] | None = _stderr
) -> list[dict[str, object]]:
    """Run the benchmark; one row (a dict with ``COLUMNS``) per (candidate, length, pass).

    ``log`` receives progress lines (None: silent).
    """
    log = log or (lambda message: None)
    device = torch.device(cfg.device)
    cands = [_candidate(name, cfg) for name in cfg.candidates]
    log(
        f"bench attention: {', '.join(c.name for c in cands)} | B={cfg.batch} H={cfg.heads} "
        f"d={cfg.head_dim} M={cfg.num_features} | {cfg.repeats} repeats | {device}"
        + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    )
    rows = []
    for n in cfg.lengths:
        g = torch.Generator(device=device).manual_seed(cfg.seed + n)
        shape = (cfg.batch, cfg.heads, n, cfg.head_dim)
        inputs = tuple(
            torch.randn(shape, generator=g, device=device).requires_grad_() for _ in range(3)
        )
        grad = torch.randn(shape, generator=g, device=device)
        times = {(c.name, p): [] for c in cands for p in PASSES}
        started = time.perf_counter()
        for c in cands:
            for p in PASSES:
                for _ in range(cfg.warmup):
                    _time_ms(c, inputs, grad, p)
        log(f"  N={n}: warm-up done ({time.perf_counter() - started:.1f} s)")
        for r in range(cfg.repeats):
            for c in cands[r % len(cands) :] + cands[: r % len(cands)]:
                for p in PASSES:
                    times[c.name, p].append(_time_ms(c, inputs, grad, p))
            log(f"  N={n}: repeat {r + 1}/{cfg.repeats} ({time.perf_counter() - started:.1f} s)")
        for c in cands:
            for p in PASSES:
                rows.append(
                    {
                        "kernel": c.name,
                        "seq_len": n,
                        "batch": cfg.batch,
                        "heads": cfg.heads,
                        "head_dim": cfg.head_dim,
                        "num_features": c.num_features,
                        "pass": p,
                        "ms_median": statistics.median(times[c.name, p]),
                        "ms_min": min(times[c.name, p]),
                        "peak_mib": _peak_mib(c, inputs, grad, p),
                    }
                )
        log(f"  N={n}: peak memory measured ({time.perf_counter() - started:.1f} s)")
    return rows


def write_csv(rows: list[dict[str, object]], path: str | Path) -> None:
    """Write benchmark rows with exactly ``COLUMNS``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in row.items()})


def format_ratios(rows: list[dict[str, object]]) -> str:
    """One table per (seq_len, pass): ms and MiB, and time ratios to ``sdpa`` and ``floor``.

    A ratio below 1 is faster than the reference.
    """
    lines = []
    keys = dict.fromkeys((r["seq_len"], r["pass"]) for r in rows)
    for n, p in keys:
        block = [r for r in rows if r["seq_len"] == n and r["pass"] == p]
        ref = {r["kernel"]: r["ms_median"] for r in block}
        lines.append(f"N={n} {p}")
        lines.append(
            f"  {'kernel':14s} {'ms_median':>10s} {'ms_min':>10s} {'peak_mib':>9s} "
            f"{'x sdpa':>7s} {'x floor':>8s}"
        )
        for r in block:
            vs = [
                r["ms_median"] / ref[name] if name in ref else math.nan
                for name in ("sdpa", "floor")
            ]
            lines.append(
                f"  {r['kernel']:14s} {r['ms_median']:10.1f} {r['ms_min']:10.1f} "
                f"{r['peak_mib']:9.1f} {vs[0]:7.2f} {vs[1]:8.2f}"
            )
    return "\n".join(lines)
