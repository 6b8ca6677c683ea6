"""Image facts for curate, computed in Ray workers: per image its size, byte count,
sha256, the signature of its canonical view (wit_builder.canonical: 64-bit pHash,
colour thumbnail, detail) and whether it decodes.

Fetch already took the signature of the pixels it stored; where the stored bytes
still have the sha256 fetch recorded, that signature is used and the image is not
decoded again (`phash_from` = 'fetch'); any other image is decoded here
(`phash_from` = 'decoded'). Evaluation images go through the same `image_facts`.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from typing import Any

from wit_builder import storage
from wit_builder.io import open_input

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


def facts_schema():
    import pyarrow as pa
    return pa.schema([("fetch_tar", pa.string()), ("key", pa.string()),
                      ("image_format", pa.string()), ("image_offset", pa.int64()),
                      ("image_bytes", pa.int64()), ("image_sha256", pa.string()),
                      ("width", pa.int32()),
                      ("height", pa.int32()), ("phash", pa.int64()), ("thumb", pa.binary()),
                      ("detail", pa.float32()), ("phash_from", pa.string()),
                      ("decode_error", pa.string())])


def image_facts(blobs: list[bytes], known: list[tuple | None] | None = None
                ) -> dict[str, list]:
    """Facts for a batch of encoded images: image_bytes, image_sha256, width, height,
    phash, thumb, detail, phash_from, decode_error.

    `known[i]`, if given, is (sha256, pHash, thumb, detail) fetch recorded for image i:
    when the bytes still have that sha256 the signature is taken as is and the image
    is not decoded (width and height then come from fetch's row). The others are
    decoded and their canonical view's signature computed.
    """
    from wit_builder.canonical import signature_bytes
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    known = known or [None] * len(blobs)
    reuse = [k is not None and k[0] == sha for k, sha in zip(known, shas)]
    facts = [{"width": None, "height": None, "phash": k[1], "thumb": k[2], "detail": k[3],
              "error": None} if r else signature_bytes(b)
             for b, k, r in zip(blobs, known, reuse)]
    return {"image_bytes": [len(b) for b in blobs], "image_sha256": shas,
            "width": [f["width"] for f in facts], "height": [f["height"] for f in facts],
            "phash": [f["phash"] for f in facts], "thumb": [f["thumb"] for f in facts],
            "detail": [f["detail"] for f in facts],
            "phash_from": ["fetch" if r else "decoded" if f["phash"] is not None else None
                           for r, f in zip(reuse, facts)],
            "decode_error": [f["error"] for f in facts]}


def _member_key(name: str) -> tuple[str, str]:
    """WebDataset naming: 'dir/000001.jpg' -> ('dir/000001', 'jpg')."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def shard_facts(tar_path, rel: str, out, known_in: tuple[list[str], Any] | None = None,
                batch: int = 512) -> dict[str, Any]:
    """Facts of every image member of one tar, written to `out` (Parquet).

    `tar_path` and `out` are locations in the build (local or remote): the tar is read
    as a stream and the facts file is put in one piece, so any node can run this.
    `known_in` is (status files, fetch_shard) holding the sha256 and signature fetch
    recorded for this tar's images (see curate._known_hashes).
    Returns {"shard", "images"} or {"shard", "error"} for a tar that cannot be read.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    cols: dict[str, list] = {name: [] for name in facts_schema().names}
    blobs: list[bytes] = []
    known = _read_known(*known_in) if known_in else {}

    def flush() -> None:
        keys = cols["key"][len(cols["key"]) - len(blobs):]
        for name, values in image_facts(blobs, [known.get(k) for k in keys]).items():
            cols[name].extend(values)
        blobs.clear()

    seen = set()
    try:
        with open_input(tar_path) as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
            for member in tf:
                key, ext = _member_key(member.name)
                if not member.isfile() or ext not in IMAGE_EXTS or key in seen:
                    continue
                seen.add(key)
                cols["fetch_tar"].append(rel)
                cols["key"].append(key)
                cols["image_format"].append(ext)
                cols["image_offset"].append(member.offset_data)
                blobs.append(tf.extractfile(member).read())
                if len(blobs) >= batch:
                    flush()
        flush()
    except (tarfile.TarError, OSError) as e:
        return {"shard": rel, "error": f"{type(e).__name__}: {e}"}
    table = pa.table(cols, schema=facts_schema())
    fd, tmp = tempfile.mkstemp(suffix=".parquet")
    os.close(fd)
    pq.write_table(table, tmp)
    storage.upload_file(tmp, storage.location(out))  # a finished shard survives a killed run
    return {"shard": rel, "images": table.num_rows}


def eval_facts(paths: list[str], root: str) -> dict[str, list]:
    """sha256 and canonical signature (phash, thumb, detail) of evaluation image files
    (path relative to `root`): the same view of an image as every stored one gets."""
    blobs = []
    for p in paths:
        with open_input(storage.location(p, "--eval-images")) as f:
            blobs.append(f.read())
    facts = image_facts(blobs)
    root = str(root).rstrip("/")
    return {"path": [str(p)[len(root) + 1:] for p in paths], "sha256": facts["image_sha256"],
            "phash": facts["phash"], "thumb": facts["thumb"], "detail": facts["detail"],
            "decode_error": facts["decode_error"]}


def _read_known(files: list[str], fetch_shard: Any) -> dict[str, tuple]:
    """key -> (stored_sha256, stored_phash, stored_thumb, stored_detail) of one fetch
    tar's successful rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    cols = ["key", "status", "fetch_shard", "stored_sha256", "stored_phash", "stored_thumb",
            "stored_detail"]
    tables = []
    for f in files:
        with open_input(storage.location(f)) as fh:
            tables.append(pq.read_table(fh, columns=cols))
    t = pa.concat_tables(tables)
    mine = pc.and_(pc.and_(pc.equal(t["status"], "success"),
                           pc.equal(t["fetch_shard"], pa.scalar(fetch_shard, t["fetch_shard"].type))),
                   pc.is_valid(t["stored_phash"]))
    t = t.filter(mine)
    return dict(zip(t["key"].to_pylist(), zip(*(t[c].to_pylist() for c in cols[3:]))))
