"""A small published build (15 kept samples in 4 shards) for publish and interop tests."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.support.fetch import Sample, encode, make_fetch, make_queries, picture
from wit_builder.app import cli
from wit_builder.build.stage import StageOutput, run_stage
from wit_builder.io import uid_of
from wit_builder.stages.curate import curate

FOX_URL = "https://upload.wikimedia.org/wikipedia/commons/4/4f/Red_fox_in_snow.jpg"
FOX_TEXT = "red fox (Vulpes vulpes) in snow"
SHARD_SIZE = 4


def world_samples() -> list[Sample]:
    """14 distinct pictures (one with a non-ASCII caption) plus 3 to be dropped.

    All JPEG, as fetch stores them (one --encode-format per build).
    """
    fox = encode(picture(1, 400, 300))
    out = [Sample(FOX_URL, FOX_TEXT, fox, selected_by=1, query_ids=[1, 2]),
           Sample("http://x/fox-copy", "the same fox, copied elsewhere", fox, selected_by=2),
           Sample("http://x/junk", "an image that does not decode", b"junk"),
           Sample("http://x/404", "never downloaded at all", None, status="not_found"),
           Sample("http://x/png", "a lossless picture of a meadow", encode(picture(300, 500, 300))),
           Sample("http://x/unicode", "Ein Fuchs im Schnee — ünïcödé 狐狸", encode(picture(301)),
                  selected_by=2, query_ids=[2, 0])]
    out += [Sample(f"http://x/{i}", f"a photo of scene number {i}", encode(picture(400 + i)),
                   selected_by=i % 3, query_ids=[i % 3]) for i in range(12)]
    return out


def register_source_uids(build: Path, source: dict[str, str]) -> None:
    """Stand in for balance: selected rows carrying the pool's source_uid column."""
    def work(ctx):
        pq.write_table(pa.table({"uid": list(source), "source_uid": list(source.values())}),
                       ctx.output("selected") / "part-0.parquet")
        return StageOutput(rows=len(source))
    run_stage(build, "balance", {"test": "source"}, work, outputs=["selected"],
              views={"selected": "selected/*.parquet"})


def make_published(build: Path) -> Path:
    """Queries, a balance stand-in with one source uid, fetch, curate, publish (seed 7)."""
    make_queries(build, ["fox", "snow", "meadow"])
    register_source_uids(build, {uid_of(FOX_URL, FOX_TEXT): "laion-123"})
    make_fetch(build, world_samples(), shards=3)
    curate.run(curate.Config(), build)
    assert cli.main(["publish", "--out", str(build), "--shard-size", str(SHARD_SIZE),
                     "--seed", "7"]) == 0
    return build
