"""Stage plumbing: run-scoped outputs, a record as the commit, skip-if-done.

A stage run writes each output under a prefix of its own, `<output>/<run_id>/`, and
commits by writing its record `_stages/<stage>.json` last, in one PUT. The record
names those prefixes and is the only proof that the stage finished: readers and
catalog views follow it, never a listing of folders. Object stores have no atomic
folder rename, and nothing here needs one; local builds take the same path. Prefixes
of superseded or killed runs are removed after the commit. A stage is skipped when
its record exists, its parameters and its inputs' run ids are unchanged and its
outputs are present. A killed stage leaves no new record, so it is redone; its
resume state (`_work/<stage>-<key>/`) lives in the build directory, so a rerun from
another machine resumes too.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wit_builder import storage
from wit_builder.build import catalog, lock
from wit_builder.build.records import read_record, record_path
from wit_builder.errors import WitError

TMP_DIR = "_tmp"
WORK_DIR = "_work"


@dataclass
class StageResult:
    """What a stage did: rows written, its summary, and whether it was skipped."""
    stage: str
    run_id: str
    rows: int
    summary: dict[str, Any]
    outputs: list[str]
    seconds: float
    skipped: bool = False


@dataclass
class StageContext:
    """Handed to a stage's work function.

    `build` and `work` are locations in the build (UPaths: local or remote); `tmp`
    and `scratch` are folders on this machine. Outputs are staged under
    tmp/<output name>/ and moved to `<output>/<run_id>/` at the commit.
    """
    build: Any
    stage: str
    params: dict[str, Any]
    tmp: Path        # local staging: outputs go under tmp/<output name>/
    work: Any        # in the build: survives a killed run (resume state); removed after success
    scratch: Path = None  # local: DuckDB spill files and other throwaway files
    run_id: str = ""
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # upstream records
    adopted: list[tuple[Any, str, bool]] = field(default_factory=list)

    def output(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def final(self, name: str):
        """Where output `name` will be once committed (for paths recorded inside it)."""
        return self.build / name / self.run_id

    def adopt(self, src, dest: str, copy: bool = False) -> None:
        """At the commit, move (or `copy`) the file `src` (already in the build, e.g. written
        by a task under work/) to `dest`, a path relative to the build under one of the
        outputs (`fetch/shards/00000.tar`); within the store, no bytes through this machine."""
        self.adopted.append((src, dest, copy))

    def upstream(self, stage: str, name: str | None = None):
        """The committed location of an upstream stage's output (default: its first)."""
        return output_dir(self.build, self.inputs[stage], name)


@dataclass
class StageOutput:
    rows: int
    summary: dict[str, Any] = field(default_factory=dict)


