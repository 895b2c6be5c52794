"""Optuna storages from a URL, set up for long studies with several workers.

- sqlite:///PATH: RDB storage with a busy timeout, so concurrent workers wait
  instead of failing with "database is locked";
- postgresql://..., mysql://...: RDB storage for several machines;
- journal://PATH: Optuna's journal file, the documented choice for several
  processes on one machine (and NFS, with care: see docs/distributed.md).

RDB storages get a heartbeat: a trial whose worker died (SIGKILL, preemption)
is failed after the grace period and re-queued with the same parameters. A
journal has no heartbeat; there a trial whose worker ran on this machine and is
gone is failed and re-queued (fail_dead_trials).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpo.storage_urls import local_path, safe_url, scheme
from segtrain.errors import UserError

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_SECONDS = 300
MAX_RETRIES = 3  # a trial that kills its worker this often is not retried again
# StudyLock's file beside a SQLite or journal file; not "<file>.lock", which is Optuna's own journal lock
LOCK_SUFFIX = ".hpo-lock"
WORKER_ATTR = "worker"  # user attr of a trial: the host:pid of the process running it


def local_path_made(url: str) -> Path | None:
    """local_path(url), its folder created if missing."""
    path = local_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"storage {url}: cannot create {path.parent} ({error.strerror})") from None
    return path


def open_storage(url: str, heartbeat_interval: int, grace_period: int) -> optuna.storages.BaseStorage:
    path = local_path_made(url)
    if scheme(url) == "journal":
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = ({"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}} if scheme(url) == "sqlite"
                     else {"pool_pre_ping": True})
    with database_errors(url):
        return RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=retry_callback())


@contextlib.contextmanager
def database_errors(url: str) -> Iterator[None]:
    """A database that cannot be reached or used is one line naming it, its password masked."""
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as error:
        detail = " ".join(str(error).split())[:200]
        password = _password(url)
        if password:
            detail = detail.replace(password, "***")
        hint = " (pip install 'deeplab-hpo[postgres]')" if isinstance(error, ImportError) else ""
        raise UserError(f"storage {safe_url(url)}: cannot open: {detail}{hint}") from None


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except sqlalchemy.exc.ArgumentError:
        return None


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Re-queues a dead worker's trial with its parameters and reported values (experimental in Optuna)."""
    return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES, inherit_intermediate_values=True)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_dead_trials(study: optuna.Study, url: str) -> None:
    """Fail, and queue again, the running trials whose worker died. Call it under the StudyLock.

    RDB storages: the trials whose heartbeat stopped for the grace period. A journal has no
    heartbeat: the trials whose worker ran on this machine and is gone (any other would run
    forever, and the study never reach its target).
    """
    fail_stale_trials(study)
    if scheme(url) != "journal":
        return
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = trial.user_attrs.get(WORKER_ATTR, "").rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not process_exists(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            log.warning("trial %d: its worker (process %s) is gone; queued to run again", trial.number, pid)
            retry_callback()(study, trial)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


class StudyLock:
    """Serialises "count the trials, then start one" across all workers of a study.

    Without it, workers that check the count at the same moment each start a
    trial and the study overshoots its target. A file lock beside a SQLite or
    journal file (<file>.hpo-lock; the kernel drops it when a worker dies), or a PostgreSQL
    advisory lock (dropped with the connection). MySQL: no lock, so several
    workers may overshoot the target by a trial or two.

    `release` may be called more than once: the search releases the lock as soon
    as Optuna has created the trial, from inside the objective.
    """

    def __init__(self, url: str, study_name: str):
        self.kind = scheme(url)
        self.url = url
        self.key = zlib.crc32(f"deeplab-hpo:{study_name}".encode())
        self._release: list = []  # how to undo the current acquisition

    def acquire(self) -> None:
        path = local_path_made(self.url)
        if self.kind in ("sqlite", "journal") and path is not None:
            handle = open(path.with_name(path.name + LOCK_SUFFIX), "a")
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._release.append(handle.close)  # closing the file drops the lock
        elif self.kind == "postgresql":
            engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            with database_errors(self.url):
                connection = engine.connect()
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
            self._release += [engine.dispose, connection.close, lambda: self._unlock(connection)]

    def _unlock(self, connection: sqlalchemy.Connection) -> None:
        """Unlock explicitly: the server drops a closed session's locks only once its backend has
        exited, a moment after the close. A connection already lost holds no lock to give back."""
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})

    def release(self) -> None:
        while self._release:
            self._release.pop()()

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
