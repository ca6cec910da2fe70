"""The study driver: a study file -> Ray Tune (OptunaSearch + ASHA) over Ray Train trials.

Each Tune trial is a light *driver* function (0.1 CPU) that builds a ``TorchTrainer`` for its
config and calls ``fit()``; the Train workers hold the real resources. Metrics flow
Train rank 0 -> ``TuneReportCallback`` -> Tune -> searcher and scheduler
(shared/notes/ray.md has the verified facts behind this shape).

Storage layout (a local folder or an s3:// / gs:// URI):
    STORAGE/STUDY/                Tune experiment (trial folders, searcher state)
    STORAGE/STUDY/lk_study.json   the study as run (base config, search space, objective)
    STORAGE/STUDY/train_runs/     Ray Train runs, one per trial (checkpoints)
    STORAGE/STUDY/trials.parquet  one row per trial, written when the study ends
Running the same study on the same storage again resumes it; finished trials are kept.
"""

from __future__ import annotations

import json
import math
import os

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from lk_study import analysis
from lk_study import storage as study_files  # (``storage`` is the --storage argument here)
from lk_study.config import (
    STUDY_REF,
    Config,
    ConfigError,
    config_from_dict,
    flatten,
    study_refs,
    to_dict,
    with_overrides,
)
from lk_study.searchers import (  # DefineByRun: searcher checkpoints pickled it as tune's
    DefineByRun,  # noqa: F401
    optuna_searcher,
)
from lk_study.study import Study, storage_url, study_from_record, study_record
from lk_study.train import train_loop_per_worker

DRIVER_CPU = 0.1
POINT = "point"  # grid/random: each trial's parameters, one explicit dict per trial
DEFAULT_STORAGE = "lk_results"


def trial_driver(params: dict, base: dict, train_storage: str, root: str) -> None:
    """One Tune trial: run Ray Train on the base config with this trial's parameters
    (Optuna's suggestions, or a grid/random ``point``); ``study:NAME`` references resolved
    against the storage ``root``."""
    cfg = resolve_refs(with_overrides(config_from_dict(base), params.get(POINT, params)), root)
    trial_id = tune.get_context().get_trial_id()  # Ray 3a: this trial, from Tune's context
    # Ray 3b: its TorchTrainer; a restored trial resumes from its own checkpoints: the Train
    # run is named after it
    trainer = make_trainer(cfg, f"train-{trial_id}", train_storage, [TuneReportCallback()])
    # Ray 3c: Train fit; a worker's exception (e.g. a NaN loss) fails this trial, not the study
    trainer.fit()


def resolve_refs(cfg: Config, root: str, studies: dict | None = None) -> Config:
    """``cfg`` with ``study:NAME`` values of ``model.init_from`` / ``task.tokenizer``
    replaced by the checkpoint (its ``tokenizer.json``) of the trial of study NAME, in the
    same storage ``root``, whose encoder fits this config (``analysis.pretrained_trial``:
    same model sizes, kernel family and kernel parameters; the best one if several). This
    chains pre-training and fine-tuning studies (jobs/pretrain_then_glue.py). ``studies``
    caches loaded studies between calls. A ConfigError says what is missing."""
    flat = flatten(cfg)
    refs = study_refs(flat)
    studies = {} if studies is None else studies
    resolved = {}
    for key, name in refs.items():
        where = f"{key}: {STUDY_REF}{name}"
        if name not in studies:
            try:
                studies[name] = analysis.load_study(f"{root.rstrip('/')}/{name}")
            except FileNotFoundError:
                raise ConfigError(
                    f"{where}: {root.rstrip('/')}/{name} holds no study; run that study first "
                    "(jobs/pretrain_then_glue.py runs both) or pass the --storage that holds it"
                ) from None
        try:
            trial = analysis.pretrained_trial(studies[name], flat)
        except analysis.NoResults as e:
            raise ConfigError(f"{where}: {e}") from None
        if (key, name, trial) not in studies:
            ckpt = study_files.newest_checkpoint(study_files.trial_run(studies[name].path, trial))
            if ckpt is None:
                raise ConfigError(f"{where}: trial {trial} of {name} saved no checkpoint")
            if key == "task.tokenizer":
                ckpt = f"{ckpt}/tokenizer.json"
                if not study_files.exists(ckpt):
                    raise ConfigError(f"{where}: {ckpt} does not exist (that task saves none)")
            studies[key, name, trial] = ckpt
        resolved[key] = studies[key, name, trial]
    return with_overrides(cfg, resolved) if resolved else cfg


