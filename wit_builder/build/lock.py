"""One build directory, one writer: a lock file `_lock.json` in the build.

Two commands writing one build delete each other's temporaries and records, so the
second is refused with a message naming the first. Locally the lock is created with
O_EXCL and is stale once its process is gone; in an object store (no atomic create)
it is written, then read back to see who won, and kept alive by a heartbeat: a lock
of this machine is stale once its process is gone, one of another machine once its
heartbeat is older than STALE_S. The lock is reentrant within a
process (a command that runs several stages takes it once).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from wit_builder import storage
from wit_builder.errors import WitError

LOCK_NAME = "_lock.json"
STALE_S = 120.0       # a remote lock whose heartbeat is older than this is abandoned
HEARTBEAT_S = 30.0
SETTLE_S = 0.3        # remote: how long to wait before reading back who won

_held: dict[str, "_Held"] = {}
_guard = threading.Lock()


class _Held:
    def __init__(self, path, record: dict[str, Any]):
        self.path, self.record, self.count = path, record, 1
        self.stop = threading.Event()
        self.thread = None
        if storage.is_remote(path):
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                storage.write_json(self.path, {**self.record, "heartbeat": time.time()})
            except Exception:  # a missed beat only shortens the lease
                pass


def _record(what: str) -> dict[str, Any]:
    return {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "command": what, "started": time.time(), "heartbeat": time.time()}


def _alive(rec: dict[str, Any], remote: bool) -> bool:
    if rec.get("host") != socket.gethostname():
        # another machine's process: only its heartbeat tells (a local lock on a shared
        # filesystem has none, so it holds until removed)
        return not remote or time.time() - float(rec.get("heartbeat", 0)) < STALE_S
    try:
        os.kill(int(rec.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def _read(path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None


def _refuse(build, path, rec: dict[str, Any]) -> WitError:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(rec.get("started", 0))))
    return WitError(f"{build} is in use by another wit command ({rec.get('command', '?')}, pid "
                    f"{rec.get('pid')} on {rec.get('host')}, since {since}); wait for it to "
                    f"finish, or, if it was killed, remove {path}")


def acquire(build, what: str = "wit-build") -> None:
    """Take the build's lock (or count one more use of the lock this process holds)."""
    build = storage.location(build)
    key = str(build)
    with _guard:
        if key in _held:
            _held[key].count += 1
            return
        path = build / LOCK_NAME
        remote = storage.is_remote(build)
        if not remote and not os.path.isdir(os.fspath(build)):
            return  # nothing to protect yet, and a mistyped --out must leave nothing behind
        rec = _record(what)
        for _ in range(2):  # a second try after removing a stale lock
            old = _read(path)
            if old is not None:
                if _alive(old, remote):
                    raise _refuse(build, path, old)
                storage.remove(path)
            if not remote:
                try:
                    fd = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "w") as f:
                    json.dump(rec, f)
                break
            storage.write_json(path, rec)
            time.sleep(SETTLE_S)  # another writer's PUT may land after ours: the last wins
            won = _read(path)
            if won is not None and won.get("token") == rec["token"]:
                break
            if won is not None:
                raise _refuse(build, path, won)
        else:
            raise _refuse(build, path, _read(path) or {})
        _held[key] = _Held(path, rec)


def release(build) -> None:
    build = storage.location(build)
    key = str(build)
    with _guard:
        held = _held.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count:
            return
        del _held[key]
        held.stop.set()
        current = _read(held.path)
        if current is not None and current.get("token") == held.record["token"]:
            storage.remove(held.path)


class held:
    """`with lock.held(build, "wit-build fetch"):` — the lock for a block."""

    def __init__(self, build, what: str = "wit-build"):
        self.build, self.what = build, what

    def __enter__(self):
        acquire(self.build, self.what)
        return self

    def __exit__(self, *exc):
        release(self.build)
        return False
