"""Ray in one place: started or joined once per command, and one executor for every
stage's parallel work.

Without --ray-address / RAY_ADDRESS a command starts a private local Ray sized to the
machine (never a `ray start` cluster that happens to run here, nor the stale address
file a dead one leaves behind); with one, it joins that cluster. `run_units` runs a
stage's units as Ray tasks: bounded in flight, retried, each under a time limit,
with a progress bar, a WitError raised in a task surfacing as itself.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

# Variables a task on another node needs to reach the same stores (no secrets).
FORWARD_ENV = ("WIT_STORAGE_OPTIONS", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
               "AWS_DEFAULT_REGION", "NO_ALBUMENTATIONS_UPDATE", "WANDB_MODE")


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start (or join) Ray once per process.

    `address` (or RAY_ADDRESS) joins an existing cluster; otherwise a private local Ray
    is started with one CPU per core, no dashboard, and auth disabled (no token file
    in $HOME).
    """
    import ray
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray runs workers at nice 15 by default; on a busy machine that slows every stage.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Workers start with the driver's cwd on sys.path; keep their logs quiet.
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)}
    common = dict(logging_level=logging.WARNING, log_to_driver=True,
                  ignore_reinit_error=True, runtime_env={"env_vars": env} if env else None)
    if address:
        ray.init(address=address, **common)
    else:
        # address="local": a new instance even when another runs on this machine.
        saved = os.environ.pop("RAY_ADDRESS", None)
        try:
            # a private instance has no other node: keep its traffic on loopback
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                     include_dashboard=False, _node_ip_address="127.0.0.1", **common)
        finally:
            if saved is not None:
                os.environ["RAY_ADDRESS"] = saved


def cpus() -> int:
    """CPUs Ray can schedule on (the cluster's, or this machine's before Ray starts)."""
    import ray
    if ray.is_initialized():
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return os.cpu_count() or 1


def shutdown() -> None:
    import ray
    if ray.is_initialized():
        _stop_autoscaler()
        ray.shutdown()