def check_refs(study: Study, root: str) -> None:
    """Preflight: every trial's ``study:NAME`` references resolve (before Ray starts)."""
    if not study_refs(flatten(study.config)) and not any(map(study_refs, study.variants)):
        return
    studies: dict = {}
    for point in study.points():
        resolve_refs(with_overrides(study.config, point), root, studies)


def make_trainer(cfg: Config, name: str, storage: str, callbacks: list) -> TorchTrainer:
    """A ``TorchTrainer`` running ``train_loop_per_worker`` on ``cfg``: workers from
    cfg.scaling, the latest checkpoint kept, a failed worker group restarted up to twice from
    it. ``callbacks`` = [TuneReportCallback()] forwards rank 0's metrics to Tune."""
    s = cfg.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(cfg)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker=dict(s.resources_per_worker),
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=2),
        ),
    )


def trial_resources(study: Study) -> tuple[float, float]:
    """(CPUs, GPUs) one trial needs: its Train workers plus the driver."""
    s = study.config.scaling
    per = dict(s.resources_per_worker)
    cpu = s.num_workers * per.get("CPU", 1.0) + DRIVER_CPU
    gpu = s.num_workers * per.get("GPU", 1.0) if s.use_gpu else 0.0
    return cpu, gpu


def concurrency(study: Study, cluster: dict[str, float]) -> int:
    """Trials that fit at once: the budget's max_concurrent, else what the cluster holds."""
    if study.budget.max_concurrent:
        return study.budget.max_concurrent
    cpu, gpu = trial_resources(study)
    fit = math.floor(cluster.get("CPU", 1.0) / cpu + 1e-9)
    if gpu:
        fit = min(fit, math.floor(cluster.get("GPU", 0.0) / gpu + 1e-9))
    if fit < 1:
        raise ConfigError(
            f"{study.source}: one trial needs {cpu:g} CPU and {gpu:g} GPU but the cluster has "
            f"{cluster.get('CPU', 0):g} CPU and {cluster.get('GPU', 0):g} GPU; lower "
            "scaling.num_workers or scaling.resources_per_worker"
        )
    return fit


def asha_budget(study: Study) -> tuple[str, float]:
    """ASHA's time attribute and its max_t: ``epoch`` when the study budgets in epochs
    (``train.epochs`` > 0 in the config, a variant or the search), else ``step``."""
    t = study.config.train
    epochs = [t.epochs, *(v.get("train.epochs", 0) for v in study.variants)]
    steps = [t.max_steps, *(v.get("train.max_steps", 0) for v in study.variants)]
    for key, values in (("train.epochs", epochs), ("train.max_steps", steps)):
        if key in study.search:
            values.extend(study.search[key].values)
    if max(epochs) > 0:
        return "epoch", max(epochs)
    return "step", max(steps)


def storage_uri(storage: str | None) -> str:
    """An absolute path or a URI for Ray's storage."""
    storage = storage or os.environ.get("LK_STUDY_STORAGE") or DEFAULT_STORAGE
    return storage if "://" in storage else os.path.abspath(storage)