def params_hash(params: dict[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def output_dir(build, rec: dict[str, Any], name: str | None = None):
    """The location of output `name` of a stage record (its first output by default)."""
    outs = rec.get("outputs") or {}
    if isinstance(outs, list):  # a build written before run-scoped outputs
        outs = {o: o for o in outs}
    if name is None:
        name = next(iter(outs))
    if name not in outs:
        raise WitError(f"{build}: the {rec.get('stage')} stage has no output {name}; "
                       f"rerun it with --force")
    return storage.child(build, outs[name])


def require(build, stage: str, hint: str | None = None) -> dict[str, Any]:
    """The record of an upstream stage, or a WitError telling the user what to run."""
    rec = read_record(build, stage)
    if rec is None or rec.get("status") != "done":
        raise WitError(f"{build}: the {stage} stage has not finished in this build directory; "
                       f"run {hint or f'wit-build {stage}'} first (or check --out)")
    return rec


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def _staging(build, stage: str, run_id: str) -> Path:
    """Local staging for a run's outputs: inside a local build (so the commit is a
    rename), else under the user's cache directory."""
    if not storage.is_remote(build):
        return Path(build) / TMP_DIR / f"{stage}-{run_id}"
    key = hashlib.sha256(str(build).encode()).hexdigest()[:16]
    return storage.cache_dir("staging", key) / f"{stage}-{run_id}"


def _scratch(build, stage: str, phash: str, work) -> Path:
    if not storage.is_remote(build):
        return Path(work)
    key = hashlib.sha256(str(build).encode()).hexdigest()[:16]
    return storage.cache_dir("work", key) / f"{stage}-{phash}"


def _scoped_views(views: dict[str, str], outputs: dict[str, str]) -> dict[str, str]:
    """Rewrite `output/rest` globs to `output/<run_id>/rest`."""
    out = {}
    for view, glob in views.items():
        head, _, rest = glob.partition("/")
        out[view] = f"{outputs[head]}/{rest}" if head in outputs else glob
    return out


def run_stage(build, stage: str, params: dict[str, Any],
              work: Callable[[StageContext], StageOutput], *,
              outputs: list[str], views: dict[str, str], inputs: tuple[str, ...] = (),
              force: bool = False) -> StageResult:
    """Run `work` as stage `stage` unless its finished output already matches.

    `outputs` are the output names the stage owns (each committed to
    `<name>/<run_id>/` in the build); `views` maps catalog view names to globs
    relative to the build, starting with an output name; `inputs` are upstream
    stages whose records must exist (their run ids become part of what decides a skip).
    """
    build = storage.location(build)
    storage.check_reachable(build)
    upstream = {name: require(build, name) for name in inputs}  # before creating anything
    if stage in UID_STAGES:
        check_uid_width(build)
    if not storage.is_remote(build):
        Path(build).mkdir(parents=True, exist_ok=True)
    with lock.held(build, f"wit-build {stage}"):  # one writer per build directory
        return _run_locked(build, stage, params, work, outputs, views, upstream, force)


UID_STAGES = ("match", "balance", "fetch", "curate", "publish")  # they join on the pool's uids
UID_BITS = 128


def check_uid_width(build) -> None:
    """A build whose pool has 64-bit uids (an earlier wit's) must be rebuilt from the pool:
    128-bit uids (DataComp's width) cannot be mixed with them."""
    rec = read_record(build, "pool")
    if rec is None or (rec.get("summary") or {}).get("uid_bits") == UID_BITS:
        return
    raise WitError(f"{build} was built by an earlier wit with 64-bit uids (16 hex digits); uids are "
                   f"now {UID_BITS}-bit (32 hex digits, DataComp's width) and cannot be mixed: "
                   f"rebuild from the pool with `wit-build download --force --pool ... --out {build}` "
                   "(or `wit-build pool --force` and each later stage)")


def _run_locked(build, stage, params, work, outputs, views, upstream, force) -> StageResult:
    key = {"params": params, "inputs": {n: r["run_id"] for n, r in upstream.items()}}
    phash = params_hash(key)

    old = read_record(build, stage)
    if (not force and old and old.get("status") == "done" and old.get("params_hash") == phash
            and all(output_dir(build, old, o).exists() for o in outputs)):
        return StageResult(stage, old["run_id"], old["rows"], old.get("summary", {}),
                           outputs, 0.0, skipped=True)

    run_id = uuid.uuid4().hex[:12]
    tmp = _staging(build, stage, run_id)
    workdir = storage.child(build, WORK_DIR, f"{stage}-{phash}")
    scratch = _scratch(build, stage, phash, workdir)
    # A killed earlier attempt leaves staged outputs: they are never trusted.
    for old in tmp.parent.glob(f"{stage}-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir(parents=True)
    scratch.mkdir(parents=True, exist_ok=True)
    if not storage.is_remote(workdir):
        Path(workdir).mkdir(parents=True, exist_ok=True)
    started, t0 = _now(), time.time()
    ctx = StageContext(build, stage, params, tmp, workdir, scratch, run_id, upstream)
    try:
        result = work(ctx)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    # Commit: outputs under their run-scoped prefixes, then the record in one PUT.
    scoped = {name: f"{name}/{run_id}" for name in outputs}
    for name in outputs:
        src = tmp / name
        if not src.exists():
            raise RuntimeError(f"stage {stage} did not write its output {name}/")
        storage.upload_dir(src, storage.child(build, scoped[name]))
    for src, dest, copy in ctx.adopted:
        head, _, rest = dest.partition("/")
        (storage.copy if copy else storage.move)(src, storage.child(build, scoped[head], rest))
    seconds = time.time() - t0
    storage.write_json(record_path(build, stage), {
        "stage": stage, "run_id": run_id, "status": "done", "params": params,
        "params_hash": phash, "inputs": key["inputs"], "started": started,
        "finished": _now(), "seconds": round(seconds, 3), "rows": int(result.rows),
        "outputs": scoped, "views": _scoped_views(views, scoped), "summary": result.summary,
    })
    collect_garbage(build, stage, scoped)  # this run's work folder too
    shutil.rmtree(tmp, ignore_errors=True)
    if storage.is_remote(workdir):
        shutil.rmtree(scratch, ignore_errors=True)
    catalog.refresh(build)
    return StageResult(stage, run_id, int(result.rows), result.summary, outputs, seconds)


def collect_garbage(build, stage: str, scoped: dict[str, str]) -> list[str]:
    """Remove what the stage's committed record no longer names: prefixes of
    superseded or killed runs under its outputs, a pre-run-scoped layout, and the
    stage's resume folders under _work/."""
    removed = []
    work = storage.child(build, WORK_DIR)
    if work.exists():  # resume state of runs with other parameters: never resumed now
        for entry in work.iterdir():
            if entry.name.split("-", 1)[0] == stage:
                storage.remove(entry)
                removed.append(storage.rel(build, entry))
    for name, keep in scoped.items():
        folder = storage.child(build, name)
        if not folder.exists():
            continue
        for entry in folder.iterdir():
            if storage.rel(build, entry) != keep:
                storage.remove(entry)
                removed.append(storage.rel(build, entry))
    return removed


def committed(build, stage: str, name: str | None = None):
    """Where the finished `stage` keeps output `name` (its first by default)."""
    return output_dir(storage.location(build), require(build, stage), name)
