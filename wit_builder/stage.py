"""Stage plumbing: temporary outputs, atomic commit, skip-if-done, stage records.

A stage writes its output directories under a temporary folder and, only when it
has finished, swaps them into the build directory and writes its record
`_stages/<stage>.json`. The record is the proof of completion: a stage is skipped
when its record exists, its parameters and its inputs' run ids are unchanged and
its outputs are present. A killed stage leaves no record, so it is redone.
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

from . import catalog
from .errors import WitError
from .io import read_json, write_json

STAGES_DIR = "_stages"
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
    """Handed to a stage's work function."""
    build: Path
    stage: str
    params: dict[str, Any]
    tmp: Path        # outputs go under tmp/<output name>/
    work: Path       # survives a killed run (resume state); removed after success
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # upstream records

    def output(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class StageOutput:
    rows: int
    summary: dict[str, Any] = field(default_factory=dict)


def params_hash(params: dict[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def record_path(build: Path, stage: str) -> Path:
    return Path(build) / STAGES_DIR / f"{stage}.json"


def read_record(build: Path, stage: str) -> dict[str, Any] | None:
    path = record_path(build, stage)
    return read_json(path) if path.exists() else None


def require(build: Path, stage: str, hint: str | None = None) -> dict[str, Any]:
    """The record of an upstream stage, or a WitError telling the user what to run."""
    rec = read_record(build, stage)
    if rec is None or rec.get("status") != "done":
        raise WitError(f"{build}: the {stage} stage has not finished in this build directory; "
                       f"run {hint or f'wit-build {stage}'} first (or check --out)")
    return rec


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def run_stage(build: str | Path, stage: str, params: dict[str, Any],
              work: Callable[[StageContext], StageOutput], *,
              outputs: list[str], views: dict[str, str], inputs: tuple[str, ...] = (),
              force: bool = False) -> StageResult:
    """Run `work` as stage `stage` unless its finished output already matches.

    `outputs` are the directory names the stage owns under the build directory;
    `views` maps catalog view names to globs relative to the build directory;
    `inputs` are upstream stages whose records must exist (their run ids become
    part of what decides a skip).
    """
    build = Path(build).absolute()  # Ray workers need not share our working directory
    upstream = {name: require(build, name) for name in inputs}  # before creating anything
    build.mkdir(parents=True, exist_ok=True)
    key = {"params": params, "inputs": {n: r["run_id"] for n, r in upstream.items()}}
    phash = params_hash(key)

    old = read_record(build, stage)
    if (not force and old and old.get("status") == "done" and old.get("params_hash") == phash
            and all((build / o).exists() for o in outputs)):
        return StageResult(stage, old["run_id"], old["rows"], old.get("summary", {}),
                           outputs, 0.0, skipped=True)

    run_id = uuid.uuid4().hex[:12]
    tmp = build / TMP_DIR / f"{stage}-{run_id}"
    workdir = build / WORK_DIR / f"{stage}-{phash}"
    # A killed earlier attempt leaves temporaries: they are never trusted.
    for stale in (build / TMP_DIR).glob(f"{stage}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    workdir.mkdir(parents=True, exist_ok=True)
    started, t0 = _now(), time.time()
    ctx = StageContext(build, stage, params, tmp, workdir, upstream)
    try:
        result = work(ctx)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    # Commit: drop the old record first, so a kill from here on means "not done".
    rec_path = record_path(build, stage)
    rec_path.unlink(missing_ok=True)
    trash = build / TMP_DIR / f"trash-{run_id}"
    for name in outputs:
        src, dest = tmp / name, build / name
        if not src.exists():
            raise RuntimeError(f"stage {stage} did not write its output {name}/")
        if dest.exists():
            trash.mkdir(parents=True, exist_ok=True)
            dest.rename(trash / name)
        src.rename(dest)
    seconds = time.time() - t0
    write_json(rec_path, {
        "stage": stage, "run_id": run_id, "status": "done", "params": params,
        "params_hash": phash, "inputs": key["inputs"], "started": started,
        "finished": _now(), "seconds": round(seconds, 3), "rows": int(result.rows),
        "outputs": outputs, "views": views, "summary": result.summary,
    })
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)
    catalog.refresh(build)
    return StageResult(stage, run_id, int(result.rows), result.summary, outputs, seconds)


def records(build: Path) -> list[dict[str, Any]]:
    """All finished stage records in pipeline order (then by finishing time).

    Later stages' views override earlier ones (curate's `samples` over fetch's), so the
    order must not depend on clocks.
    """
    from .pipeline import STAGES
    order = {name: i for i, name in enumerate(STAGES)}
    out = [read_json(p) for p in sorted((Path(build) / STAGES_DIR).glob("*.json"))]
    return sorted(out, key=lambda r: (order.get(r.get("stage"), len(order)), r.get("finished", "")))
