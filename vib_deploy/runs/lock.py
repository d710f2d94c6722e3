"""The run lock: one writer per run directory, across processes and hosts (run directories on a shared file system).

The lock file (`runs/<name>/.lock`) holds its holder as JSON: host, boot id (`/proc/sys/kernel/random/boot_id`), pid
and a heartbeat (unix time) that a thread of the holder rewrites every `HEARTBEAT_S` seconds. Another writer

- on the same host and boot: refused while the pid lives, takes the lock over when it is gone (silently, as before);
- on the same host after a reboot (another boot id): takes it over (no process of the old boot is alive);
- on another host: refused while the heartbeat is fresh, takes it over once it is `STALE_S` seconds old, said on stderr.

The file is created whole by `os.link` of a written temp file (atomic and exclusive, also on NFS), so a reader never
sees a half-written lock. A lock file of an older version holds a bare pid: taken as this host's.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from vib_deploy.errors import UserError

HEARTBEAT_S = 10.0  # how often the holder rewrites its heartbeat
STALE_S = 60.0  # a lock from another host whose heartbeat is this old is taken over


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: written into the lock file, read by the next writer."""

    host: str
    boot_id: str
    pid: int
    heartbeat: float  # unix time of the holder's last heartbeat
    token: str = ""  # this holding's identity: the heartbeat rewrites only its own lock

    def age(self) -> float:
        return max(0.0, time.time() - self.heartbeat)


class LockHeld(UserError):
    """The run directory is locked by a live writer; `remote` when that writer is on another host (its heartbeat
    fresh): a retried study unit waits for it to go stale (`studies.executor`)."""

    def __init__(self, message: str, remote: bool = False, stale_in: float = 0.0):
        super().__init__(message)
        self.remote, self.stale_in = remote, stale_in

    def __reduce__(self):  # pickled across processes (Ray) with its fields
        return (type(self), (str(self), self.remote, self.stale_in))


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: the host name alone tells hosts apart
        return ""


def me(token: str = "") -> Holder:
    return Holder(socket.gethostname(), boot_id(), os.getpid(), time.time(), token)


def read_holder(path: Path) -> Holder | None:
    """The lock's holder; None when the file is gone or unreadable (garbage is no holder: taken over)."""
    try:
        text, written = path.read_text().strip(), path.stat().st_mtime
    except OSError:
        return None
    if text.isdigit():  # an older version's lock: a bare pid, this host's
        here = me()
        return Holder(here.host, here.boot_id, int(text), written)
    try:
        data = json.loads(text)
        return Holder(
            str(data["host"]), str(data["boot_id"]), int(data["pid"]), float(data["heartbeat"]), data["token"]
        )
    except (ValueError, KeyError, TypeError):
        return None


def _write_new(path: Path, holder: Holder) -> bool:
    """Create `path` holding `holder`, whole, unless it exists; True when created."""
    tmp = path.with_name(f"{path.name}.{holder.token}")
    tmp.write_text(json.dumps(asdict(holder)))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _verdict(lock: Path, run_dir: Path, holder: Holder) -> str:
    """Why `holder`'s lock may be taken over: '' (silently) or a sentence to say on stderr; LockHeld while it is
    held."""
    here = me()
    if holder.host == here.host and holder.boot_id == here.boot_id:
        if holder.pid != here.pid and not _pid_alive(holder.pid):
            return ""  # its process is gone
        raise LockHeld(
            f"{run_dir} is in use by another vib-deploy process (pid {holder.pid}); "
            f"wait for it or stop it (a stale lock is {lock})"
        )
    if holder.host == here.host:
        return f"{run_dir}: taking over the lock of pid {holder.pid} from before this host's reboot"
    age = holder.age()
    if age < STALE_S:
        raise LockHeld(
            f"{run_dir} is in use by vib-deploy on host {holder.host} (pid {holder.pid}, heartbeat {age:.0f} s ago); "
            f"it is taken over once its heartbeat is {STALE_S:.0f} s old",
            remote=True,
            stale_in=STALE_S - age,
        )
    return (
        f"{run_dir}: taking over the stale lock of host {holder.host} (pid {holder.pid}, no heartbeat for {age:.0f} s)"
    )


def _take_over(lock: Path, seen: Holder) -> None:
    """Remove the stale lock `seen`, unless another writer replaced it meanwhile (then it stays)."""
    aside = lock.with_name(f"{lock.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    if read_holder(aside) != seen:  # a fresh lock got in between: put it back (if nothing took its place)
        with contextlib.suppress(FileExistsError):
            os.link(aside, lock)
    aside.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(lock: Path, run_dir: Path) -> Iterator[None]:
    """Hold `lock` (the lock file of `run_dir`) with a heartbeat; a live holder elsewhere is one LockHeld error."""
    token = uuid.uuid4().hex
    while not _write_new(lock, me(token)):
        seen = read_holder(lock)
        if seen is None:  # unreadable: no holder to ask
            lock.unlink(missing_ok=True)
            continue
        said = _verdict(lock, run_dir, seen)
        if said:
            print(said, file=sys.stderr)
        _take_over(lock, seen)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, token, stop), daemon=True, name="vib-deploy-lock")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        holder = read_holder(lock)
        if holder is not None and holder.token == token:
            lock.unlink(missing_ok=True)


def _heartbeat(lock: Path, token: str, stop: threading.Event) -> None:
    """Rewrite the lock's heartbeat every HEARTBEAT_S seconds while it is still ours."""
    while not stop.wait(HEARTBEAT_S):
        holder = read_holder(lock)
        if holder is None or holder.token != token:
            return  # taken over (we looked dead): the new holder's file is left alone
        tmp = lock.with_name(f"{lock.name}.{token}")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(asdict(me(token))))
            os.replace(tmp, lock)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
