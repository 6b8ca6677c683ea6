"""Stage records: `_stages/<stage>.json`, one per finished stage, the build's commits.

Reading them is all this module does (`stage` writes them), so the catalog, which
builds its views from them, and the stage plumbing, which refreshes the catalog after
each run, both depend on it and not on each other.
"""
from __future__ import annotations

from typing import Any

from wit_builder import storage

STAGES_DIR = "_stages"


def record_path(build, stage: str):
    return storage.child(build, STAGES_DIR, f"{stage}.json")


def read_record(build, stage: str) -> dict[str, Any] | None:
    path = record_path(build, stage)
    return storage.read_json(path) if path.exists() else None


def records(build) -> list[dict[str, Any]]:
    """All finished stage records in pipeline order (then by finishing time).

    Later stages' views override earlier ones (curate's `samples` over fetch's), so the
    order must not depend on clocks.
    """
    from wit_builder.build.pipeline import STAGES
    order = {name: i for i, name in enumerate(STAGES)}
    folder = storage.child(storage.location(build), STAGES_DIR)
    paths = sorted(folder.glob("*.json"), key=str) if folder.exists() else []
    out = [storage.read_json(p) for p in paths]
    return sorted(out, key=lambda r: (order.get(r.get("stage"), len(order)), r.get("finished", "")))


def stale(recs: list[dict[str, Any]]) -> dict[str, str]:
    """{stage: why} for finished stages whose inputs are no longer the runs they read:
    an upstream stage reran since (or is gone), or is itself stale. `recs` as
    `records` returns them, upstream first."""
    current = {r["stage"]: r["run_id"] for r in recs}
    out: dict[str, str] = {}
    for r in recs:
        for name, run_id in (r.get("inputs") or {}).items():
            if name in out:
                out[r["stage"]] = f"{name} is stale"
            elif current.get(name) != run_id:
                out[r["stage"]] = f"{name} reran after it" if name in current else f"{name} is gone"
            else:
                continue
            break
    return out