def ensure_ray(address: str | None = None) -> bool:
    """Attach to ``address`` (e.g. ``auto`` or ray://HOST:10001), else to RAY_ADDRESS (set by
    ``ray job submit``), else start an embedded local Ray -- never silently joining a cluster
    that ``ray start`` left behind. Checks the State API. Returns True if this call connected
    Ray and so should shut it down."""
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address or os.environ.get("RAY_ADDRESS") or "local", logging_level="WARNING"
        )
    try:
        from ray.util.state import list_nodes

        list_nodes(address=ray.get_runtime_context().gcs_address, limit=1)
    except Exception as e:  # the State API is served by the dashboard
        raise RuntimeError(
            "Ray's State API is unavailable, so early-stopped trials would leak their workers. "
            "Install ray[default] (pip install 'ray[default,tune,train]==2.60.0') and do not "
            f"disable the dashboard. Cause: {e}"
        ) from e
    return started


def check_writable(exp_path: str) -> None:
    """Preflight: create the study folder and write, read back and delete a probe file."""
    probe = f"{exp_path.rstrip('/')}/.lk_study_probe"
    try:
        fs, path = study_files.filesystem(probe)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(b"ok")
        fs.delete_file(path)
    except OSError as e:
        raise ConfigError(
            f"storage {exp_path} is not writable ({e}); pass --storage with a folder or "
            "s3:// / gs:// URI this machine (and on a cluster, every node) can write"
        ) from None


def _preflight(study: Study, root: str, exp_path: str, record: dict, resume: bool) -> bool:
    """The checks before Ray starts: the same study (not another of the same name), something
    to resume when ``resume`` insists, storage writable, ``study:`` references resolvable.
    Returns whether Tune can restore the experiment at ``exp_path``."""
    previous = study_files.read_json(exp_path, study_files.STUDY_FILE)
    if previous is not None and json.loads(json.dumps(previous)) != json.loads(json.dumps(record)):
        raise ConfigError(
            f"{exp_path} holds a different study named {study.name!r} (its config or search "
            "space differ); pass another --storage or rename the study, so its trials are kept"
        )
    # Ray 1: Tune reads the storage (no Ray running yet): an experiment there to restore?
    restore = tune.Tuner.can_restore(exp_path)
    if resume and not restore:
        raise ConfigError(
            f"nothing to resume at {exp_path} (no Tune experiment there); "
            "run without --resume to start the study"
        )
    check_writable(exp_path)
    check_refs(study, root)
    return restore


def _trainable(study: Study, root: str, exp_path: str):
    """The Tune trainable: ``trial_driver`` bound to the study's base config, at 0.1 CPU."""
    return tune.with_resources(
        tune.with_parameters(
            trial_driver,
            base=to_dict(study.config),
            train_storage=f"{exp_path}/train_runs",
            root=root,
        ),
        {"CPU": DRIVER_CPU},
    )


def _search(study: Study, n: int) -> tuple[dict, dict]:
    """TuneConfig's search arguments and the Tuner's param_space for ``n`` trials at once:
    Optuna behind a ConcurrencyLimiter, or every grid/random point once, in order."""
    if study.searcher == "optuna":
        search = {
            "search_alg": ConcurrencyLimiter(optuna_searcher(study), max_concurrent=n),
            "num_samples": study.num_trials(),
        }
        if study.optuna.storage:
            url = storage_url(study.optuna.storage)
            print(f"Optuna studies in {url}; browse them with: optuna-dashboard {url}")
        return search, {}
    search = {"max_concurrent_trials": n, "num_samples": 1}
    return search, {POINT: tune.grid_search(study.points())}


def _scheduler(study: Study) -> ASHAScheduler | FIFOScheduler:
    """ASHA on the study's budget counter (``asha_budget``), or FIFO."""
    sch = study.scheduler
    if sch.name != "asha":
        return FIFOScheduler()
    time_attr, max_t = asha_budget(study)
    return ASHAScheduler(
        time_attr=time_attr,  # our own counter: survives restores (training_iteration not)
        max_t=max_t,
        grace_period=min(sch.grace_period, max_t),
        reduction_factor=sch.reduction_factor,
    )


