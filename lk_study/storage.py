"""The study folder's layout and its filesystem (a local path or an s3:// / gs:// URI, via
pyarrow); no pandas beyond ``write_trials``' frame, no Ray, no training code.

    STUDY/lk_study.json                     the study record (STUDY_FILE)
    STUDY/trials.parquet                    the trials table, written at the end (TRIALS_FILE)
    STUDY/experiment_state*.json            Tune's state: each trial's status
    STUDY/<trial folder>/params.json        the trial's searched values
    STUDY/<trial folder>/result.json        one JSON line per report
    STUDY/<trial folder>/error.txt          the traceback of a failed trial
    STUDY/train_runs/train-<trial_id>/checkpoint_*   the trial's Train checkpoints
    STUDY/.lk_study.lock                    the driver running the study (LOCK_FILE)

What lk_study writes goes to a temporary name beside its target and is renamed over it
(``write_bytes``), so a full or read-only disk never leaves half a file; Ray's uploads of the
trial folders go through ``copy_tree`` (lk_study.tune installs it), which never rewrites a file
whose bytes are already there, so finished trials' records are never touched again.
"""

from __future__ import annotations

import errno
import filecmp
import fnmatch
import io
import json
import os
import pickletools
import re
import shutil
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

STUDY_FILE = "lk_study.json"
TRIALS_FILE = "trials.parquet"
TUNE_META = {  # keys Tune adds to every report (not metrics)
    "timestamp",
    "checkpoint_dir_name",
    "done",
    "training_iteration",
    "trial_id",
    "date",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "hostname",
    "node_ip",
    "config",
    "time_since_restore",
    "iterations_since_restore",
    "checkpoint_path",
}
_TUNE_META = TUNE_META


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path in it) of a local path or s3:// / gs:// URI."""
    return pafs.FileSystem.from_uri(uri)


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(uri: str, name: str) -> str | None:
    """The text of file ``name`` in folder ``uri``, or None if there is no such file."""
    fs, root = filesystem(uri)
    path = join(root, name)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def read_json(uri: str, name: str) -> Any:
    text = read_text(uri, name)
    return None if text is None else json.loads(text)


def write_bytes(uri: str, name: str, data: bytes) -> None:
    """Write file ``name`` in folder ``uri`` atomically: a temporary file beside it (synced to
    disk), then a rename over the target; on URIs a write then a move. A full or read-only
    storage raises and leaves the old file as it was."""
    fs, root = filesystem(uri)
    fs.create_dir(root, recursive=True)
    target, tmp = join(root, name), join(root, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        else:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, target)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise


def write_json(uri: str, name: str, obj: Any) -> None:
    write_bytes(uri, name, json.dumps(obj, indent=1, sort_keys=True).encode())


def write_trials(trials, uri: str, name: str = TRIALS_FILE) -> str:
    """Write the trials table (a DataFrame) as Parquet into the study folder (atomically);
    returns its location."""
    buf = io.BytesIO()
    trials.to_parquet(buf, index=False)
    write_bytes(uri, name, buf.getvalue())
    return join(filesystem(uri)[1], name) if "://" not in uri else join(uri, name)


