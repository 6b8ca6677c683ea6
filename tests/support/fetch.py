"""A small real fetch output for curate/publish tests, and pictures to put in it.

`make_fetch` writes what the fetch stage promises (docs/architecture.md):
`fetch/shards/NNNNN.tar` in img2dataset format (key.jpg, key.txt, key.json) and
`fetch/status/*.parquet` with one row per selected uid, registered as the stage
`fetch` through `wit_builder.build.stage.run_stage`. `fetch_shard` is the shard number,
as wit_builder.stages.fetch.fetch writes it, or (numbered=False) the tar's path in the build.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from wit_builder.build.stage import StageOutput, run_stage
from wit_builder.io import uid_of
from wit_builder.schemas import fetch_status_schema

STATUS_SCHEMA = fetch_status_schema(signature=False)  # a fetch/status without the signature


def picture(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """A photo-like RGB picture: colour noise with a natural 1/f^1.5 spectrum."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    chans = [np.fft.irfft2((rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** 1.5,
                           s=(height, width)) for _ in range(3)]
    x = np.stack(chans, -1)
    x = (x - x.mean()) / x.std() * 50 + 128
    return Image.fromarray(x.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" and not kw else kw))
    return buf.getvalue()


@dataclass
class Sample:
    """One selected pair and what fetching it gave."""
    url: str
    text: str
    image: bytes | None = None          # None: not in any shard
    status: str = "success"
    error: str | None = None
    selected_by: int = 0
    query_ids: list[int] = field(default_factory=lambda: [0])
    original_size: tuple[int, int] | None = None   # default: the image's own size
    shard: int | None = None            # default: round-robin over the shards

    @property
    def uid(self) -> str:
        return uid_of(self.url, self.text)


def _size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None


def make_fetch(build, samples: list[Sample], shards: int = 2, tag: str = "v1",
               numbered: bool = True):
    """Write and register a fetch output holding `samples`; returns the StageResult."""
    schema = STATUS_SCHEMA if numbered else STATUS_SCHEMA.set(
        STATUS_SCHEMA.get_field_index("fetch_shard"), pa.field("fetch_shard", pa.string()))

    def work(ctx):
        out = ctx.output("fetch")
        (out / "shards").mkdir()
        (out / "status").mkdir()
        rows = []
        members: dict[int, list[tuple[str, bytes]]] = {i: [] for i in range(shards)}
        for n, s in enumerate(samples):
            row = {"uid": s.uid, "url": s.url, "text": s.text, "selected_by": s.selected_by,
                   "query_ids": s.query_ids, "status": s.status, "error": s.error,
                   "width": None, "height": None, "original_width": None,
                   "original_height": None, "bytes": None, "sha256": None,
                   "fetch_shard": None, "key": None}
            if s.status == "success":
                shard = n % shards if s.shard is None else s.shard
                key = f"{shard:05d}{len(members[shard]):04d}"
                size = _size(s.image) if s.image is not None else None
                orig = s.original_size or size
                row.update(fetch_shard=shard if numbered else f"fetch/{ctx.run_id}/shards/{shard:05d}.tar",
                           key=key, sha256=None if s.image is None else hashlib.sha256(s.image).hexdigest(),
                           width=size and size[0], height=size and size[1],
                           original_width=orig and orig[0], original_height=orig and orig[1],
                           bytes=len(s.image) if s.image is not None else None)
                meta = json.dumps({"url": s.url, "key": key, "status": "success"}).encode()
                files = [(f"{key}.txt", s.text.encode()), (f"{key}.json", meta)]
                if s.image is not None:
                    files.insert(0, (f"{key}.jpg", s.image))
                members[shard].append((key, files))
            rows.append(row)
        for shard, entries in members.items():
            with tarfile.open(out / "shards" / f"{shard:05d}.tar", "w") as tf:
                for _key, files in entries:
                    for name, data in files:
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tf.addfile(info, io.BytesIO(data))
        pq.write_table(pa.Table.from_pylist(rows, schema=schema),
                       out / "status" / "part-00000.parquet")
        return StageOutput(rows=len(rows), summary={"success": sum(
            s.status == "success" for s in samples)})
    res = run_stage(build, "fetch", {"tag": tag, "n": len(samples)}, work,
                    outputs=["fetch"], views={"samples": "fetch/status/*.parquet"})
    # Stage records carry whole-second times and the catalog orders views by them: a
    # curate finishing in the same second as this fetch would lose its `samples` view.
    time.sleep(1.05 - time.time() % 1)
    return res


def make_queries(build, queries: list[str]):
    """Register a tiny `queries` stage so SQL examples can join query text."""
    def work(ctx):
        out = ctx.output("queries")
        pq.write_table(pa.table({"query_id": pa.array(range(len(queries)), pa.int32()),
                                 "query": queries}), out / "queries.parquet")
        return StageOutput(rows=len(queries))
    return run_stage(build, "queries", {"queries": queries}, work, outputs=["queries"],
                     views={"queries": "queries/*.parquet"})


def write_selected(build: Path, urls: list[str], tag: str = "t") -> list[str]:
    """Stand in for the balance stage: selected/part-0.parquet and _stages/balance.json."""
    texts = [f"caption {i} for {u.rsplit('/', 1)[-1]}" for i, u in enumerate(urls)]
    table = pa.table({
        "uid": pa.array([uid_of(u, t) for u, t in zip(urls, texts)], pa.string()),
        "url": pa.array(urls, pa.string()), "text": pa.array(texts, pa.string()),
        "query_ids": pa.array([[i % 5, 7] for i in range(len(urls))], pa.list_(pa.int32())),
        "selected_by": pa.array([i % 5 for i in range(len(urls))], pa.int32())})

    def work(ctx):
        pq.write_table(table, ctx.output("selected") / "part-0.parquet")
        return StageOutput(rows=table.num_rows)
    run_stage(build, "balance", {"test": tag}, work, outputs=["selected"],
              views={"selected": "selected/*.parquet"})
    return table["uid"].to_pylist()