def _new_tuner(study: Study, trainable, root: str, exp_path: str) -> tune.Tuner:
    """A fresh Tuner for ``study``: as many trials at once as the cluster (or the budget)
    allows, its searcher and scheduler, the experiment under ``root``/STUDY."""
    obj = study.objective
    n = concurrency(study, ray.cluster_resources())
    search, param_space = _search(study, n)
    scheduler = _scheduler(study)
    print(
        f"Study {study.name!r}: {study.num_trials()} trials ({study.searcher}), "
        f"{n} at a time, storage {exp_path}"
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=obj.metric, mode=obj.mode, scheduler=scheduler, **search
        ),
        run_config=tune.RunConfig(name=study.name, storage_path=root),
    )


def run_study(
    study: Study,
    storage: str | None = None,
    address: str | None = None,
    resume: bool = False,
    retry_errored: bool = False,
) -> str:
    """Run ``study``, or resume it when its storage holds it (finished trials are kept,
    unfinished ones continue from their checkpoints; ``retry_errored`` also reruns ERROR
    trials from theirs). ``resume=True`` insists: an error if there is nothing to resume.
    Preflight before Ray starts: storage writable, the same study (not another of the same
    name), ``study:`` references resolvable. Returns the experiment path; prints the
    leaderboard."""
    root = storage_uri(storage)
    exp_path = f"{root.rstrip('/')}/{study.name}"
    record = study_record(study)
    restore = _preflight(study, root, exp_path, record, resume)  # (Ray 1 inside)
    # Ray 2: ray.init: attach to --address / RAY_ADDRESS, else start an embedded local Ray
    started = ensure_ray(address)
    # Ray 3: the Tune trainable; each trial's driver builds its TorchTrainer (Ray 3a-3c)
    trainable = _trainable(study, root, exp_path)
    if restore:
        print(f"Resuming study {study.name!r} from {exp_path}")
        # Ray 4: Tuner.restore: finished trials kept, unfinished ones from their checkpoints
        tuner = tune.Tuner.restore(
            exp_path, trainable, resume_unfinished=True, resume_errored=retry_errored
        )
    else:
        study_files.write_json(exp_path, study_files.STUDY_FILE, record)
        # Ray 4: a new Tuner (reads ray.cluster_resources() for the trials at once)
        tuner = _new_tuner(study, trainable, root, exp_path)
    tuner.fit()  # Ray 5: run the trials; returns when the study ends
    if started:
        ray.shutdown()  # Ray 6: flush worker logs before the leaderboard
    table = analysis.load_study(exp_path)
    out = study_files.write_trials(table.trials, exp_path)
    print()
    print(analysis.format_leaderboard(table))
    print(f"\nResults table: {out}")
    return exp_path


def resume_study(path: str, address: str | None = None, retry_errored: bool = False) -> str:
    """Resume the study in folder (or URI) ``path`` (``lk-study resume PATH``)."""
    uri = path if "://" in path else os.path.abspath(path)
    record = study_files.read_json(uri, study_files.STUDY_FILE)
    if record is None:
        raise ConfigError(f"{path}: not a study folder (no {study_files.STUDY_FILE})")
    root, _, folder = uri.rstrip("/").rpartition("/")
    if folder != record["name"]:
        raise ConfigError(
            f"{path}: the folder of study {record['name']!r} must keep its name "
            f"(Tune resumes it by name); rename it back to {record['name']}"
        )
    return run_study(
        study_from_record(record), root, address, resume=True, retry_errored=retry_errored
    )


def run_single(study: Study, storage: str | None = None, address: str | None = None) -> dict:
    """One Ray Train run of the study's base config (no Tune, no search); returns its last
    metrics. Storage: STORAGE/STUDY-single/ (checkpoints; rerunning resumes)."""
    root = storage_uri(storage)
    started = ensure_ray(address)  # Ray 2, as in run_study
    result = make_trainer(study.config, f"{study.name}-single", root, []).fit()  # Ray 3b, 3c
    if started:
        ray.shutdown()  # Ray 6
    metrics = dict(result.metrics or {})
    print(
        "Final metrics: "
        + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
        )
    )
    print(f"Checkpoints: {root}/{study.name}-single")
    return metrics