def copy_tree(source: str, destination: str, exclude: list[str] | None = None) -> None:
    """Copy local file or folder ``source`` to local ``destination`` without ever losing what
    is there: files whose target already holds the same bytes are skipped (a finished trial's
    files are not rewritten), the others go to a temporary name beside the target and are
    renamed over it. ``exclude``: fnmatch patterns on paths relative to ``source``."""
    src, dst = Path(source), Path(destination)
    if src.is_file():
        pairs = [(src, dst)]
    else:
        pairs = []
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            parts = rel.split("/")
            parents = ["/".join(parts[:i]) + "/" for i in range(1, len(parts))]
            if path.is_file() and not any(
                fnmatch.fnmatch(c, e) for e in exclude or () for c in (rel, *parents)
            ):
                pairs.append((path, dst / rel))
    for s, d in pairs:
        if d.is_file() and d.stat().st_size == s.stat().st_size:
            if s.stat().st_size > 16 << 20 or filecmp.cmp(s, d, shallow=False):
                continue
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.with_name(f".{d.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            shutil.copyfile(s, tmp)
            os.replace(tmp, d)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


# ------------------------------------------------------------------ faults of the storage

FAULTS = {errno.ENOSPC: "full", errno.EDQUOT: "full", errno.EROFS: "read-only"}


class StorageError(OSError):
    """The study's storage is full or read-only: the study stopped; nothing finished is lost."""


def storage_fault(uri: str, exc: BaseException | None = None) -> StorageError | None:
    """A StorageError for ``uri`` when ``exc`` (or anything in its chain) is a full /
    read-only OSError, or when a probe file can no longer be written there; else None."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in FAULTS:
            return _fault(uri, FAULTS[e.errno])
        e = e.__cause__ or e.__context__
    probe = f".lk_study_probe.{os.getpid()}"
    try:
        write_bytes(uri, probe, b"ok")
        fs, root = filesystem(uri)
        fs.delete_file(join(root, probe))
    except OSError as probe:
        text = str(probe)
        kind = FAULTS.get(probe.errno or 0) or (
            "full" if "No space left" in text else "read-only" if "Read-only" in text else ""
        )
        return _fault(uri, kind) if kind else None
    return None


def _fault(uri: str, kind: str) -> StorageError:
    fix = "free space" if kind == "full" else "make it writable"
    return StorageError(f"storage {uri} is {kind}; {fix} and run lk-study resume {uri}")


# ------------------------------------------------------------------ one driver per study

LOCK_FILE = ".lk_study.lock"


class StudyBusy(RuntimeError):
    """Another driver holds the study's lock."""


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), or ''."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(holder: dict) -> bool:
    """Whether the lock's holder (on this host) still runs: its PID exists and started when
    the lock says (a reused PID does not count)."""
    pid = int(holder.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = holder.get("process_start", "")
    return not started or not _process_start(pid) or _process_start(pid) == started


def acquire_lock(uri: str) -> dict:
    """Take the study's lock (``LOCK_FILE``: host, PID, start time) or raise StudyBusy naming
    its holder. A lock whose holder is gone (same host, PID no longer running) is taken over,
    with a note. Local folders use an exclusive create; URIs a check then a write."""
    fs, root = filesystem(uri)
    fs.create_dir(root, recursive=True)
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "token": uuid.uuid4().hex,
    }
    data = json.dumps(me).encode()
    path = join(root, LOCK_FILE)
    for _ in range(3):
        try:
            if isinstance(fs, pafs.LocalFileSystem):
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            elif fs.get_file_info(path).type == pafs.FileType.NotFound:
                write_bytes(uri, LOCK_FILE, data)
            else:
                raise FileExistsError(path)
            return me
        except FileExistsError:
            holder = _holder(uri)
            if holder is not None and (holder.get("host") != me["host"] or _alive(holder)):
                raise StudyBusy(
                    f"study {uri} is being run by another driver: PID {holder.get('pid')} on "
                    f"{holder.get('host')}, started {holder.get('started')} (lock file "
                    f"{path}); wait for it to finish, or stop it; delete the lock file only "
                    "if that driver is gone"
                ) from None
            what = "unreadable"
            if holder:
                what = f"PID {holder.get('pid')}, started {holder.get('started')}"
            print(f"Note: taking over the stale lock of {uri} ({what}; that driver is gone)")
            fs.delete_file(path)
    raise StudyBusy(f"study {uri}: could not take its lock file {path}")


def _holder(uri: str) -> dict | None:
    try:
        holder = json.loads(read_text(uri, LOCK_FILE) or "")
        return holder if isinstance(holder, dict) else None
    except (ValueError, OSError):
        return None


