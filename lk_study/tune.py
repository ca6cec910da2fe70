"""The study driver: a study file -> Ray Tune (OptunaSearch + ASHA) over trials that train.

Each Tune trial runs one training (``trial_driver``) on one of two runners
(``scaling.runner``, ``lk_study.config.runner``):
- ``trial`` (one worker, the default then): the training loop runs inside the Tune trial,
  which holds the worker's CPUs/GPUs (``lk_study.trial.run_in_trial``); Tune reuses the
  trial's process for the next trial, so a trial starts in about a second;
- ``train`` (``num_workers`` > 1, or asked for): the trial is a light driver (0.1 CPU) that
  builds a ``TorchTrainer`` and calls ``fit()``; the Train workers (DDP) hold the resources,
  and metrics flow rank 0 -> ``TuneReportCallback`` -> Tune.
Both report the same rows to the searcher and scheduler, keep checkpoints in the same place
and resume alike (shared/notes/ray.md has the verified facts behind this shape).

Storage layout (a local folder or an s3:// / gs:// URI):
    STORAGE/STUDY/                Tune experiment (trial folders, searcher state)
    STORAGE/STUDY/lk_study.json   the study as run (base config, search space, objective)
    STORAGE/STUDY/train_runs/     Ray Train runs, one per trial (checkpoints)
    STORAGE/STUDY/trials.parquet  one row per trial, written when the study ends
Running the same study on the same storage again resumes it; finished trials are kept.
"""

from __future__ import annotations

import math
import os
import socket
import time

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from lk_study import analysis
from lk_study import storage as study_files  # (``storage`` is the --storage argument here)
from lk_study.config import (
    STUDY_REF,
    Config,
    ConfigError,
    _Where,
    config_from_dict,
    flatten,
    runner,
    study_refs,
    to_dict,
    with_overrides,
)
from lk_study.progress import Progress, Timeline
from lk_study.searchers import (  # DefineByRun: searcher checkpoints pickled it as tune's
    DefineByRun,  # noqa: F401
    ResumableASHA,
    optuna_searcher,
)
from lk_study.study import Study, storage_url, study_from_record, study_record
from lk_study.tracking import tracking_callbacks
from lk_study.train import train_loop_per_worker
from lk_study.trial import finished, restart_history, run_in_trial, tidy_run

DRIVER_CPU = 0.1
POINT = "point"  # grid/random: each trial's parameters, one explicit dict per trial
DEFAULT_STORAGE = "lk_results"


