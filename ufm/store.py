"""The folder of a sweep: a lock while it runs, chunks that carry their configuration's fingerprint
and point indices (so a rerun resumes whatever --chunk either run used), and the finished
sweep.npz + sweep.json (docs/architecture.md, "Sweeps"). Everything here is files; the computing is
in ufm.sweep."""
import contextlib
import hashlib
import json
import os
import shutil
import socket
import time

import jax
import numpy as np

from ufm.files import atomic_write, json_ready, write_json, write_npz


def fingerprint(config):
    return hashlib.sha256(json.dumps(json_ready(config), sort_keys=True).encode()).hexdigest()[:16]


# --- the folder of a sweep: a lock, and chunks that carry their configuration ------------------

LOCK = ".lock"
EMPTY_LOCK_SECONDS = 10  # a lock is written the instant it is made; empty for longer: abandoned


def _mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return time.time()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def folder_lock(out):
    """Hold `out`/.lock while a sweep writes into `out` (process 0 only, on several hosts).

    A second sweep into the same folder is refused while the first runs; a lock left by a
    process that no longer exists (killed) on this host is stale and taken over, and so is an
    empty or unreadable lock older than EMPTY_LOCK_SECONDS (its writer died between creating and
    writing it).
    """
    if jax.process_index() != 0:
        yield
        return
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as fh:
                    holder = json.load(fh)
            except (OSError, ValueError):  # being written this instant, or unreadable
                holder = {}
            if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
                holder = {}  # not a lock this module wrote (no pid): garbled
            if holder:
                stale = holder.get("host") == me["host"] and not _alive(holder["pid"])
            else:  # empty or garbled: stale once older than the instant its writer needs
                stale = time.time() - _mtime(path) > EMPTY_LOCK_SECONDS
            if not stale:
                started = holder.get("started")
                since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
                         if isinstance(started, (int, float)) else "an unknown time")
                raise ValueError(f"out (--out) {out} is in use by another sweep (pid "
                                 f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                                 f"{since}); wait for it to finish or use another --out") from None
            os.unlink(path)  # the holder was killed: take the lock over
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


MARK = "fingerprint"  # chunks/fingerprint: the sweep configuration its partial chunks belong to


def claim_chunks(out, mark, tags):
    """Refuse a folder whose chunks/ holds the partial results of another sweep configuration
    (another static axis, another K, …): finishing this sweep would remove them. Otherwise
    record `mark` as the owner of chunks/. `tags`: this sweep's combination folders (to recognise
    chunks left without a mark)."""
    folder = os.path.join(out, "chunks")
    if not os.path.isdir(folder):
        os.makedirs(folder)
    path = os.path.join(folder, MARK)
    owner = None
    if os.path.isfile(path):
        with open(path) as fh:
            owner = fh.read().strip()
    foreign = sorted(d for d in os.listdir(folder)
                     if os.path.isdir(os.path.join(folder, d)) and d not in tags
                     and chunk_files(os.path.join(folder, d)))
    if (owner is not None and owner != mark) or foreign:
        what = f" ({', '.join(foreign)})" if foreign else ""
        raise ValueError(f"out (--out) {out} holds the unfinished chunks of another sweep "
                         f"configuration{what}: rerun that sweep to finish it, or use another "
                         f"--out (or delete {folder})")
    if owner is None:
        atomic_write(path, lambda fh: fh.write(mark.encode()))


def chunk_files(chunk_dir):
    if not os.path.isdir(chunk_dir):
        return []
    return sorted(os.path.join(chunk_dir, f) for f in os.listdir(chunk_dir)
                  if f.startswith("chunk_") and f.endswith(".npz"))


def load_done(chunk_dir, tag, n_points):
    """Results of the points finished by earlier runs, from every chunk file of `chunk_dir`
    (whatever chunk size wrote it): (done mask [P], {key: [P]} or None). A file computed with
    another configuration is an error."""
    done, results = np.zeros(n_points, bool), None
    for path in chunk_files(chunk_dir):
        with np.load(path) as f:
            part = {k: f[k] for k in f.files}
        if str(part.pop("fingerprint", "")) != tag:
            raise ValueError(f"{path} was computed with another configuration; use another "
                             f"--out or delete {chunk_dir}")
        index = part.pop("index")
        if results is None:
            results = {k: np.empty((n_points,) + v.shape[1:], v.dtype) for k, v in part.items()}
        for k, v in part.items():
            results[k][index] = v
        done[index] = True
    return done, results


def finished(out, mark):
    """(arrays, config) of the finished sweep in `out` if it is this configuration's (work: none
    computed); None if there is none; ValueError if it is another configuration's."""
    path, data = os.path.join(out, "sweep.json"), os.path.join(out, "sweep.npz")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        try:
            config = json.load(fh)
        except ValueError:
            config = {}
    if not isinstance(config, dict):  # JSON, but not a record ufm wrote
        config = {}
    if config.get("fingerprint") != mark:
        raise ValueError(f"out (--out) {out} holds a finished sweep of another configuration "
                         f"(sweep.json); use another --out or delete it")
    if not os.path.exists(data):
        return None
    with np.load(data) as f:
        arrays = {k: f[k] for k in f.files}
    total = int(np.prod(config["shape"])) if config.get("shape") else 1
    config["work"] = {"computed_points": 0, "loaded_points": total, "computed_config_steps": 0}
    return arrays, config


def write_sweep(arrays, config, out):
    """out/sweep.npz and out/sweep.json, atomically (by process 0 only, on several hosts); then
    the chunks, which the finished arrays now hold, are removed."""
    if jax.process_index() != 0:
        return
    write_npz(os.path.join(out, "sweep.npz"), arrays)
    write_json(os.path.join(out, "sweep.json"), config)
    shutil.rmtree(os.path.join(out, "chunks"), ignore_errors=True)