def release_lock(uri: str, lock: dict) -> None:
    """Remove the study's lock if it is still ``lock`` (never another driver's)."""
    try:
        holder = _holder(uri)
        if holder is not None and holder.get("token") == lock.get("token"):
            fs, root = filesystem(uri)
            fs.delete_file(join(root, LOCK_FILE))
    except OSError:
        pass  # a read-only storage keeps the lock: the next driver finds it stale


# ------------------------------------------------------------------ experiment state


def _pickle_complete(data: bytes) -> bool:
    """Whether ``data`` is a whole pickle (its opcodes end in STOP); imports nothing."""
    try:
        ops = list(pickletools.genops(data))
    except Exception:
        return False
    return bool(ops) and ops[-1][0].name == "STOP"


def state_problems(uri: str) -> tuple[bool, list[str]]:
    """(whether the folder holds a study's trials or Tune state, what is damaged in it): the
    newest ``experiment_state-*.json`` must parse, Tune's ``tuner.pkl`` and the newest
    searcher state (``*.pkl``) must be whole; trial folders without any experiment state are
    damage too."""
    fs, root = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    files = {i.base_name: i for i in infos if i.type == pafs.FileType.File}
    trials = [i for i in infos if i.type == pafs.FileType.Directory and i.base_name != "train_runs"]
    states = sorted(n for n in files if re.fullmatch(r"experiment_state.*\.json", n))
    pickles = sorted(n for n in files if n.endswith(".pkl") and n != "tuner.pkl")
    held = bool(states or trials or "tuner.pkl" in files)
    problems = []
    if states:
        try:
            state = json.loads(read_text(uri, states[-1]) or "")
            if not isinstance(state, dict) or "trial_data" not in state:
                problems.append(f"{join(uri, states[-1])} holds no trial data")
        except ValueError as e:
            problems.append(f"{join(uri, states[-1])} is damaged ({e})")
    elif trials:
        problems.append(f"{uri} holds {len(trials)} trial folders but no experiment_state-*.json")
    for name in ["tuner.pkl"] * ("tuner.pkl" in files) + pickles[-1:]:
        with fs.open_input_stream(join(root, name)) as f:
            if not _pickle_complete(f.read()):
                problems.append(f"{join(uri, name)} is damaged (truncated or empty)")
    if held and "tuner.pkl" not in files:
        problems.append(f"{uri} has no tuner.pkl")
    return held, problems


def subfolders(uri: str) -> list[str]:
    """The names of the folders directly under ``uri``."""
    fs, root = filesystem(uri)
    return [
        i.base_name
        for i in fs.get_file_info(pafs.FileSelector(root))
        if i.type == pafs.FileType.Directory
    ]


def statuses(uri: str) -> dict[str, str] | None:
    """trial_id -> Tune status, from Tune's experiment state file (the newest that parses;
    a damaged one is named in a warning); {} without one, None when none parses."""
    fs, root = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    states = sorted(i.path for i in infos if re.search(r"experiment_state.*\.json$", i.base_name))
    state = {} if not states else None
    for path in reversed(states):
        try:
            with fs.open_input_stream(path) as f:
                state = json.loads(f.read().decode())
            break
        except (ValueError, UnicodeDecodeError) as e:
            warnings.warn(f"{path} is damaged ({e}); statuses from an older one", stacklevel=3)
    if not isinstance(state, dict):
        return None
    out = {}
    for entry in state.get("trial_data", []):
        meta = entry[0] if isinstance(entry, list) else entry
        meta = json.loads(meta) if isinstance(meta, str) else meta
        tid = meta.get("trial_id")
        if tid:
            out[tid] = meta.get("status", "UNKNOWN")
    return out


_statuses = statuses


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:\([\w.]+\))?:(?: |$)")
_WRAPPER = re.compile(r"Training failed due to (?:worker errors|controller error):$")
_SNIPPET = re.compile(r"^\[Rank [\d,]+ Error Snippet\]:$")


