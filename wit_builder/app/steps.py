"""The recipe steps after the data stages: train, eval, report.

They are not build stages (no `_stages` record): training resumes from its own
checkpoint, evaluation is cheap, and the report is rewritten each time.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from wit_builder import config as cfgmod
from wit_builder import storage
from wit_builder.errors import WitError

EVAL_KEYS = ("checkpoint", "images", "classnames", "templates", "shards")


def _train_config(settings: dict[str, Any], build: Path):
    from trainer.config import TrainConfig
    values = {"data": [str(build)], "out": str(storage.child(build, "train")), **settings}
    return cfgmod.from_mapping(TrainConfig, values, where="recipe [train]")


def check(step: str, settings: dict[str, Any], build: Path) -> None:
    """A step's settings checked before the recipe's first stage runs."""
    if step == "train":
        _train_config(settings, build).validate()
        return
    if step == "eval":
        known: tuple[str, ...] = EVAL_KEYS
    else:
        from wit_builder.app.report import write_report
        known = tuple(inspect.signature(write_report).parameters)[1:]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise WitError(f"recipe [{step}]: unknown setting(s) {', '.join(unknown)}; "
                       f"known: {', '.join(known) or 'none'}")
    for key in ("images", "classnames", "templates"):
        if step == "eval" and settings.get(key) and not storage.location(settings[key]).exists():
            raise WitError(f"recipe [eval] {key} = {settings[key]!r}: no such "
                           f"{'folder' if key == 'images' else 'file'}")


def train(settings: dict[str, Any], build: Path, force: bool = False) -> dict[str, Any]:
    """Train on the build's shards.

    Like a stage, a finished run with the same settings is not repeated (its summary is
    in OUT/summary.json); a run that was interrupted resumes from OUT/checkpoint.pt.
    """
    from trainer.train import train as run_training
    cfg = _train_config(settings, build)
    done = storage.location(cfg.out) / "summary.json"
    wanted = cfg.to_dict()
    if done.exists() and not force:
        previous = json.loads(done.read_text())
        if (previous.get("config") == wanted
                and storage.location(previous.get("checkpoint") or "/nonexistent").exists()):
            print(f"    already trained with the same settings: {previous['steps']} steps "
                  f"(use --force to train again)")
            return previous
    if (storage.location(cfg.out) / "checkpoint.pt").exists() and not force and not cfg.resume:
        cfg.resume = "auto"
    summary = run_training(cfg.validate())
    print(f"    steps: {summary.get('steps')}  final loss: {summary.get('final_loss') or float('nan'):.3f}  "
          f"samples/s: {summary.get('samples_per_s') or 0:.0f}  checkpoint: {summary.get('checkpoint')}")
    if not summary.get("interrupted"):
        storage.write_json(done, {**summary, "config": wanted})
    return summary


def eval(settings: dict[str, Any], build: Path, force: bool = False) -> dict[str, Any]:  # noqa: A001
    """Zero-shot classification on `images` (ImageFolder layout) and retrieval on `shards`."""
    from trainer import evaluate
    ckpt = settings.get("checkpoint") or str(storage.child(build, "train", "checkpoint.pt"))
    if not storage.location(ckpt).exists():
        raise WitError(f"[eval] checkpoint {ckpt}: not found; run the [train] step first")
    out: dict[str, Any] = {}
    if settings.get("images"):
        zs = evaluate.zero_shot(ckpt, settings["images"], classnames=settings.get("classnames"),
                                templates=settings.get("templates"))
        out["zero_shot"] = zs
        print(f"    zero-shot accuracy {zs['accuracy']:.3f} on {zs['n']} images "
              f"(chance {zs['chance']:.3f})")
    if settings.get("shards"):
        out["retrieval"] = evaluate.retrieval(ckpt, settings["shards"])
        print("    retrieval " + "  ".join(f"{k} {v:.3f}" for k, v in out["retrieval"].items()
                                              if isinstance(v, float)))
    storage.write_json(storage.child(build, "reports", "eval.json"), out)
    return out


def report(settings: dict[str, Any], build: Path, force: bool = False) -> Path:
    from wit_builder.app.report import write_report
    path = write_report(build, **settings)
    print(f"    report: {path}")
    return path