def _stop_autoscaler() -> None:
    """Kill the autoscaler monitor of a Ray this process started, before ray.shutdown.

    A private local Ray has a fixed size, so its monitor has nothing to do, and
    ray.shutdown stops it last, after the GCS it reports to: it then ignores SIGTERM
    for the whole second Ray waits before SIGKILL, a second added to every command.
    Ray offers no public way to start without it or stop it; where its internals
    differ, ray.shutdown's own order applies. A joined cluster's driver started
    no process, so nothing is killed there."""
    try:
        from ray._private import ray_constants, worker
        node = worker._global_node
        if node is None or not node.is_head():
            return
        for info in node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []):
            if info.process.poll() is None:
                info.process.kill()
                info.process.wait(timeout=5)
    except Exception:  # another Ray's internals: the slower shutdown still works
        pass


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of a block; shuts down only what this block started."""
    import ray
    started = not ray.is_initialized()
    ensure_ray(address, num_cpus)
    try:
        yield
    finally:
        if started:
            shutdown()


@dataclass
class Outcome:
    """What `run_units` did: results by unit index, and the units that failed every try."""
    results: dict[int, Any] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    def ordered(self) -> list[Any]:
        return [self.results[i] for i in sorted(self.results)]


def _user_error(e: BaseException):
    """The WitError inside a Ray task error, if that is what the task raised."""
    from wit_builder.errors import WitError
    cause = getattr(e, "cause", None)
    if isinstance(cause, WitError):
        return WitError(str(cause))
    if isinstance(e, WitError):
        return WitError(str(e).strip().splitlines()[-1])
    return None


def run_units(fn: Callable, units: Iterable[tuple], desc: str, *, total: int | None = None,
              in_flight: int | None = None, retries: int = 2, time_limit: float | None = None,
              num_cpus: float = 1.0, done: int = 0, raise_failed: bool = True,
              on_result: Callable[[Any], str | None] | None = None,
              unit: str = "task", tokens: Callable[[tuple], Iterable[str]] | None = None) -> Outcome:
    """Run `fn(*args)` as a Ray task for every args tuple in `units`.

    The stage passes only the units that are not done yet (`done` counts the others,
    for the progress bar). At most `in_flight` tasks run at once (default: twice the
    CPUs), so a lazily produced `units` never floods the object store. A task that
    crashes, is killed, or outlives `time_limit` seconds (it is cancelled) is tried
    again up to `retries` times; a WitError it raises is the user's mistake and is
    raised here at once. With `raise_failed`, a unit that failed every try raises
    RuntimeError; otherwise it is reported in `Outcome.failed`. `on_result` may
    return a progress-bar postfix. `tokens(args)` names what a unit holds exclusively
    while it runs: a unit waits (later ones may start first) while another in flight
    holds one of its tokens.
    """
    import ray
    from tqdm import tqdm
    ensure_ray()
    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
    limit = in_flight or 2 * cpus()
    source = iter(enumerate(units))
    again: deque = deque()
    inflight: dict = {}
    stopped: set = set()
    busy: dict[str, int] = {}   # tokens held by units in flight
    waiting: deque = deque()    # units drawn from `units` whose tokens were busy
    out = Outcome()
    total = None if total is None else total + done
    with tqdm(total=total, initial=done, desc=desc, unit=unit, disable=None,
              mininterval=0.5) as bar:
        def held(args) -> list[str]:
            return list(tokens(args)) if tokens is not None else []

        def start(index, args, tries) -> None:
            for t in held(args):
                busy[t] = busy.get(t, 0) + 1
            inflight[remote.remote(*args)] = (index, args, tries, time.monotonic())

        def finish(args) -> None:
            for t in held(args):
                busy[t] -= 1

        def submit() -> bool:
            for queue in (again, waiting):
                for i, (index, args, tries) in enumerate(queue):
                    if not any(busy.get(t) for t in held(args)):
                        del queue[i]
                        start(index, args, tries)
                        return True
            while len(waiting) < 4 * limit:  # bounded look-ahead past units that must wait
                nxt = next(source, None)
                if nxt is None:
                    return False
                index, args = nxt
                if not any(busy.get(t) for t in held(args)):
                    start(index, args, 0)
                    return True
                waiting.append((index, args, 0))
            return False

        try:
            while True:
                while len(inflight) < limit and submit():
                    pass
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1,
                                    timeout=1.0 if time_limit else None)
                for ref in ready:
                    index, args, tries, _t = inflight.pop(ref)
                    finish(args)
                    try:
                        res = ray.get(ref)
                    except Exception as e:  # crashed, killed or stopped: try the unit again
                        user = _user_error(e)
                        if user is not None:
                            for other in inflight:
                                ray.cancel(other, force=True)
                            raise user from None
                        reason = (f"stopped after its time limit of {time_limit:g} s"
                                  if ref in stopped else str(e).strip().splitlines()[-1][:300])
                        stopped.discard(ref)
                        if tries < retries:
                            again.append((index, args, tries + 1))
                        else:
                            out.failed[index] = f"failed {tries + 1} time(s): {reason}"
                            bar.update(1)
                        continue
                    out.results[index] = res
                    bar.update(1)
                    if on_result is not None:
                        postfix = on_result(res)
                        if postfix:
                            bar.set_postfix_str(postfix)
                if time_limit:
                    now = time.monotonic()
                    for ref, (_i, _a, _tries, started) in inflight.items():
                        if ref not in stopped and now - started > time_limit:
                            ray.cancel(ref, force=True)
                            stopped.add(ref)
        except BaseException:  # interrupted (or a user error): finished units stay, the rest stops
            for other in inflight:
                ray.cancel(other, force=True)
            raise
    if out.failed and raise_failed:
        first = min(out.failed)
        raise RuntimeError(f"{desc}: {len(out.failed)} unit(s) failed; the first: "
                           f"{out.failed[first]}")
    return out


def map_tasks(fn: Callable, calls: Iterable[tuple], desc: str, total: int | None = None,
              in_flight: int | None = None) -> list[Any]:
    """`run_units` for work whose results come back in the order of `calls`."""
    return run_units(fn, calls, desc, total=total, in_flight=in_flight).ordered()