def error_reason(text: str) -> str:
    """The reason a trial failed, from its Tune error file: the real exception line, not
    Ray's wrapper. Ray Train puts each worker's error after ``ray.train.WorkerGroupError:
    Training failed due to worker errors:`` and a ``[Rank N Error Snippet]:`` line (a
    controller error after ``... due to controller error:``); the reason is the last
    ``Name: message`` exception line after the last such marker (e.g. ``pyarrow.lib.
    ArrowInvalid: ...``, ``FloatingPointError: training loss became nan ...``), or the first
    line there when it holds none (a dead worker: ``The actor died unexpectedly ...``).
    Without a marker: the last exception line of the text, else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    marks = [i for i, ln in enumerate(lines) if _SNIPPET.match(ln) or _WRAPPER.search(ln)]
    region = lines[marks[-1] + 1 :] if marks else lines
    for line in reversed(region):
        if _EXCEPTION_LINE.match(line) and not _WRAPPER.search(line):
            return line
    if marks and region:
        return region[0]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception)\b", line) and not _WRAPPER.search(line):
            return line
    return lines[-1] if lines else ""


def trial_run(study_path: str, trial_id: str) -> str:
    """The Train run folder of a trial, ``STUDY/train_runs/train-<trial_id>``."""
    return join(study_path, f"train_runs/train-{trial_id}")


def newest_checkpoint(run: str) -> str | None:
    """The newest ``checkpoint_*`` folder of a Train run folder (path or URI), or None."""
    fs, root = filesystem(run)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )
    return join(run, names[-1]) if names else None


class StudyStateError(ValueError):
    """The study folder cannot be run or resumed as it is (the message says why)."""


def check_writable(uri: str) -> None:
    """Preflight: create the study folder and write, read back and delete a probe file."""
    probe = f"{uri.rstrip('/')}/.lk_study_probe.{os.getpid()}"
    try:
        fs, path = filesystem(probe)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(b"ok")
        fs.delete_file(path)
    except OSError as e:
        raise StudyStateError(
            f"storage {uri} is not writable ({e}); pass --storage with a folder or "
            "s3:// / gs:// URI this machine (and on a cluster, every node) can write"
        ) from None


def check_state(uri: str, record: dict, resume: bool = False, normalise=None) -> bool:
    """Whether Tune restores the experiment at ``uri`` for the study ``record``
    (lk_study.json's content; the stored one goes through ``normalise`` first, e.g. to fill
    in config keys added since it was written); called under the study's lock, before Ray
    starts. Refused
    (StudyStateError): a study whose state is damaged (Tune would quietly start it over),
    another study of the same name, nothing to resume when ``resume`` insists. A folder with
    no trials and no Tune state (a start that failed) starts afresh."""
    held, problems = state_problems(uri)
    try:
        previous = read_json(uri, STUDY_FILE)
    except ValueError as e:
        previous = None
        problems.append(f"{join(uri, STUDY_FILE)} is damaged ({e})")
    if held and previous is None and not problems:
        problems.append(f"{join(uri, STUDY_FILE)} is missing")
    if held and problems:
        raise StudyStateError(
            f"{uri} holds a study that cannot be resumed: {'; '.join(problems)}. Tune would "
            f"start it over in the same folder, so it is refused. Its finished trials still "
            f"read with lk-study results {uri}; to run the study again, move the folder aside "
            "or pass another --storage"
        )
    if held and normalise is not None:
        try:
            previous = normalise(previous)
        except (ValueError, KeyError, TypeError):
            pass  # compared as stored
    if held and json.loads(json.dumps(previous)) != json.loads(json.dumps(record)):
        raise StudyStateError(
            f"{uri} holds a different study named {record.get('name')!r} (its config or "
            "search space differ); pass another --storage or rename the study, so its trials "
            "are kept"
        )
    if resume and not held:
        raise StudyStateError(
            f"nothing to resume at {uri} (no Tune experiment there); "
            "run without --resume to start the study"
        )
    return held
