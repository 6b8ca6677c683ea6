"""Run a pipeline recipe (pipelines/*.toml): every stage's parameters in one file.

A recipe has one table per stage (`[queries]`, `[pool]`, `[match]`, `[balance]`,
`[fetch]`, `[curate]`, `[publish]`), and optionally `[train]`, `[eval]` and
`[report]`; keys are the stages' flag names with underscores. `[build] out` names the
build directory. Values that start with `FILL-ME` mark what a user must fill in.
Stages run in pipeline order; finished ones are skipped, so rerunning a recipe resumes.
`--set stage.key=value` overrides a value (TOML syntax; bare words are strings).
"""
from __future__ import annotations

import argparse
import copy
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

from wit_builder.build import pipeline
from wit_builder.errors import WitError

PLACEHOLDER = "FILL-ME"
AFTER = ["train", "eval", "report"]  # steps that follow the data stages
REPO_PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def find_recipe(name: str):
    """A path or URL, or the name of a recipe shipped in pipelines/ ("demo" -> pipelines/demo.toml)."""
    from wit_builder import storage
    if storage.scheme(name):
        path = storage.location(name, "recipe")
        if not path.exists():
            raise WitError(f"recipe {name}: no such object")
        return path
    path = Path(name)
    if path.exists():
        return path
    shipped = REPO_PIPELINES / (name if name.endswith(".toml") else f"{name}.toml")
    if shipped.exists():
        return shipped
    known = ", ".join(sorted(p.stem for p in REPO_PIPELINES.glob("*.toml")))
    raise WitError(f"recipe {name}: no such file; give a path or one of: {known}")


def _value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word or path


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `stage.key=value` overrides, returning a new recipe."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise WitError(f"--set {item}: expected STAGE.KEY=VALUE, e.g. --set balance.per_query=500")
        known = ["build"] + list(pipeline.STAGES) + AFTER
        if section not in known:
            raise WitError(f"--set {item}: unknown section {section!r}; known: {', '.join(known)}")
        recipe.setdefault(section, {})[name] = _value(value.strip())
    return recipe


def load(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Read and check a recipe: known sections, no unfilled placeholders."""
    from wit_builder import storage
    path = storage.location(path, "recipe")
    try:
        recipe = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise WitError(f"recipe {path}: no such file") from None
    except IsADirectoryError:
        raise WitError(f"recipe {path}: is a folder; give a .toml file") from None
    except UnicodeDecodeError as e:
        raise WitError(f"recipe {path}: not a text file (byte {e.start} is not UTF-8); "
                       "a recipe is TOML text, like pipelines/demo.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise WitError(f"recipe {path}: not valid TOML ({e})") from None
    recipe = apply_overrides(recipe, list(overrides))
    known = {"build", "name", "description", *pipeline.STAGES, *AFTER}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise WitError(f"recipe {path}: unknown section(s) {', '.join(unknown)}; "
                       f"known: {', '.join(sorted(known))}")
    if not set(recipe) & {*pipeline.STAGES, *AFTER}:
        raise WitError(f"recipe {path}: names no stage, so it would do nothing; add a section "
                       f"such as [queries] (stages: {', '.join(pipeline.STAGES)}; then: "
                       f"{', '.join(AFTER)})")
    for section, table in recipe.items():
        if not isinstance(table, dict):
            continue
        for key, value in table.items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, str) and v.startswith(PLACEHOLDER) for v in values):
                raise WitError(f"recipe {path}: [{section}] {key} is not filled in ({value!r}); "
                               f"edit the file or pass --set {section}.{key}=...")
    return recipe


def run(recipe: dict[str, Any], build: Path, force: bool = False,
        echo: Callable[[str], None] = print, where: str = "recipe") -> dict[str, Any]:
    """Run the recipe's stages in order; returns {stage: result}."""
    from wit_builder.app import steps
    from wit_builder.app.cli import print_result
    results: dict[str, Any] = {}
    stages = [s for s in pipeline.STAGES if s in recipe]
    for step in AFTER:  # checked with the stages' settings, before the first stage starts
        if step in recipe:
            steps.check(step, recipe[step], build)
    started: dict[str, float] = {}

    def before(name: str) -> None:
        echo(f"== {name}")
        started[name] = time.time()

    def report(name: str, res: Any) -> None:
        print_result(res)
        results[name] = res
        results.setdefault("_seconds", {})[name] = time.time() - started[name]
    pipeline.run_stages(build, recipe, stages, force=force, report=report, where=where,
                        before=before)
    for step in AFTER:
        if step in recipe:
            echo(f"== {step}")
            results[step] = _after(step, recipe, build, force)
    return results


def _after(step: str, recipe: dict[str, Any], build: Path, force: bool) -> Any:
    """Training, evaluation and the report, which are not build stages."""
    from wit_builder.app import steps
    return getattr(steps, step)(recipe.get(step, {}), build, force=force)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe file, or a shipped one by name (demo, wit400m, …)")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   dest="overrides", help="override a recipe value (repeatable)")


def main(args: argparse.Namespace) -> int:
    path = find_recipe(args.recipe)
    recipe = load(path, args.overrides)
    out = getattr(args, "out", None) or recipe.get("build", {}).get("out") or "wit-data"
    from wit_builder import storage
    run(recipe, storage.location(out), force=getattr(args, "force", False), where=f"recipe {path}")
    return 0
