"""Per-core rates of the image-heavy task bodies, for docs/scale.md's projection.

Writes one fetch-style tar of N stored images (256 px JPEG q95, drawn scenes, as fetch
stores them) and times, in this one process on one core:

- curate's facts of that tar (`imagefacts.shard_facts`), once reusing the signatures
  fetch recorded (its normal path) and once decoding every image (shards from elsewhere);
- publish's writing of a final shard from it (`publish.write_shard`: read by offset,
  sha256 check, tar).

Each is the best of --repeat runs, in images per CPU-second.

    .venv/bin/python benchmarks/bench_rates.py [--images 5000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wit_builder import storage
from wit_builder.demo import drawing, imageserver
from wit_builder.stages.curate.imagefacts import shard_facts
from wit_builder.stages.publish import publish


def make_tar(folder: Path, n: int) -> tuple[Path, Path, list[dict]]:
    """fetch/shards/00000.tar, a status file with fetch's hashes, and curate-style rows."""
    from wit_builder.canonical import signature_bytes
    scenes = [f"{1 + i % 3}-{list(drawing.COLORS)[i % 10]}-"
              f"{'circle star square heart'.split()[i % 4]}-{drawing.TEXTURES[i % 4]}-"
              f"{list(drawing.BACKGROUNDS)[i % 7]}-{i}" for i in range(n)]
    tar_path = folder / "fetch" / "shards" / "00000.tar"
    tar_path.parent.mkdir(parents=True)
    rows, status = [], []
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i, spec in enumerate(scenes):
            data = imageserver.render(spec, px=256, quality=95)
            key = f"{i:09d}"
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            sha = hashlib.sha256(data).hexdigest()
            rows.append({"uid": f"{i:016x}", "url": f"http://x/{i}", "text": f"a picture {i}",
                         "selected_by": 0, "query_ids": [0], "width": 256, "height": 256,
                         "sha256": sha, "image_sha256": sha, "fetch_tar": "fetch/shards/00000.tar",
                         "image_offset": None, "image_bytes": len(data),
                         "image_format": "jpg", "key": key})
            sig = signature_bytes(data)  # what fetch records of the pixels it stores
            status.append({"key": key, "status": "success", "fetch_shard": 0,
                           "stored_sha256": sha, "stored_phash": sig["phash"],
                           "stored_thumb": sig["thumb"], "stored_detail": sig["detail"]})
    with tarfile.open(tar_path) as tf:  # where each image's bytes start
        offsets = {m.name.split(".")[0]: m.offset_data for m in tf}
    for r in rows:
        r["image_offset"] = offsets[r["key"]]
    status_path = folder / "status.parquet"
    pq.write_table(pa.Table.from_pylist(status), status_path)
    return tar_path, status_path, rows


def _checked(result: dict) -> dict:
    if "error" in result:
        raise RuntimeError(f"publish failed: {result['error']}")
    return result


def cpu_time(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rates-") as tmp:
        root = Path(tmp)
        tar_path, status_path, rows = make_tar(root, a.images)
        mb = tar_path.stat().st_size / 1e6
        table = pa.Table.from_pylist(rows)
        build = storage.location(root)
        runs = {
            "curate facts, reusing fetch's signatures": lambda: shard_facts(
                str(tar_path), "fetch/shards/00000.tar", root / "facts.parquet",
                ([str(status_path)], 0)),
            "curate facts, decoding every image": lambda: shard_facts(
                str(tar_path), "fetch/shards/00000.tar", root / "facts.parquet"),
            "publish, one final shard": lambda: _checked(publish.write_shard(
                build, table, build / "out" / "00000.tar")),
        }
        print(f"{a.images:,} images, {mb:.1f} MB tar ({1e3 * mb / a.images:.1f} KB per image)")
        for name, fn in runs.items():
            best = min(cpu_time(fn) for _ in range(a.repeat))
            print(f"{name:40s} {a.images / best:10,.0f} images per CPU-second "
                  f"({1e6 * best / a.images:.0f} us per image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
