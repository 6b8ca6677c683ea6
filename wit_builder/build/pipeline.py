"""The stages in order, and running several of them as one resumable command."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable

from wit_builder import config as cfgmod

# Stage name -> module; the order is the pipeline's order.
STAGES: dict[str, str] = {
    "queries": "wit_builder.stages.queries.queries",
    "pool": "wit_builder.stages.pool.pool",
    "match": "wit_builder.stages.match.match",
    "balance": "wit_builder.stages.balance.balance",
    "fetch": "wit_builder.stages.fetch.fetch",
    "curate": "wit_builder.stages.curate.curate",
    "publish": "wit_builder.stages.publish.publish",
}
DOWNLOAD = ["pool", "match", "balance", "fetch", "curate", "publish"]


def available(name: str) -> bool:
    return importlib.util.find_spec(STAGES[name]) is not None


def module(name: str):
    return importlib.import_module(STAGES[name])


def configs(settings: dict[str, dict[str, Any]], stages: list[str],
            where: str = "settings") -> dict[str, Any]:
    """Every stage's Config, built and checked before any stage runs, so that a
    mistake in the last stage's settings is not found after hours of the first."""
    out = {}
    for name in stages:
        mod = module(name)
        out[name] = cfgmod.from_mapping(mod.Config, settings.get(name, {}), where=f"{where} [{name}]")
        if hasattr(mod, "check"):
            mod.check(out[name])
    return out


def run_stages(build: Path, settings: dict[str, dict[str, Any]], stages: list[str],
               force: bool = False, report: Callable[[str, Any], None] | None = None,
               where: str = "settings", before: Callable[[str], None] | None = None) -> list[Any]:
    """Run `stages` in order with per-stage settings; finished stages are skipped.

    `settings[stage]` is a dict of that stage's Config fields; `force` reruns all.
    All settings are checked first; `before(stage)` and `report(stage, result)` are
    called around each stage.
    """
    results = []
    for name, cfg in configs(settings, stages, where).items():
        if before:
            before(name)
        res = module(name).run(cfg, build, force=force)
        if report:
            report(name, res)
        results.append(res)
    return results
