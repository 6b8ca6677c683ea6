"""Ray in one place: local Ray sized to the machine, or a cluster by address."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Iterable, Iterator


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start (or join) Ray once per process.

    `address` (or RAY_ADDRESS) joins an existing cluster; otherwise a local Ray is
    started with one CPU per core, no dashboard, and auth disabled (no token file
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
    common = dict(logging_level=logging.WARNING, log_to_driver=True,
                  ignore_reinit_error=True)
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **common)
    _quiet_ray_data()


def _quiet_ray_data() -> None:
    """Ray Data prints a progress bar per operator; wit prints its own summary."""
    try:
        from ray.data import DataContext
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except Exception:  # older/newer Ray without these knobs: cosmetic only
        pass


def cpus() -> int:
    """CPUs Ray can schedule on (the cluster's, or this machine's before Ray starts)."""
    import ray
    if ray.is_initialized():
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return os.cpu_count() or 1


def shutdown() -> None:
    import ray
    if ray.is_initialized():
        ray.shutdown()


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


def map_tasks(fn: Callable, calls: Iterable[tuple], desc: str, total: int | None = None,
              in_flight: int | None = None) -> list[Any]:
    """Run `fn(*args)` as Ray tasks (1 CPU each) for every args tuple in `calls`.

    At most `in_flight` tasks are pending at once (default: twice the CPUs), so a
    lazily produced `calls` never floods the object store. Results are returned in
    completion order; a progress bar named `desc` shows on a terminal.
    """
    import ray
    from tqdm import tqdm
    ensure_ray()
    remote = ray.remote(num_cpus=1)(fn)
    limit = in_flight or 2 * cpus()
    pending, results = [], []
    with tqdm(total=total, desc=desc, unit="task", disable=None) as bar:
        def collect(num: int) -> None:
            nonlocal pending
            done, pending = ray.wait(pending, num_returns=num)
            results.extend(ray.get(done))
            bar.update(len(done))

        for args in calls:
            if len(pending) >= limit:
                collect(1)
            pending.append(remote.remote(*args))
        if pending:
            collect(len(pending))
    return results