def trial_driver(params: dict, base: dict, train_storage: str, root: str) -> None:
    """One Tune trial: train the base config with this trial's parameters (Optuna's
    suggestions, or a grid/random ``point``), ``study:NAME`` references resolved against the
    storage ``root``; in this process (``runner`` trial) or through Ray Train."""
    cfg = resolve_refs(with_overrides(config_from_dict(base), params.get(POINT, params)), root)
    trial_id = tune.get_context().get_trial_id()  # Ray 3a: this trial, from Tune's context
    run = f"{train_storage}/train-{trial_id}"  # its checkpoints, on either runner
    if runner(config_from_dict(base)) == "trial":
        return run_in_trial(cfg, run)  # Ray 3a'-3c': lk_study.trial
    # A trial restarted after a driver kill (Tuner.restore): Tune lost its rows (it rewrites
    # result.json), so give them back from the checkpoint's history before training on
    history = restart_history(run)
    for row in history:
        tune.report(row)  # no checkpoint: old rows, REPLAYED (ResumableASHA never stops on them)
    if finished(history):
        return  # killed after its final checkpoint: finished, the last row is its result
    # Ray 3b: its TorchTrainer; a restored trial resumes from its own checkpoints: the Train
    # run is named after it
    trainer = make_trainer(cfg, f"train-{trial_id}", train_storage, [TuneReportCallback()])
    # Ray 3c: Train fit; a worker's exception (e.g. a NaN loss) fails this trial, not the study
    try:
        trainer.fit()
    finally:
        tidy_run(run)  # checkpoints a restarted worker group wrote but never registered


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
    """(CPUs, GPUs) one trial needs: its Train workers plus the driver (``runner`` train),
    or its one worker (``runner`` trial: the trial is the worker)."""
    s = study.config.scaling
    per = dict(s.resources_per_worker)
    driver = DRIVER_CPU if runner(study.config) == "train" else 0.0
    cpu = s.num_workers * per.get("CPU", 1.0) + driver
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
        gpu_short = gpu and cluster.get("GPU", 0.0) < gpu
        key = "scaling.use_gpu" if gpu_short else "scaling.resources_per_worker"
        where = _Where(study.source, study.lines)
        fix = "set scaling.use_gpu: false" if gpu_short else "lower scaling.num_workers or CPU"
        raise ConfigError(
            f"{where(f'config.{key}')}: {key}: one trial needs {cpu:g} CPU and {gpu:g} GPU "
            f"but the cluster has {cluster.get('CPU', 0):g} CPU and {cluster.get('GPU', 0):g} "
            f"GPU; {fix}"
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


def ensure_ray(address: str | None = None, quiet: bool = False) -> bool:
    """Attach to ``address`` (e.g. ``auto`` or ray://HOST:10001), else to RAY_ADDRESS (set by
    ``ray job submit``), else start an embedded local Ray -- never silently joining a cluster
    that ``ray start`` left behind. Checks the State API. ``quiet``: the workers' output and
    Ray's warnings stay in Ray's log files (``keep_logs`` copies them to the study). Returns
    True if this call connected Ray and so should shut it down."""
    started = not ray.is_initialized()
    if started:
        target = address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(
            address=target,
            logging_level="ERROR" if quiet else "WARNING",
            log_to_driver=not quiet,
            **_own_dashboard(target),
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


_SAVED_ENV: dict[str, str | None] = {}  # what _own_dashboard changed, for stop_ray


def _own_dashboard(target: str) -> dict:
    """An embedded Ray (``target`` "local"): its dashboard on a free port, and
    RAY_API_SERVER_ADDRESS pointing there before Ray starts (its processes copy the
    environment), so Ray Train's State API calls find this Ray, not "multiple active Ray
    instances" when two studies run on one machine (D3). ``stop_ray`` restores it."""
    if target != "local":
        return {}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    name = "RAY_API_SERVER_ADDRESS"
    _SAVED_ENV.setdefault(name, os.environ.get(name))
    os.environ[name] = f"http://127.0.0.1:{port}"
    return {"dashboard_host": "127.0.0.1", "dashboard_port": port}


def stop_ray() -> None:
    """ray.shutdown(), and the environment as it was before ``ensure_ray``."""
    ray.shutdown()
    while _SAVED_ENV:
        name, value = _SAVED_ENV.popitem()
        os.environ.pop(name, None)
        os.environ.update({} if value is None else {name: value})


def _guard_uploads() -> None:
    """Ray Tune copies its staging folder (result.json, params.json, experiment state) to the
    storage again and again, truncating every target first: a full disk emptied finished
    trials' files (4a). On a local storage, ``storage.copy_tree`` does it instead (files
    already there skipped, others renamed into place). Installed on import."""
    from ray.train._internal import storage as ray_storage

    upload = getattr(ray_storage, "_upload_to_fs_path", None)
    if upload is None or getattr(upload, "lk_study", False):
        return

    def guarded(local_path: str, fs, fs_path: str, exclude: list[str] | None = None) -> None:
        if study_files.is_local(fs):
            return study_files.copy_tree(local_path, fs_path, exclude)
        return upload(local_path, fs, fs_path, exclude)

    guarded.lk_study = True
    ray_storage._upload_to_fs_path = guarded


_guard_uploads()


class StorageWatch(tune.Callback):
    """Stops the study (raises StorageError out of ``fit``) as soon as its storage is full or
    read-only, instead of failing every remaining trial: a probe every ``every`` seconds."""

    def __init__(self, exp_path: str, every: float = 5.0) -> None:
        self.exp_path, self.every, self.last = exp_path, every, 0.0

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self.last > self.every:
            self.last = time.monotonic()
            fault = study_files.storage_fault(self.exp_path)
            if fault is not None:
                raise fault


def _preflight(study: Study, root: str, exp_path: str, address: str | None) -> None:
    """The checks before Ray starts, in which nothing is written but a probe file: trials
    fit this machine (embedded Ray), ``study:`` references resolve, storage writable."""
    if not (address or os.environ.get("RAY_ADDRESS")):  # an embedded Ray gets this machine
        import torch

        concurrency(study, {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()})
    check_refs(study, root)
    study_files.check_writable(exp_path)


def _trainable(study: Study, root: str, exp_path: str):
    """The Tune trainable: ``trial_driver`` bound to the study's base config, holding the
    resources of ``trial_resources`` (0.1 CPU on the train runner: the workers hold theirs)."""
    cpu, gpu = trial_resources(study)
    return tune.with_resources(
        tune.with_parameters(
            trial_driver,
            base=to_dict(study.config),
            train_storage=f"{exp_path}/train_runs",
            root=root,
        ),
        {"CPU": cpu, "GPU": gpu} if runner(study.config) == "trial" else {"CPU": DRIVER_CPU},
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


def _scheduler(study: Study) -> ResumableASHA | FIFOScheduler:
    """ASHA on the study's budget counter (``asha_budget``), never stopping a trial on the
    rows a restarted trial replays (``ResumableASHA``), or FIFO."""
    sch = study.scheduler
    if sch.name != "asha":
        return FIFOScheduler()
    time_attr, max_t = asha_budget(study)
    return ResumableASHA(
        time_attr=time_attr,  # our own counter: survives restores (training_iteration not)
        max_t=max_t,
        grace_period=min(sch.grace_period, max_t),
        reduction_factor=sch.reduction_factor,
    )


def _console(study: Study, exp_path: str, verbose: bool) -> dict:
    """RunConfig's callbacks and verbosity: our ``Progress`` lines instead of Tune's output,
    unless ``verbose``; the storage watch and the trials' ``Timeline`` always."""
    watch = [
        StorageWatch(exp_path),
        Timeline(exp_path),
        *tracking_callbacks(study.tracking, study.name),  # MLflow / W&B, if the study asks
    ]
    if verbose:
        return {"callbacks": watch, "verbose": 2}
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "study created" lines
    return {"callbacks": [*watch, Progress(study)], "verbose": 0}


def keep_logs(exp_path: str) -> None:
    """Copy this Ray session's log files (Ray's, Ray Train's, the trials' output) to
    ``STUDY/logs`` (an embedded Ray, before it shuts down); never fails the study."""
    import pyarrow.fs as pafs

    try:
        logs = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
        fs, path = study_files.filesystem(study_files.join(exp_path, "logs"))
        pafs.copy_files(logs, path, destination_filesystem=fs)
    except Exception as e:  # logs are a convenience: say so and go on
        print(f"(Ray's logs were not copied to {exp_path}/logs: {e})")


def _new_tuner(
    study: Study, trainable, root: str, exp_path: str, verbose: bool = False
) -> tune.Tuner:
    """A fresh Tuner for ``study``: as many trials at once as the cluster (or the budget)
    allows, its searcher and scheduler, the experiment under ``root``/STUDY."""
    obj = study.objective
    n = concurrency(study, ray.cluster_resources())
    search, param_space = _search(study, n)
    scheduler = _scheduler(study)
    retried = runner(study.config) == "trial"
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
        run_config=tune.RunConfig(
            name=study.name,
            storage_path=root,
            **_console(study, exp_path, verbose),
            # the trial runner's retries of a failed trial (Ray Train's FailureConfig otherwise)
            failure_config=tune.FailureConfig(max_failures=2 * retried),
        ),
    )


def run_study(
    study: Study,
    storage: str | None = None,
    address: str | None = None,
    resume: bool = False,
    retry_errored: bool = False,
    verbose: bool = False,
) -> str:
    """Run ``study``, or resume it when its storage holds it (finished trials are kept,
        unfinished ones continue from their checkpoints; ``retry_errored`` also reruns ERROR
        trials from theirs). ``resume=True`` insists: an error if there is nothing to resume.
        Preflight before Ray starts and before anything is written (``_preflight``), then the
        study's lock and its state (``storage.check_state``). A full / read-only storage raises
        StorageError. The console shows ``lk_study.progress`` lines (``verbose``: Tune's output and
    the workers' logs). Returns the experiment path; prints the leaderboard."""
    root = storage_uri(storage)
    exp_path = f"{root.rstrip('/')}/{study.name}"
    record = study_record(study)
    _preflight(study, root, exp_path, address)
    try:  # one driver per study: a second one is refused, naming the holder
        lock = study_files.acquire_lock(exp_path)
    except study_files.StudyBusy as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise study_files.storage_fault(exp_path, e) or e from None
    try:
        # Ray 1: the experiment Tune would restore (refused if damaged or another study)
        # new keys' defaults; tracking is not what the study is: a resume may add or change it
        same = lambda r: study_record(study_from_record(untracked(r)))  # noqa: E731
        restore = study_files.check_state(exp_path, untracked(record), resume, normalise=same)
        _fit(study, root, exp_path, record, restore, address, retry_errored, verbose)
        table = analysis.load_study(exp_path)
        out = study_files.write_trials(table.trials, exp_path)
    except Exception as e:  # a full / read-only storage: one line, not Tune's traceback
        fault = None if isinstance(e, ValueError) else study_files.storage_fault(exp_path, e)
        raise e if fault is None or fault is e else fault from None
    finally:
        study_files.release_lock(exp_path, lock)
    print()
    print(analysis.format_leaderboard(table))
    print(f"\nResults table: {out}")
    return exp_path


def _fit(
    study: Study,
    root: str,
    exp_path: str,
    record: dict,
    restore: bool,
    address: str | None,
    retry_errored: bool,
    verbose: bool = False,
) -> None:
    """Start (or join) Ray, restore or create the Tuner, run it: lk_study.json is written once
    a new study passed every check; a storage now full or read-only raises StorageError."""
    # Ray 2: ray.init: attach to --address / RAY_ADDRESS, else start an embedded local Ray
    started = ensure_ray(address, quiet=not verbose)
    try:
        # Ray 3: the Tune trainable; each trial's driver builds its TorchTrainer (Ray 3a-3c)
        trainable = _trainable(study, root, exp_path)
        if restore:
            print(f"Resuming study {study.name!r} from {exp_path}")
            _legacy_names()
            # Ray 4: Tuner.restore: finished trials kept, unfinished ones from their checkpoints
            tuner = tune.Tuner.restore(
                exp_path, trainable, resume_unfinished=True, resume_errored=retry_errored
            )
            run_config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
            if run_config is not None:  # this run's console, not the pickled one (as Ray does)
                vars(run_config).update(_console(study, exp_path, verbose))
        else:
            # Ray 4: a new Tuner (reads ray.cluster_resources() for the trials at once)
            tuner = _new_tuner(study, trainable, root, exp_path, verbose)
            study_files.write_json(exp_path, study_files.STUDY_FILE, record)
        tuner.fit()  # Ray 5: run the trials; returns when the study ends
        fault = study_files.storage_fault(exp_path)
        if fault is not None:
            raise fault
    finally:
        if started:
            if not verbose:
                keep_logs(exp_path)
            stop_ray()  # Ray 6: flush worker logs before the leaderboard


def _legacy_names() -> None:
    """Classes that studies started by older lk_study versions pickled under their old
    module (tuner.pkl, the searcher state), where Tune's restore looks for them."""
    import lk_study.config
    from lk_study.space import Param

    if not hasattr(lk_study.config, "Param"):  # moved to lk_study.space
        lk_study.config.Param = Param


def untracked(record: dict) -> dict:
    """A study record without its ``tracking`` section (where copies go, not the study)."""
    return {k: v for k, v in record.items() if k != "tracking"}


def resume_study(
    path: str, address: str | None = None, retry_errored: bool = False, verbose: bool = False
) -> str:
    """Resume the study in folder (or URI) ``path`` (``lk-study resume PATH``)."""
    uri = path if "://" in path else os.path.abspath(path)
    try:
        record = study_files.read_json(uri, study_files.STUDY_FILE)
    except ValueError as e:
        raise ConfigError(
            f"{uri}/{study_files.STUDY_FILE} is damaged ({e}); resume needs it (rerun "
            "lk-study tune with the study file and the same --storage instead)"
        ) from None
    if record is None:
        raise ConfigError(f"{path}: not a study folder (no {study_files.STUDY_FILE})")
    root, _, folder = uri.rstrip("/").rpartition("/")
    if folder != record["name"]:
        raise ConfigError(
            f"{path}: the folder of study {record['name']!r} must keep its name "
            f"(Tune resumes it by name); rename it back to {record['name']}"
        )
    return run_study(study_from_record(record), root, address, True, retry_errored, verbose)


def run_single(study: Study, storage: str | None = None, address: str | None = None) -> dict:
    """One Ray Train run of the study's base config (no Tune, no search); returns its last
    metrics. Storage: STORAGE/STUDY-single/ (checkpoints; rerunning resumes)."""
    root = storage_uri(storage)
    started = ensure_ray(address)  # Ray 2, as in run_study
    try:
        result = make_trainer(study.config, f"{study.name}-single", root, []).fit()  # Ray 3b/c
    finally:
        if started:
            stop_ray()  # Ray 6
    metrics = dict(result.metrics or {})
    print(
        "Final metrics: "
        + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
        )
    )
    print(f"Checkpoints: {root}/{study.name}-single")
    return metrics
