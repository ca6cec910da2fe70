"""The one training loop, for every task and kernel, run by each Ray Train worker.

``train_loop_per_worker(config)`` is what ``TorchTrainer`` runs; it calls ``fit`` with Ray's
context (rank, device, checkpoint, report). ``fit`` is plain PyTorch: AdamW, the LRA rsqrt
(or linear) schedule, gradient clipping, bf16 autocast on GPU, evaluation every
``train.eval_every`` steps, and at each evaluation one report (+ a checkpoint from rank 0).
Resuming from a checkpoint restores model, optimiser, schedule, step, random-feature draw and
data order, so a restarted run continues as if never interrupted. Each checkpoint also keeps
the run's metric history (every report so far: ``state["history"]``, and ``HISTORY_FILE`` next
to the state), so a study driver restarted after a kill can give Tune the whole curve again.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lk_study import models
from lk_study.checkpoints import CHECKPOINT_FILE, load_encoder
from lk_study.config import (
    FILE_KEYS,
    Config,
    TrainConfig,
    config_from_dict,
    flatten,
    to_dict,
    with_overrides,
)
from lk_study.tasks import Split, get_task, prepare
from lk_study.tasks.base import PAD_ID

HISTORY_FILE = "history.json"  # in each checkpoint: every report up to it, and its files' sizes


def build_model(cfg: Config) -> torch.nn.Module:
    """The model for ``cfg`` and its task (``lk_study.models.build_model``)."""
    return models.build_model(cfg, get_task(cfg.task.name))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only; none on biases, LayerNorm, and the
    kernels' spectral parameters (decay would pull learned S, G, μ, log σ towards 0, a
    different kernel rather than a simpler one)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        spectral = ".kernel." in f".{name}"
        (no_decay if spectral or p.ndim < 2 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_factor(t: TrainConfig, step: int) -> float:
    """Multiplier of ``t.lr`` at ``step`` (see TrainConfig for the formulas)."""
    w = max(t.warmup, 1)
    if t.schedule == "constant":
        return min(1.0, (step + 1) / w)
    if t.schedule == "rsqrt":
        return min(1.0, (step + 1) / w) * math.sqrt(w / max(step + 1, w))
    return max(0.0, min((step + 1) / w, (t.max_steps - step) / max(t.max_steps - w, 1)))


def batches(n: int, batch: int, seed: int, start_step: int):
    """Yield index arrays forever: a fresh permutation per epoch (seeded by (seed, epoch)),
    dropping the last partial batch; starts at ``start_step`` so resumed runs see the same data."""
    per_epoch = max(n // batch, 1)
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        for i in range(offset, per_epoch):
            yield step, perm[i * batch : (i + 1) * batch]
            step += 1


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def eval_draw_index(j: int) -> int:
    """Redraw index of the j-th fixed evaluation draw; negative, so never a training draw."""
    return -(j + 1)


def metric_prefix(split: str) -> str:
    """'validation' -> 'val_', 'validation_matched' -> 'val_matched_'."""
    rest = split.removeprefix("validation").strip("_")
    return f"val_{rest}_" if rest else "val_"


def _all_gather_np(x: np.ndarray) -> np.ndarray:
    if not (dist.is_available() and dist.is_initialized()):
        return x
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, x)
    return np.concatenate(parts)


@torch.no_grad()
def evaluate(
    model,
    core,
    split: Split,
    task,
    batch: int,
    device,
    amp: bool,
    seed: int,
    eval_draws: int = 0,
    train_draw: int = 0,
) -> dict:
    """Loss and task metrics over the whole split (every worker's shard, gathered).

    eval_draws = 0 uses the current training draw. eval_draws = n averages the head's scores
    (class probabilities, regression values, token probabilities) over n fixed draws, the same
    at every evaluation and on every rank; the training draw is restored afterwards.
    """
    model.eval()
    draws = [eval_draw_index(j) for j in range(eval_draws)] or [None]
    loss_sum, count, preds, refs = 0.0, 0.0, [], []
    for i in range(0, len(split), batch):
        b = {
            k: v.to(device)
            for k, v in split.batch(np.arange(i, min(i + batch, len(split)))).items()
        }
        total = None
        for draw in draws:
            if draw is not None:
                core.encoder.resample_kernels(seed, draw)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                scores = core.scores(model(b)).double()
            total = scores if total is None else total + scores
        scores = total / len(draws)
        loss, n = core.eval_loss(scores, b["label"])
        pred, ref = core.predict(scores, b["label"])
        loss_sum, count = loss_sum + loss, count + n
        preds.append(pred.cpu().numpy())
        refs.append(ref.cpu().numpy())
    if eval_draws:
        core.encoder.resample_kernels(seed, train_draw)
    model.train()
    pred, ref = _all_gather_np(np.concatenate(preds)), _all_gather_np(np.concatenate(refs))
    loss_sum, count = _all_sum([loss_sum, count], device)
    return {"loss": loss_sum / max(count, 1), **task.metrics(pred, ref)}


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


Report = Callable[[dict[str, Any], "dict | None"], None]


def _data(cfg: Config, task, rank: int, world_size: int):
    """This worker's train shard, eval splits, per-worker batch, steps per epoch, and the
    train config with epochs and warmup_ratio resolved to steps."""
    paths = prepare(cfg.task)  # cached; generated once per machine under a file lock
    max_len = task.max_len(cfg.task)
    train = Split(paths["train"], rank, world_size, max_len)
    evals = {s: Split(paths[s], rank, world_size, max_len) for s in task.splits if s != "train"}
    local_batch = max(cfg.train.batch_size // world_size, 1)
    steps_per_epoch = max(train.total_rows // (local_batch * world_size), 1)
    return train, evals, local_batch, steps_per_epoch, cfg.train.resolve(steps_per_epoch)


def _optimiser(core: torch.nn.Module, t: TrainConfig):
    """AdamW (no weight decay on spectral parameters, norms, biases) and its lr schedule."""
    optim = torch.optim.AdamW(
        param_groups(core, t.weight_decay),
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        eps=t.adam_eps,
        weight_decay=t.weight_decay,
    )
    return optim, torch.optim.lr_scheduler.LambdaLR(optim, functools.partial(lr_factor, t))


@dataclass
class _Run:
    """What one ``fit`` call trains: the model (``core``, and ``model`` as wrapped for DDP),
    its optimiser and schedule, the data and the resolved train config."""

    cfg: Config
    task: Any
    model: torch.nn.Module
    core: torch.nn.Module
    optim: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    evals: dict[str, Split]
    t: TrainConfig
    local_batch: int
    steps_per_epoch: int
    elapsed: float  # seconds trained before this call (resumed runs)
    rank: int
    world_size: int
    device: torch.device

    @property
    def amp(self) -> bool:
        return self.device.type == "cuda"


class _Reporter:
    """Evaluates every split, adds the training counters since the last report, and calls
    ``report(metrics, state)`` (the state only on rank 0, none for a failed run). ``history``
    holds every report of the run so far (a resumed run starts from its checkpoint's); each
    state carries it."""

    def __init__(self, run: _Run, report: Report, history: list[dict] | None = None) -> None:
        self.run, self.report = run, report
        self.history = list(history or [])
        self.t0 = self.last = time.perf_counter()
        self.loss_sum, self.loss_n, self.tokens = 0.0, 0, 0
        # files each checkpoint carries besides the state (e.g. the MLM's tokenizer.json)
        files = run.task.artifacts(run.cfg.task)
        self.artifacts = {name: str(path) for name, path in files.items()}
        self.num_params = sum(p.numel() for p in run.core.parameters())

    def add(self, loss: float, tokens: int) -> None:
        self.loss_sum += loss
        self.loss_n += 1
        self.tokens += tokens

    def __call__(self, done: int, draw: int, error: str | None = None) -> None:
        run = self.run
        t, metrics, results = run.t, {}, {}
        for split_name, split in run.evals.items():
            results[split_name] = result = evaluate(
                run.model,
                run.core,
                split,
                run.task,
                run.local_batch * 4,
                run.device,
                run.amp,
                t.seed,
                run.cfg.kernel.eval_draws,
                draw,
            )
            metrics.update({f"{metric_prefix(split_name)}{k}": v for k, v in result.items()})
        score = run.task.score(results)  # one number over the eval splits (GLUE's task score)
        if score is not None:
            metrics["val_score"] = score
        now = time.perf_counter()
        counts = [self.loss_sum, float(self.loss_n), float(self.tokens)]
        train_loss, n, tok = _all_sum(counts, run.device)
        metrics.update(
            step=done,
            epoch=done / run.steps_per_epoch,
            total_steps=t.max_steps,
            train_loss=train_loss / max(n, 1),
            tokens_per_s=tok / max(now - self.last, 1e-9),
            seconds=run.elapsed + now - self.t0,
            lr=run.sched.get_last_lr()[0],
            peak_mib=peak_memory_mib(run.device),
            num_params=self.num_params,
            world_size=run.world_size,
        )
        snapshot = None
        if error is not None:
            metrics["error"] = error
        else:
            self.history.append(dict(metrics))
        if error is None and run.rank == 0:
            snapshot = {
                "model": run.core.state_dict(),
                "optim": run.optim.state_dict(),
                "sched": run.sched.state_dict(),
                "step": done,
                "seconds": metrics["seconds"],
                "config": to_dict(run.cfg),
                "artifacts": self.artifacts,
                "history": list(self.history),
                # the random state dropout draws from, so a resumed run continues exactly
                "rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state()} if run.device.type == "cuda" else {}),
            }
        self.report(metrics, snapshot)
        self.loss_sum, self.loss_n, self.tokens, self.last = 0.0, 0, 0, time.perf_counter()


def fit(
    cfg: Config,
    report: Report,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    state: dict | None = None,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
) -> None:
    """Train ``cfg`` and call ``report(metrics, state_or_None)`` at each evaluation.

    ``state`` (from a previous report) resumes the run; ``wrap`` is e.g. Ray's prepare_model.
    """
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.train.seed)
    task = get_task(cfg.task.name)
    train, evals, local_batch, steps_per_epoch, t = _data(cfg, task, rank, world_size)
    core = build_model(cfg).to(device)
    optim, sched = _optimiser(core, t)
    start, elapsed, history = 0, 0.0, []
    if state is None and cfg.model.init_from:
        loaded = load_encoder(core, cfg.model.init_from)
        if rank == 0:
            print(f"Loaded {len(loaded)} encoder tensors from {cfg.model.init_from}")
    if state is not None:
        core.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        start, elapsed = state["step"], state["seconds"]
        history = state.get("history", [])  # (checkpoints from before histories: none)
        if "rng" in state:  # (older checkpoints: dropout draws differ after the resume)
            torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    redraw = cfg.kernel.redraw

    def train_draw(step: int) -> int:  # redraw index in force at ``step``
        return step // redraw if redraw else 0

    core.encoder.resample_kernels(t.seed, train_draw(start))
    model = wrap(core)
    run = _Run(
        cfg, task, model, core, optim, sched, evals, t, local_batch, steps_per_epoch, elapsed,
        rank, world_size, device,
    )  # fmt: skip
    reporter = _Reporter(run, report, history)

    for step, idx in batches(len(train), local_batch, t.seed + 7919 * rank, start):
        if step >= t.max_steps:
            break
        if redraw and step % redraw == 0 and step > start:
            core.encoder.resample_kernels(t.seed, train_draw(step))
        inject_failure(step)
        batch = {k: v.to(device) for k, v in train.batch(idx).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.amp):
            loss = core.loss(model(batch), batch["label"])
        # all ranks agree, so that all of them stop (report is a barrier)
        if _all_sum([0.0 if torch.isfinite(loss) else 1.0], device)[0] > 0:
            reason = (
                f"training loss became {loss.item()} at step {step + 1}; lower train.lr or "
                "check the kernel (earlier checkpoints are kept)"
            )
            reporter(step + 1, train_draw(step), error=reason)  # the metrics reach Tune, then fail
            raise FloatingPointError(reason)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(core.parameters(), t.grad_clip)
        optim.step()
        sched.step()
        real = sum(int((batch[k] != PAD_ID).sum()) for k in ("ids", "ids2") if k in batch)
        reporter.add(loss.item(), real)
        done = step + 1
        if done % t.eval_every == 0 or done == t.max_steps:
            reporter(done, train_draw(done - 1))


def inject_failure(step: int) -> None:
    """Fault injection for tests: with LK_STUDY_FAIL_AT_STEP=k and LK_STUDY_FAIL_MARKER=PATH,
    the first worker to reach step k (0-based) creates PATH and raises; retries pass."""
    at = os.environ.get("LK_STUDY_FAIL_AT_STEP")
    marker = os.environ.get("LK_STUDY_FAIL_MARKER")
    if at is None or marker is None or step != int(at):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise RuntimeError(f"injected worker failure at step {step} (LK_STUDY_FAIL_AT_STEP)")


def write_checkpoint(snapshot: dict, folder: str) -> None:
    """A checkpoint in local ``folder``: the state (``CHECKPOINT_FILE``), the artifacts it
    names (e.g. tokenizer.json), and ``HISTORY_FILE`` last (it lists the others' sizes)."""
    torch.save(snapshot, os.path.join(folder, CHECKPOINT_FILE))
    for name, src in snapshot.get("artifacts", {}).items():
        shutil.copyfile(src, os.path.join(folder, name))
    write_history(snapshot.get("history", []), folder)


def write_history(history: list[dict], folder: str) -> None:
    """``HISTORY_FILE`` in checkpoint ``folder``: {"rows": history (report dicts), "files":
    the size of every other file there}, so a reader can tell a checkpoint whose upload a kill
    cut short (``lk_study.tune.restart_history``). Numpy scalars as Python numbers."""

    def plain(value):
        return value.item() if hasattr(value, "item") else str(value)

    files = {name: os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)}
    with open(os.path.join(folder, HISTORY_FILE), "w") as f:
        json.dump({"rows": history, "files": files}, f, default=plain)


# ---------------------------------------------------------------------------- Ray Train


def localise(cfg: Config) -> Config:
    """``cfg`` with the files it reads (``FILE_KEYS``) copied to this node when they are
    s3:// / gs:// URIs (a checkpoint folder, or a file); local paths are kept."""
    import pyarrow.fs as pafs

    flat = flatten(cfg)
    local = {}
    for key in FILE_KEYS:
        uri = flat.get(key)
        if not (isinstance(uri, str) and "://" in uri):
            continue
        fs, path = pafs.FileSystem.from_uri(uri)
        dest = Path(tempfile.mkdtemp(prefix="lk_study_")) / Path(path).name
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            dest.mkdir()
        pafs.copy_files(path, str(dest), source_filesystem=fs)
        local[key] = str(dest)
    return with_overrides(cfg, local) if local else cfg


def train_loop_per_worker(config: dict) -> None:
    """Entry point of every Ray Train worker; ``config`` = {"config": Config as a dict}."""
    import ray.train
    import ray.train.torch

    cfg = localise(config_from_dict(config["config"]))
    ctx = ray.train.get_context()
    cpus = cfg.scaling.resources_per_worker.get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    state = None
    ckpt = ray.train.get_checkpoint()  # (1) resume if Ray restarted us
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, weights_only=False)

    def report(metrics: dict, snapshot: dict | None) -> None:
        # (2) every rank reports (a barrier); only rank 0 attaches a checkpoint
        if snapshot is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            write_checkpoint(snapshot, d)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    fit(
        cfg,
        report,
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        state=state,
        wrap=ray.train.torch.prepare_model,  # (3) DDP when world_size > 1
    )
