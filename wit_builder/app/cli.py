"""`wit-build`: parse flags, call a stage, print its summary. Nothing else lives here."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from wit_builder import config as cfgmod
from wit_builder.build import pipeline
from wit_builder.errors import WitError, disk_full, output_closed

STAGE_HELP = {
    "queries": "build the query list from Wikipedia (unigrams, bigrams, titles, WordNet)",
    "pool": "read candidate (image URL, caption) files into the build's pool",
    "match": "match pool captions against the query list (MetaCLIP substring semantics)",
    "balance": "keep at most --per-query pairs per query (or MetaCLIP's rule)",
    "fetch": "download the selected pairs with img2dataset under Ray",
    "curate": "image facts, filters and dedup: keep/drop_reason for every sample",
    "publish": "write kept samples into final WebDataset shards and the manifest",
}
# Commands whose module brings its own arguments: name -> (module, help).
EXTRA = {
    "demo": ("wit_builder.demo.demo", "run everything offline on a generated world"),
    "run": ("wit_builder.app.recipe", "run a pipeline recipe (pipelines/*.toml)"),
    "report": ("wit_builder.app.report", "write the HTML data card with plots"),
    "export": ("wit_builder.stages.publish.export", "hand the shards to other tools: a Hugging Face "
               "datasets folder, open_clip_train's flags"),
    "takedown": ("wit_builder.stages.publish.takedown", "remove samples from the published shards (takedown "
                 "requests), rewriting only the shards that held them"),
}


def _common(p: argparse.ArgumentParser, out: str = "./wit-data") -> None:
    g = p.add_argument_group("common")
    g.add_argument("--out", default=argparse.SUPPRESS, metavar="URL",
                   help=f"build directory: a path, file://, s3:// or gs:// URL (default: {out})")
    g.add_argument("--storage-options", default=argparse.SUPPRESS, metavar="JSON",
                   help="filesystem options for s3:// / gs:// URLs as a JSON object, e.g. "
                   '\'{"endpoint_url": "http://127.0.0.1:9000"}\' (credentials otherwise come '
                   "from AWS_* variables, ~/.aws or GOOGLE_APPLICATION_CREDENTIALS)")
    g.add_argument("--catalog", default=argparse.SUPPRESS, metavar="PATH",
                   help="local catalog file for a remote build (default: a cache under "
                   "~/.cache/wit/catalogs/)")
    g.add_argument("--force", action="store_true", default=argparse.SUPPRESS,
                   help="rerun even if the output is complete with the same parameters")
    g.add_argument("--ray-address", default=argparse.SUPPRESS, metavar="ADDR",
                   help="join this Ray cluster (or set RAY_ADDRESS); default: local Ray")
    g.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks and more detail")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wit-build", description="Build CLIP-style image-text datasets: "
        "queries -> pool -> match -> balance -> fetch -> curate -> publish.")
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in pipeline.STAGES:
        if not pipeline.available(name):
            continue
        mod = pipeline.module(name)
        p = sub.add_parser(name, help=STAGE_HELP[name], description=(mod.__doc__ or "").strip())
        cfgmod.add_config_arguments(p, mod.Config)
        _common(p)
    stages = [n for n in pipeline.DOWNLOAD if pipeline.available(n)]
    if stages:
        p = sub.add_parser("download", help="pool -> match -> balance -> fetch -> curate -> "
                           "publish as one resumable command",
                           description="Runs " + " -> ".join(stages) + "; finished stages "
                           "with unchanged parameters are skipped.")
        _download_arguments(p, stages)
        _common(p)
    p = sub.add_parser("sql", help="run a read-only SQL query over the build's manifests",
                       description="Tables: queries, pool, matches, selected, samples, "
                       "shards, stages (whatever stages have run).")
    p.add_argument("sql", help='e.g. "SELECT count(*) FROM samples WHERE keep"')
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("--output", metavar="FILE", help="write the result here instead of stdout")
    p.add_argument("--max-rows", type=int, default=40, help="rows shown as a table")
    p.add_argument("--allow-files", action="append", default=[], metavar="PATH",
                   help="also let the query read this file or folder (repeatable); "
                   "otherwise only the build's own files can be read")
    _common(p)
    p = sub.add_parser("stats", help="one line per stage: rows, time, status")
    _common(p)
    p = sub.add_parser("catalog", help="catalog maintenance")
    p.add_argument("action", choices=["rebuild", "show"],
                   help="rebuild: recreate catalog.duckdb from the Parquet files; show: list views")
    _common(p)
    for name, (modname, help_) in EXTRA.items():
        if importlib.util.find_spec(modname) is None:
            continue
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or "").strip())
        mod.add_arguments(p)
        _common(p, {"demo": "./wit-demo", "run": "the recipe's [build] out, else ./wit-data"}
                .get(name, "./wit-data"))
    return parser


def print_result(res) -> None:
    """One line per stage, then its summary."""
    if res.skipped:
        print(f"[{res.stage}] already done with the same parameters and inputs: "
              f"{res.rows:,} rows (use --force to rerun)")
    else:
        print(f"[{res.stage}] {res.rows:,} rows in {res.seconds:.1f} s")
    for key, value in res.summary.items():
        if isinstance(value, (dict, list)) and len(str(value)) > 200:
            continue  # long breakdowns are in the stage record and the catalog
        print(f"    {key}: {value}")


def _run(args: argparse.Namespace) -> int:
    from wit_builder import storage
    from wit_builder.build import catalog
    if getattr(args, "storage_options", None):
        storage.set_options(args.storage_options)
    catalog.set_path(getattr(args, "catalog", None))
    build = storage.location(getattr(args, "out", "wit-data"))
    if isinstance(build, Path) and build.exists() and not build.is_dir():
        raise WitError(f"--out {build}: is a file, not a build directory; give a folder "
                       "(it is created if missing)")
    if getattr(args, "ray_address", None):
        os.environ["RAY_ADDRESS"] = args.ray_address
    force = getattr(args, "force", False)
    cmd = args.command
    if cmd in pipeline.STAGES or cmd == "download":
        from wit_builder.build import lock
        with lock.held(build, f"wit-build {cmd}"):  # a second command is refused, not mixed in
            return _write(args, build, cmd, force)
    return _dispatch(args, build, cmd)


def _shared_settings(stages: list[str]) -> dict[str, list[str]]:
    """Setting name -> the download stages whose Config has it, for names in several."""
    owners: dict[str, list[str]] = {}
    for n in stages:
        for f in dataclasses.fields(pipeline.module(n).Config):
            owners.setdefault(f.name, []).append(n)
    return {k: v for k, v in owners.items() if len(v) > 1}


def _download_arguments(p: argparse.ArgumentParser, stages: list[str]) -> None:
    """Every stage's flags once; a setting several stages have (`--seed`: balance's
    selection and publish's shuffle) gets a flag per stage (`--balance-seed`,
    `--publish-seed`), and its plain flag says that it sets all of them."""
    shared = _shared_settings(stages)
    seen: set[str] = set(shared)
    for name in stages:
        cfgmod.add_config_arguments(p, pipeline.module(name).Config, seen)
    for key, owners in shared.items():
        for n in owners:
            cls = pipeline.module(n).Config
            f = next(f for f in dataclasses.fields(cls) if f.name == key)
            tp = cfgmod._base_type(cfgmod._hints(cls)[key])[0]
            p.add_argument(f"--{n}-{key.replace('_', '-')}", dest=f"{n}__{key}",
                           type=tp if tp in (int, float) else str, default=argparse.SUPPRESS,
                           metavar=f.metadata.get("metavar", key.upper()),
                           help=f"{n}: {f.metadata.get('help', '')}")
        p.add_argument(cfgmod.flag(key), dest=key, default=argparse.SUPPRESS,
                       type=tp if tp in (int, float) else str,
                       metavar=key.upper(), help=f"sets {key} for each of {', '.join(owners)} "
                       f"(see --{owners[0]}-{key.replace('_', '-')} and the others to set one)")


def _write(args: argparse.Namespace, build, cmd: str, force: bool) -> int:
    """A stage's command, or download's chain of stages."""
    if cmd in pipeline.STAGES:
        mod = pipeline.module(cmd)
        print_result(mod.run(cfgmod.from_args(mod.Config, args), build, force=force))
        return 0
    stages = [n for n in pipeline.DOWNLOAD if pipeline.available(n)]
    if "pool" in stages and not getattr(args, "pool", None):
        from wit_builder.build.stage import read_record
        if read_record(build, "pool") is None:
            raise WitError("--pool: give the candidate files (Parquet, CSV, TSV, JSONL) "
                           f"— {build} has no pool yet")
        stages.remove("pool")  # reuse the pool already in the build directory
    pipeline.run_stages(build, download_settings(args, stages), stages, force=force,
                        report=lambda _n, r: print_result(r), where="flags")
    return 0


def download_settings(args: argparse.Namespace, stages: list[str]) -> dict[str, dict[str, Any]]:
    """Each download stage's settings from the flags: its own, `--<stage>-<name>` over a
    shared `--<name>`."""
    settings = {}
    given = vars(args)
    for n in stages:
        names = {f.name for f in dataclasses.fields(pipeline.module(n).Config)}
        settings[n] = {k: v for k, v in given.items() if k in names}
        settings[n].update({k.split("__", 1)[1]: v for k, v in given.items()
                            if k.startswith(f"{n}__")})
    return settings


def _dispatch(args: argparse.Namespace, build, cmd: str) -> int:
    if cmd == "sql":
        from wit_builder.app.sqlcmd import run_sql
        run_sql(build, args.sql, args.format, args.output, args.max_rows, args.allow_files)
    elif cmd == "stats":
        from wit_builder.app.sqlcmd import print_stats
        print_stats(build)
    elif cmd == "catalog":
        from wit_builder.build import catalog
        if args.action == "rebuild":
            views = catalog.rebuild(build)
            print(f"rebuilt {build / catalog.DB_NAME}: views {', '.join(views) or 'none'}")
        else:
            for view, n in catalog.describe(build).items():
                print(f"{view:12s} {n:>12,} rows")
    else:
        return importlib.import_module(EXTRA[cmd][0]).main(args) or 0
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    ray_was_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        return _run(args)
    except WitError as e:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        return output_closed()
    except OSError as e:
        full = disk_full(e)
        if full is None:
            raise
        print(f"error: {full}", file=sys.stderr)
        return 2
    finally:
        if "ray" in sys.modules and not ray_was_running:
            from wit_builder.build.cluster import shutdown
            shutdown()  # only a Ray this command started


if __name__ == "__main__":
    sys.exit(main())
