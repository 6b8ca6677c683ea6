"""`wit-build demo`: the whole pipeline, offline, on a generated world.

Makes a small world (a Wikipedia dump, WordNet, pageviews, a long-tailed pool of
captioned image URLs and held-out evaluation images), serves its images from a
real HTTP server on 127.0.0.1, and runs the `demo` recipe: queries -> pool ->
match -> balance -> fetch -> curate -> publish -> train -> zero-shot eval -> report.
Every stage is the real one; only the world is made up. Rerunning resumes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from wit_builder.app import recipe as recipes
from wit_builder.errors import WitError


def _world(root: Path, size: str, seed: int):
    from wit_builder.demo.world import World, make_world
    if (root / "world.json").exists():
        world = World.load(root)
        if world.size == size and world.seed == seed:
            return world
    return make_world(root, size=size, seed=seed)


def world_overrides(world, minutes: float) -> list[str]:
    """Recipe values that point the demo recipe at the generated world."""
    q = lambda s: '"' + str(s) + '"'
    return [
        f"queries.wiki=[{q(world.wiki_dump)}]",
        f"queries.wordnet={q(world.wordnet_dir)}",
        f"queries.pageviews={q(world.pageviews)}",
        f"queries.min_freq={world.min_freq}",
        f"queries.min_views={world.pageview_min}",
        f"pool.pool=[{q(world.pool_parquet)}]",
        f"curate.eval_images={q(world.eval_dir)}",
        f"train.max_minutes={minutes}",
        f"eval.images={q(world.eval_dir)}",
    ]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=4.0,
                   help="training time budget in minutes (default: 4)")
    p.add_argument("--size", choices=["test", "small", "demo"], default="demo",
                   help="world size (default: demo; test is a tiny smoke run)")
    p.add_argument("--seed", type=int, default=0, help="world seed")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   dest="overrides", help="override a value of pipelines/demo.toml")


def summary_rows(build: Path, results: dict[str, Any]) -> list[tuple[str, str]]:
    """The closing table: what each stage produced."""
    def rows(stage):
        res = results.get(stage)
        return f"{res.rows:,}" if res is not None else "-"
    s = results.get("publish").summary if results.get("publish") else {}
    train = results.get("train") or {}
    zs = (results.get("eval") or {}).get("zero_shot") or {}
    acc = (f"{zs['accuracy']:.1%} (chance {zs['chance']:.1%}, {zs['n']} held-out images)"
           if zs else "-")
    return [
        ("queries", rows("queries")), ("pool", rows("pool")), ("matched", rows("match")),
        ("selected", rows("balance")), ("fetched", rows("fetch")), ("kept", rows("publish")),
        ("shards", str(s.get("shards", "-"))), ("training steps", str(train.get("steps", "-"))),
        ("zero-shot accuracy", acc),
    ]


def main(args: argparse.Namespace) -> int:
    from wit_builder.demo.imageserver import serve
    from wit_builder.demo.world import write_pool
    if not args.minutes > 0:
        raise WitError(f"--minutes {args.minutes:g}: give the training time budget in minutes, "
                       "above 0 (default 4)")
    out = Path(getattr(args, "out", None) or "wit-demo")
    force = getattr(args, "force", False)
    t0 = time.time()
    print(f"== world: generating a '{args.size}' world under {out / 'world'}")
    world = _world(out / "world", args.size, args.seed)
    # Reuse the last port so pool URLs (and thus uids) stay the same and a rerun resumes.
    old_port = int(world.base_url.rsplit(":", 1)[-1]) if world.base_url.count(":") == 2 else 0
    try:
        server = serve(port=old_port if old_port > 1024 else 0)
    except OSError:  # taken by something else: new URLs, so the download is redone
        server = serve(port=0)
    with server:
        if server.base_url != world.base_url:
            write_pool(world, server.base_url)
        print(f"== image server: {server.base_url} (stopped when the demo ends)")
        recipe = recipes.load(recipes.find_recipe("demo"),
                              world_overrides(world, args.minutes) + list(args.overrides))
        results = recipes.run(recipe, out, force=force, where="demo recipe")
    print()
    print(f"wit demo finished in {time.time() - t0:.0f} s — build directory {out}")
    for name, value in summary_rows(out, results):
        print(f"  {name:20s} {value}")
    report = results.get("report")
    if report:
        print(f"  {'report':20s} {report}")
    print(f"Try: wit-build sql --out {out} \"SELECT drop_reason, count(*) FROM samples GROUP BY 1\"")
    zs = (results.get("eval") or {}).get("zero_shot")
    if zs and zs["accuracy"] <= zs["chance"]:
        raise WitError("the demo model did no better than chance; train longer with --minutes")
    return 0
