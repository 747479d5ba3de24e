"""What the worker processes of one server share, on the local disk: the count of open sessions (`MAX_SESSIONS` is
the whole server's), the boot key that signs client secrets when `REALTIME_SECRET_KEY` is unset, and the folder of
Prometheus' multiprocess metrics.

An instance is one process group serving one port: the supervisor that `python main.py` (WORKERS=N) or
`uvicorn main:app --workers N` starts, and its workers; or a single process serving alone. Its folder is named after
the supervisor (pid and start time, so a reused pid is another instance), so every worker finds the same one whoever
started them, and nothing has to be passed down: under `uvicorn main:app --workers N` none of our code runs in the
supervisor. A process serving alone gets a folder of its own for each app it builds.

Crash safety: each server (one per worker) holds a `flock` on its own counter file for as long as it lives; the kernel
drops the lock when the process dies, however it dies, so a counter file that can be locked belongs to a dead worker,
and the next admission drops it (and that worker's live metrics: `prometheus_client.multiprocess.mark_process_dead`).
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

BOOT_KEY_FILE = "secret.key"
METRICS_FOLDER = "metrics"
SESSIONS_FOLDER = "sessions"
PROMETHEUS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def _runtime_root() -> Path:
    root = Path(tempfile.gettempdir()) / f"realtime-server-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or "" where there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def supervisor_pid() -> int | None:
    """The pid of the supervisor this process is a worker of, or None for a process serving alone."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def supervised_folder(pid: int) -> Path:
    return _runtime_root() / f"{pid}-{_start_time(pid)}"


def forget_dead_instances() -> None:
    """Removes the folders of instances whose process is gone (a supervisor cannot clean up after a SIGKILL)."""
    for folder in _runtime_root().iterdir():
        pid, _, start = folder.name.partition("-")
        if not pid.isdigit():
            continue
        gone = not _pid_alive(int(pid)) or (not start.startswith("solo") and start != _start_time(int(pid)))
        if gone:
            shutil.rmtree(folder, ignore_errors=True)


def metrics_folder() -> Path | None:
    """Where this process writes its metrics: the instance's folder when it is a worker (the variable must be set
    before `prometheus_client` is imported), else None: one process counts in memory.

    A worker that `python main.py` spawns imports main.py (so this) before multiprocessing tells it its parent: the
    supervisor sets the variable for it (`prepare_supervisor`). Under `uvicorn --workers` the app is imported later,
    when the parent is known."""
    if os.environ.get(PROMETHEUS_DIR_VARIABLE):
        return Path(os.environ[PROMETHEUS_DIR_VARIABLE])
    pid = supervisor_pid()
    if pid is None:
        return None
    folder = supervised_folder(pid) / METRICS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[PROMETHEUS_DIR_VARIABLE] = str(folder)
    return folder


def prepare_supervisor() -> Path:
    """In a supervisor of our own (`python main.py` with WORKERS), before any worker starts: the instance's folder,
    its boot key and the metrics folder the workers inherit. Returns the folder, to be removed when it stops."""
    forget_dead_instances()
    folder = supervised_folder(os.getpid())
    (folder / METRICS_FOLDER).mkdir(parents=True, exist_ok=True)
    boot_key(folder)
    os.environ.setdefault(PROMETHEUS_DIR_VARIABLE, str(folder / METRICS_FOLDER))
    return folder


def boot_key(folder: Path) -> bytes:
    """The instance's key for client secrets, made by whichever of its processes asks first."""
    path = folder / BOOT_KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    draft = folder / f".{BOOT_KEY_FILE}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    draft.write_bytes(secrets.token_bytes(32))
    draft.chmod(0o600)
    # A link never replaces a file: the first process's key wins, and nobody reads one half written.
    with contextlib.suppress(FileExistsError):
        os.link(draft, path)
    draft.unlink()
    return path.read_bytes()


class Instance:
    """The instance's folder, and this server's open sessions in it."""

    def __init__(
        self, folder: Path, max_sessions: int, owned: bool, on_dead_worker: Callable[[int], None] = lambda pid: None
    ) -> None:
        self.folder = folder
        self._on_dead_worker = on_dead_worker
        self.max_sessions = max_sessions
        self._owned = owned  # removed when this server stops (a process serving alone)
        sessions = folder / SESSIONS_FOLDER
        sessions.mkdir(parents=True, exist_ok=True)
        self._sessions = sessions
        self._lock_path = folder / "sessions.lock"
        self._own_path = sessions / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._own = os.open(self._own_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._own, fcntl.LOCK_SH)  # held while this process lives: see the module's docstring
        self.open_sessions = 0
        self._write()

    @classmethod
    def for_this_process(cls, max_sessions: int, on_dead_worker: Callable[[int], None]) -> Instance:
        pid = supervisor_pid()
        if pid is None:
            folder = _runtime_root() / f"{os.getpid()}-solo{uuid.uuid4().hex[:8]}"
            return cls(folder, max_sessions, True, on_dead_worker)
        return cls(supervised_folder(pid), max_sessions, False, on_dead_worker)

    def _write(self) -> None:
        os.pwrite(self._own, self.open_sessions.to_bytes(8, "little"), 0)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _counts(self, on_dead: Callable[[Path, int], None] | None) -> Iterator[int]:
        for path in self._sessions.iterdir():
            if path == self._own_path:
                yield self.open_sessions
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield int.from_bytes(os.pread(fd, 8, 0), "little")
                    continue
                if on_dead is not None:
                    on_dead(path, int(path.name.partition("-")[0]))
            finally:
                os.close(fd)

    def total(self) -> tuple[int, int]:
        """Open sessions of every live worker of the instance, and how many workers live (blocking file reads:
        microseconds). Drops the files of dead workers, as `reserve` does."""
        with self._locked():
            counts = list(self._counts(self._drop))
        return sum(counts), len(counts)

    def _drop(self, path: Path, pid: int) -> None:
        path.unlink(missing_ok=True)
        self._on_dead_worker(pid)

    def reserve(self) -> bool:
        """Takes one of the instance's `max_sessions` slots, or False when all are taken. Under the instance's lock,
        so two workers never both take the last one; blocking (run it in a thread)."""
        with self._locked():
            if sum(self._counts(self._drop)) >= self.max_sessions:
                return False
            self.open_sessions += 1
            self._write()
            return True

    def release(self) -> None:
        """Gives a slot back: one 8-byte write of this worker's own file, which readers see whole."""
        self.open_sessions = max(0, self.open_sessions - 1)
        self._write()

    def boot_key(self) -> bytes:
        return boot_key(self.folder)

    def close(self) -> None:
        os.close(self._own)
        self._own_path.unlink(missing_ok=True)
        if self._owned:
            shutil.rmtree(self.folder, ignore_errors=True)
