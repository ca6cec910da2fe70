"""Approximation benchmark (DESIGN §3, §7): ``lk-study bench approx``.

How well φ(x)·φ(y) estimates ``fm.exact_kernel(x, y)``, against the number of features M,
for every random-feature kernel of the registry (``issubclass(KERNELS[name],
RandomFeatureMap)``), with orthogonal and i.i.d. Gaussian draws where the family takes
``orthogonal``, at several input norms; plus two textbook references with closed-form MSE.

Inputs. For each input norm r, x (1, H, T, d) and y (1, H, S, d) are independent uniformly
random directions scaled to ‖x_t‖ = ‖y_s‖ = r. ``input_norm`` is the norm of the raw input x
given to ``fm(x)``; the kernels act on x' = x / d^(1/4), of norm ``scaled_norm`` =
r / d^(1/4) (at d = 16: r = 1, 2, 4 give ‖x'‖ = 0.5, 1, 2, and r = 4 = √d is the norm of a
query with unit-variance entries). The same inputs serve every kernel (the norms ride along
the batch axis: one ``fm`` call per draw covers all of them).

Metrics, per (kernel, num_features M, orthogonal, input_norm), over the P = H·T·S pairs
(h, t, s) and R draws (``fm.resample`` with one seeded ``torch.Generator`` per row):

    k = exact_kernel(x, y)                       (H, T, S), computed once (it is the draw's
                                                 expectation: no draw enters it)
    k̂_r = φ_r(x)·φ_r(y)                          (H, T, S) for draw r
    mse_r = (1/P) Σ_{h,t,s} (k̂_r − k)²           one number per draw
    mse = (1/R) Σ_r mse_r,   mse_se = std_r(mse_r) / √R    (standard error of mse)
    rel_err = √mse / mean_{h,t,s} |k|            (RMSE relative to the kernel's mean size)
    mse_closed_form = (1/P) Σ_{h,t,s} MSE(x'_t, y'_s; m)   references only, else empty
    rel_err_closed_form = √mse_closed_form / mean |k|

E[mse_r] is the pair-averaged MSE, so ``mse`` and ``mse_closed_form`` estimate the same
number. φ is taken as the kernel returns it (its width may exceed M, e.g. an extra constant
feature); ``num_features`` is the M it was built with and ``num_frequencies`` the number of
frequencies m behind it (M/2 for trig and antithetic maps). Registry kernels run in float32
as in training; errors are accumulated in float64. Where ``exact_kernel`` is itself a
Monte-Carlo mean (fastfood_*, generator_*: 2^15–2^16 fixed frequencies) its own error adds a
floor of about m/2^15 times the estimator's MSE, negligible here. Heavy tails: positive
features' squared errors are log-normal-like, and at large ‖x'‖ (‖x'‖ = 2: e^{‖z‖²} ~ e^8) a
finite R mostly misses the rare draws that carry the MSE, so ``mse`` then falls below its
expectation and ``mse_se`` understates the uncertainty (the sm_positive_iid rows show how
far, against their closed form); trig features are bounded and converge at every norm.

References: the two i.i.d. estimators of the softmax kernel SM(x, y) = exp(xᵀy) analysed by
Choromanski et al. (ICLR 2021, Lemma 2), written here independently of the registry and
applied to the same x', y'. With m frequencies ω_i ~ N(0, I_d) i.i.d., z = x' + y',
δ = x' − y':

    sm_trig_iid:     φ(x) = e^{‖x'‖²/2} / √m [sin ω_iᵀx', cos ω_iᵀx']_{i=1..m}   (width 2m)
                     MSE = (1/(2m)) e^{‖z‖²} SM(x', y')^{−2} (1 − e^{−‖δ‖²})²
    sm_positive_iid: φ(x) = e^{−‖x'‖²/2} / √m [e^{ω_iᵀx'}]_{i=1..m}              (width m)
                     MSE = (1/m) e^{‖z‖²} SM(x', y')² (1 − e^{−‖z‖²})

``num_features`` is the width of φ, as for the registry: m = M/2 for trig, m = M for
positive. Derivation (both estimators are means of m i.i.d. terms Y_i, so MSE = Var Y / m;
for ω ~ N(0, I): E[e^{ωᵀv}] = e^{‖v‖²/2}, E[cos ωᵀv] = e^{−‖v‖²/2}; and
‖z‖² − ‖x'‖² − ‖y'‖² = 2x'ᵀy', ‖x'‖² + ‖y'‖² − ‖δ‖² = 2x'ᵀy'):

- positive: Y = e^{ωᵀz} e^{−(‖x'‖² + ‖y'‖²)/2}. E[Y] = e^{(‖z‖² − ‖x'‖² − ‖y'‖²)/2} = SM.
  E[Y²] = E[e^{(2ω)ᵀz}] e^{−‖x'‖² − ‖y'‖²} = e^{2‖z‖² − ‖x'‖² − ‖y'‖²} = SM² e^{‖z‖²}.
  Var Y = SM² (e^{‖z‖²} − 1) = SM² e^{‖z‖²} (1 − e^{−‖z‖²}).
- trig: Y = e^{(‖x'‖² + ‖y'‖²)/2} (sin ωᵀx' sin ωᵀy' + cos ωᵀx' cos ωᵀy')
  = e^{(‖x'‖² + ‖y'‖²)/2} cos ωᵀδ. E[Y] = e^{(‖x'‖² + ‖y'‖² − ‖δ‖²)/2} = SM.
  E[cos² ωᵀδ] = ½ (1 + E[cos 2ωᵀδ]) = ½ (1 + e^{−2‖δ‖²}), so
  Var cos ωᵀδ = ½ (1 + e^{−2‖δ‖²}) − e^{−‖δ‖²} = ½ (1 − e^{−‖δ‖²})², and
  Var Y = ½ e^{‖x'‖² + ‖y'‖²} (1 − e^{−‖δ‖²})² with e^{‖x'‖² + ‖y'‖²} = e^{‖z‖²} SM^{−2}.

Both agree with Lemma 2. The closed forms below are coded in the lemma's form, the Monte
Carlo in the features' form; ``tests/test_bench_approx.py`` checks them against each other.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lk_study.kernels import KERNELS, FeatureMap, RandomFeatureMap, build_kernel, family_params

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = (
    "kernel",
    "head_dim",
    "num_features",
    "num_frequencies",
    "orthogonal",
    "input_norm",
    "scaled_norm",
    "draws",
    "mean_abs_exact",
    "mse",
    "mse_se",
    "rel_err",
    "mse_closed_form",
    "rel_err_closed_form",
)
REFERENCES = ("sm_trig_iid", "sm_positive_iid")
RANDOM_FEATURE_KERNELS = tuple(
    name for name, cls in KERNELS.items() if issubclass(cls, RandomFeatureMap)
)
DEFAULT_KERNELS = (*RANDOM_FEATURE_KERNELS, *REFERENCES)
MAX_SCALED_NORM = 4.0  # ‖x'‖ ≤ 4: e^{‖x'+y'‖²} ≤ e^64 and float32 features stay finite


class SoftmaxIID:
    """A textbook i.i.d. estimator of SM(x', y') = exp(x'·y') (module docstring), with the
    feature-map calls the benchmark uses: ``resample``, ``__call__``, ``exact_kernel``, plus
    ``mse_closed_form``. float64 throughout; ω (H, m, d) ~ N(0, I) i.i.d.

    ``trig``: φ (B, H, T, 2m) = e^{‖x'‖²/2}/√m [sin ωx', cos ωx'], m = M/2.
    otherwise positive: φ (B, H, T, m) = e^{−‖x'‖²/2}/√m e^{ωx'}, m = M.
    """

    def __init__(self, head_dim: int, num_heads: int, num_features: int, trig: bool) -> None:
        if num_features < 1 or (trig and num_features % 2):
            raise ValueError(
                f"num_features must be a positive (even for trig) int, got {num_features}"
            )
        self.head_dim, self.num_heads, self.num_features = head_dim, num_heads, num_features
        self.trig = trig
        self.num_frequencies = num_features // 2 if trig else num_features
        self.omega = torch.zeros(num_heads, self.num_frequencies, head_dim, dtype=torch.float64)

    def scale(self, x: Tensor) -> Tensor:
        """x (..., d) -> x' = x / d^(1/4), in float64."""
        return x.double() * self.head_dim**-0.25

    def resample(self, generator: torch.Generator) -> None:
        self.omega = torch.randn(self.omega.shape, generator=generator, dtype=torch.float64)

    def __call__(self, x: Tensor) -> Tensor:
        """(B, H, T, d) -> φ(x) (B, H, T, M)."""
        xs = self.scale(x)
        proj = torch.einsum("bhtd,hmd->bhtm", xs, self.omega)  # ω_iᵀx'
        sq = xs.pow(2).sum(-1, keepdim=True)  # ‖x'‖² (B, H, T, 1)
        m = self.num_frequencies
        if self.trig:
            return torch.exp(0.5 * sq) / math.sqrt(m) * torch.cat([proj.sin(), proj.cos()], -1)
        return torch.exp(proj - 0.5 * sq) / math.sqrt(m)

    def exact_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        """SM(x', y') = exp(x'·y'): (B, H, T, d), (B, H, S, d) -> (B, H, T, S)."""
        return (self.scale(x) @ self.scale(y).transpose(-2, -1)).exp()

    def mse_closed_form(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-pair MSE of Lemma 2 (Choromanski et al. 2021), (B, H, T, S); no draw enters."""
        return softmax_iid_mse(self.scale(x), self.scale(y), self.num_frequencies, self.trig)


def softmax_iid_mse(xs: Tensor, ys: Tensor, m: int, trig: bool) -> Tensor:
    """Lemma 2's MSE of the m-frequency i.i.d. softmax-kernel estimator, per pair.

    xs (B, H, T, d), ys (B, H, S, d) already scaled -> (B, H, T, S):
        trig:     (1/(2m)) e^{‖z‖²} SM^{−2} (1 − e^{−‖δ‖²})²
        positive: (1/m) e^{‖z‖²} SM² (1 − e^{−‖z‖²})
    with z = x' + y', δ = x' − y', SM = exp(x'·y').
    """
    z2 = (xs.unsqueeze(-2) + ys.unsqueeze(-3)).pow(2).sum(-1)  # ‖z‖² (B, H, T, S)
    d2 = (xs.unsqueeze(-2) - ys.unsqueeze(-3)).pow(2).sum(-1)  # ‖δ‖²
    log_sm = xs @ ys.transpose(-2, -1)  # log SM
    if trig:
        return torch.exp(z2 - 2 * log_sm) * (-torch.expm1(-d2)) ** 2 / (2 * m)
    return torch.exp(z2 + 2 * log_sm) * (-torch.expm1(-z2)) / m


@dataclass(frozen=True)
class ApproxBench:
    """What ``bench_approx`` measures (module docstring). ``input_norms`` are ‖x‖ of the raw
    inputs; the kernels see ‖x'‖ = ‖x‖ / d^(1/4)."""

    kernels: tuple[str, ...] = DEFAULT_KERNELS
    num_features: tuple[int, ...] = (16, 64, 256, 1024)
    input_norms: tuple[float, ...] = (1.0, 2.0, 4.0)
    draws: int = 500
    head_dim: int = 16
    heads: int = 2
    queries: int = 8
    keys: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        valid = [*RANDOM_FEATURE_KERNELS, *REFERENCES]
        unknown = [k for k in self.kernels if k not in valid]
        if unknown:
            raise ValueError(
                f"unknown or non-random-feature kernels {unknown}; valid: {', '.join(valid)}"
            )
        if not self.kernels:
            raise ValueError("kernels: give at least one")
        if not self.num_features or any(m < 2 or m % 2 for m in self.num_features):
            raise ValueError(
                f"num_features must be even numbers >= 2 (trig maps use M/2 frequencies), "
                f"got {self.num_features}"
            )
        for name in ("head_dim", "heads", "queries", "keys"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.draws < 2:
            raise ValueError(f"draws must be >= 2 (for the standard error), got {self.draws}")
        top = MAX_SCALED_NORM * self.head_dim**0.25
        if not self.input_norms or any(not 0 < r <= top for r in self.input_norms):
            raise ValueError(
                f"input_norms must be in (0, {top:g}] at head_dim {self.head_dim} "
                f"(‖x'‖ = ‖x‖/d^(1/4) <= {MAX_SCALED_NORM:g}, beyond which exp overflows), "
                f"got {self.input_norms}"
            )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sphere_inputs(cfg: ApproxBench, count: int, generator: torch.Generator) -> Tensor:
    """(N, H, count, d) float32: uniform random directions, row n scaled to ``input_norms[n]``."""
    shape = (len(cfg.input_norms), cfg.heads, count, cfg.head_dim)
    v = torch.randn(shape, generator=generator, dtype=torch.float64)
    norms = torch.tensor(cfg.input_norms, dtype=torch.float64).view(-1, 1, 1, 1)
    return (v / v.norm(dim=-1, keepdim=True) * norms).float()


def _variants(cfg: ApproxBench) -> Iterator[tuple[str, bool | None]]:
    """(kernel, orthogonal): both draws where the family takes ``orthogonal``, else None."""
    for name in cfg.kernels:
        if name in REFERENCES:
            yield name, False
        elif "orthogonal" in family_params(name):
            yield name, True
            yield name, False
        else:
            yield name, None


def _build(name: str, orthogonal: bool | None, cfg: ApproxBench, m: int) -> FeatureMap | SoftmaxIID:
    if name in REFERENCES:
        return SoftmaxIID(cfg.head_dim, cfg.heads, m, trig=name == "sm_trig_iid")
    family = {} if orthogonal is None else {"orthogonal": orthogonal}
    return build_kernel(name, head_dim=cfg.head_dim, num_heads=cfg.heads, num_features=m, **family)


@torch.no_grad()
def measure(
    fm: FeatureMap | SoftmaxIID, x: Tensor, y: Tensor, draws: int, seed: int
) -> dict[str, Tensor]:
    """Error statistics of φ(x)·φ(y) against ``fm.exact_kernel`` over ``draws`` draws.

    x (N, H, T, d), y (N, H, S, d); every statistic is per batch row n, shape (N,):
    ``mse``, ``mse_se``, ``mean_abs_exact``, and ``mse_closed_form`` if ``fm`` has one.
    The draws come from ``torch.Generator().manual_seed(seed)``, resampled in turn.
    """
    exact = fm.exact_kernel(x, y).double()  # (N, H, T, S)
    gen = torch.Generator().manual_seed(seed)
    per_draw = torch.empty(draws, x.shape[0], dtype=torch.float64)
    for r in range(draws):
        fm.resample(gen)
        est = fm(x) @ fm(y).transpose(-2, -1)  # (N, H, T, S)
        per_draw[r] = (est.double() - exact).pow(2).mean(dim=(1, 2, 3))
    out = {
        "mse": per_draw.mean(0),
        "mse_se": per_draw.std(0) / math.sqrt(draws),
        "mean_abs_exact": exact.abs().mean(dim=(1, 2, 3)),
    }
    if hasattr(fm, "mse_closed_form"):
        out["mse_closed_form"] = fm.mse_closed_form(x, y).mean(dim=(1, 2, 3))
    return out


def bench_approx(
    cfg: ApproxBench, log: Callable[[str], None] | None = _stderr
) -> list[dict[str, object]]:
    """Run the benchmark; one row (a dict with ``COLUMNS``) per (kernel, orthogonal, M, norm).

    ``orthogonal`` is True/False where the family takes it (references: False), None where the
    family has no such choice (FastFood: structured; others: their fixed default).
    ``log`` receives progress lines (None: silent). Runs on one intra-op thread (restored
    after): the tensors are tiny, so threads only add synchronisation, and with another
    process busy on a 2-core machine two threads made the run 4x slower (measured).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench_approx(cfg, log or (lambda message: None))
    finally:
        torch.set_num_threads(threads)


def _bench_approx(cfg: ApproxBench, log: Callable[[str], None]) -> list[dict[str, object]]:
    g = torch.Generator().manual_seed(cfg.seed)
    x, y = sphere_inputs(cfg, cfg.queries, g), sphere_inputs(cfg, cfg.keys, g)
    variants = list(_variants(cfg))
    log(
        f"bench approx: {len(variants)} kernel variants | d={cfg.head_dim} H={cfg.heads} "
        f"T={cfg.queries} S={cfg.keys} | M={list(cfg.num_features)} | "
        f"‖x‖={list(cfg.input_norms)} | {cfg.draws} draws | 1 thread"
    )
    rows = []
    started = time.perf_counter()
    for name, orthogonal in variants:
        for m in cfg.num_features:
            fm = _build(name, orthogonal, cfg, m)
            stats = measure(fm, x, y, cfg.draws, cfg.seed + 1)
            for n, r in enumerate(cfg.input_norms):
                mae = float(stats["mean_abs_exact"][n])
                mse = float(stats["mse"][n])
                closed = float(stats["mse_closed_form"][n]) if "mse_closed_form" in stats else None
                rows.append(
                    {
                        "kernel": name,
                        "head_dim": cfg.head_dim,
                        "num_features": m,
                        "num_frequencies": getattr(fm, "num_frequencies", None),
                        "orthogonal": orthogonal,
                        "input_norm": r,
                        "scaled_norm": r * cfg.head_dim**-0.25,
                        "draws": cfg.draws,
                        "mean_abs_exact": mae,
                        "mse": mse,
                        "mse_se": float(stats["mse_se"][n]),
                        "rel_err": math.sqrt(mse) / mae,
                        "mse_closed_form": closed,
                        "rel_err_closed_form": None if closed is None else math.sqrt(closed) / mae,
                    }
                )
        log(f"  {_label(name, orthogonal)}: done ({time.perf_counter() - started:.1f} s)")
    return rows


def _label(name: str, orthogonal: bool | None) -> str:
    if name in REFERENCES or orthogonal is None:
        return name
    return f"{name} {'orth' if orthogonal else 'iid'}"


def write_csv(rows: list[dict[str, object]], path: str | Path) -> None:
    """Write rows with exactly ``COLUMNS``; floats to 6 significant digits, None as empty."""

    def cell(v: object) -> object:
        if v is None:
            return ""
        return f"{v:.6g}" if isinstance(v, float) else v

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: cell(v) for k, v in row.items()})


def format_table(rows: list[dict[str, object]], column: str = "rel_err") -> str:
    """One table per input norm: ``column`` for each kernel variant (rows) and M (columns);
    references also get a ``(closed form)`` row."""
    ms = sorted({int(r["num_features"]) for r in rows})
    lines = []
    for norm in dict.fromkeys(r["input_norm"] for r in rows):
        block = [r for r in rows if r["input_norm"] == norm]
        lines.append(f"{column}, ‖x‖ = {norm:g} (‖x'‖ = {block[0]['scaled_norm']:.3g})")
        lines.append(f"  {'kernel':30s}" + "".join(f" {'M=' + str(m):>10s}" for m in ms))
        labels = dict.fromkeys((r["kernel"], r["orthogonal"]) for r in block)
        for name, orth in labels:
            by_m = {
                r["num_features"]: r
                for r in block
                if (r["kernel"], r["orthogonal"]) == (name, orth)
            }
            keys = [column] + ([f"{column}_closed_form"] if name in REFERENCES else [])
            for key in keys:
                label = _label(name, orth) + (" (closed form)" if key != column else "")
                cells = "".join(
                    f" {by_m[m][key]:10.3g}"
                    if m in by_m and by_m[m].get(key) is not None
                    else f" {'-':>10s}"
                    for m in ms
                )
                lines.append(f"  {label:30s}{cells}")
    return "\n".join(lines)


def plot_approx(rows: list[dict[str, object]]) -> Figure:
    """rel_err against M (log-log), one panel per input norm, one line per kernel variant:
    solid for orthogonal or fixed draws, dashed for i.i.d.; the references in black
    (sm_trig_iid, squares) and gray (sm_positive_iid, triangles), measured dashed and closed
    form dotted. Built without pyplot (render with ``fig.savefig``, Agg)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    norms = list(dict.fromkeys(r["input_norm"] for r in rows))
    names = list(dict.fromkeys(r["kernel"] for r in rows if r["kernel"] not in REFERENCES))
    palette = [colormaps["tab10"](i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # no gray
    colors = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    ref_style = {"sm_trig_iid": ("k", "s"), "sm_positive_iid": ("0.4", "^")}
    fig = Figure(figsize=(4.2 * len(norms) + 2.4, 4.4), layout="constrained")
    axes = fig.subplots(1, len(norms), squeeze=False, sharey=True)[0]
    for ax, norm in zip(axes, norms, strict=True):
        block = [r for r in rows if r["input_norm"] == norm]
        for name, orth in dict.fromkeys((r["kernel"], r["orthogonal"]) for r in block):
            line = sorted(
                (r for r in block if (r["kernel"], r["orthogonal"]) == (name, orth)),
                key=lambda r: r["num_features"],
            )
            ms = [r["num_features"] for r in line]
            if name in REFERENCES:
                color, marker = ref_style[name]
                ax.plot(
                    ms,
                    [r["rel_err"] for r in line],
                    color=color,
                    marker=marker,
                    ls="--",
                    lw=1.2,
                    label=f"{name} (measured)",
                )
                ax.plot(
                    ms,
                    [r["rel_err_closed_form"] for r in line],
                    color=color,
                    ls=":",
                    lw=2.0,
                    label=f"{name} (closed form)",
                )
                continue
            ax.plot(
                ms,
                [r["rel_err"] for r in line],
                color=colors[name],
                marker="o",
                ms=3.5,
                ls="--" if orth is False else "-",
                label=_label(name, orth),
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({r["num_features"] for r in block})
        ax.set_xticks(ticks, [str(m) for m in ticks])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("num_features M (width of φ)")
        ax.set_title(f"‖x‖ = {norm:g}  (‖x'‖ = {block[0]['scaled_norm']:.3g})")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("rel_err = RMSE / mean |k(x, y)|")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize="small")
    d = rows[0]["head_dim"]
    fig.suptitle(
        f"φ(x)·φ(y) vs exact_kernel, d = {d}, {rows[0]['draws']} draws "
        f"(dashed: i.i.d. Gaussian, solid: orthogonal / fixed scheme)"
    )
    return fig
