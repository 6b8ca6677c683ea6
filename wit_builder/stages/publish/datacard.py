"""`wit-build export hf DIR`: the published shards as a Hugging Face datasets folder.

DIR/train/NNNNN.tar are the published shards (hard links where DIR is on the build's
disk, else copies) and DIR/README.md is the dataset card: YAML front matter that
`datasets.load_dataset(DIR)` and the Hub's viewer read (`configs` pointing at
train/*.tar, `dataset_info` features and split size, `size_categories`, a `license`
left for the user to fill) and the build's facts, all from the build's records and
catalog: query sources and counts, pairs per query before and after balancing, drop
reasons, dedup figures, and each stage's settings with paths and URLs left out.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from wit_builder import storage
from wit_builder.build import catalog, records
from wit_builder.errors import WitError
from wit_builder.stages.publish.publish import published

# (name, dtype) of each sample's .json (wit_builder.stages.publish.shardmeta.FIELDS), in order
JSON_FEATURES = [("url", "string"), ("caption", "string"), ("key", "string"), ("status", "string"),
                 ("error_message", "string"), ("width", "int32"), ("height", "int32"),
                 ("original_width", "int32"), ("original_height", "int32"), ("sha256", "string"),
                 ("uid", "string"), ("source_uid", "string"), ("selected_by", "int32"),
                 ("query_ids", ["int32"]), ("query", "string")]
SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
         (10_000_000_000, "1B<n<10B")]


def size_category(n: int) -> str:
    return next((label for bound, label in SIZES if n < bound), "n>1T")


def _rows(build, sql: str) -> list[dict[str, Any]]:
    """The query's rows, or none where this build lacks the views or columns it needs."""
    try:
        return catalog.query(build, sql).to_pylist()
    except WitError:
        return []


def facts(build) -> dict[str, Any]:
    """What the card reports, from the stage records and the catalog."""
    recs = {r["stage"]: r for r in records.records(build)}
    summary = {name: rec.get("summary") or {} for name, rec in recs.items()}
    out: dict[str, Any] = {
        "queries": _rows(build, "SELECT count(*) AS queries FROM queries"),
        "sources": _rows(build, "SELECT source, count(*) AS queries FROM (SELECT unnest(sources) "
                                "AS source FROM queries) GROUP BY ALL ORDER BY queries DESC, source"),
        "drop_reasons": _rows(build, "SELECT coalesce(drop_reason, 'kept') AS outcome, count(*) AS "
                                     "samples FROM samples GROUP BY ALL ORDER BY samples DESC, outcome"),
        "image_formats": [r["image_format"] for r in _rows(
            build, "SELECT DISTINCT image_format FROM samples WHERE keep ORDER BY 1")],
        "balance": {k: summary.get("balance", {}).get(k) for k in (
            "mode", "per_query", "pairs_matched", "pairs_selected", "per_query_before",
            "per_query_after") if k in summary.get("balance", {})},
        "pool_duplicates": summary.get("pool", {}).get("duplicates"),
        "settings": {name: _link_free(rec.get("params") or {}) for name, rec in recs.items()},
    }
    return out


def _link_free(params: dict[str, Any]) -> dict[str, Any]:
    """A stage's parameters without paths and URLs (a card says how, not where)."""
    def is_place(v) -> bool:
        if isinstance(v, (list, tuple)):
            return any(is_place(x) for x in v)
        return isinstance(v, str) and ("/" in v or "\\" in v or "://" in v)
    return {k: v for k, v in sorted(params.items()) if not is_place(v)}


def _features_yaml(image_exts: list[str], with_source_uid: bool) -> list[str]:
    lines = ["  features:", "  - name: __key__", "    dtype: string", "  - name: __url__",
             "    dtype: string"]
    for ext in image_exts:
        lines += [f"  - name: {ext}", "    dtype: image"]
    lines += ["  - name: txt", "    dtype: string", "  - name: json", "    struct:"]
    for name, dtype in JSON_FEATURES:
        if name == "source_uid" and not with_source_uid:
            continue
        if isinstance(dtype, list):
            lines += [f"    - name: {name}", f"      list: {dtype[0]}"]
        else:
            lines += [f"    - name: {name}", f"      dtype: {dtype}"]
    return lines


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(not in this build)"]
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols) + " |"
            for r in rows]
    return out


def card(build, sizes: dict[str, int], with_source_uid: bool) -> str:
    """README.md: YAML front matter, then the build's facts."""
    f = facts(build)
    n = sum(sizes.values())
    exts = f["image_formats"] or ["jpg"]
    yaml = ["---", "license: unknown  # fill in the licence of your images and captions",
            "task_categories:", "- zero-shot-image-classification", "- image-to-text",
            "- text-to-image", "size_categories:", f"- {size_category(n)}", "configs:",
            "- config_name: default", "  data_files:", "  - split: train", "    path: train/*.tar",
            "dataset_info:", *_features_yaml(exts, with_source_uid), "  splits:",
            "  - name: train", f"    num_examples: {n}", "---"]
    b = f["balance"]
    body = [
        "", "# A wit build", "",
        f"{n:,} image-text pairs in {len(sizes)} WebDataset shards (`train/`), built by wit: "
        "queries -> pool -> match -> balance -> fetch -> curate -> publish. Each sample is "
        f"`KEY.{exts[0]}` (the image as fetched), `KEY.txt` (the caption) and `KEY.json` "
        "(img2dataset's fields: url, caption, key, status, width, height, original size, "
        "sha256; and wit's: uid — 128 bits, as DataComp's — "
        + ("source_uid, " if with_source_uid else "") + "selected_by, query_ids, query).",
        "", "```python", "import datasets", 'ds = datasets.load_dataset("DIR", split="train")',
        "```", "", "## Queries", "", *_table(f["queries"]), "", "By source:", "",
        *_table(f["sources"]), "", "## Balancing", "",
    ]
    if b:
        body += [f"Mode `{b.get('mode')}`, at most {b.get('per_query'):,} pairs per query: "
                 f"{b.get('pairs_matched', 0):,} matched pairs, {b.get('pairs_selected', 0):,} selected.",
                 "", "| pairs per query | max | median | p99 | queries over the cap |", "|---|---|---|---|---|"]
        for label, key in (("before balancing", "per_query_before"), ("after balancing", "per_query_after")):
            d = b.get(key) or {}
            body.append(f"| {label} | {d.get('max', 0):,} | {d.get('median', 0):,} | "
                        f"{d.get('p99', 0):,} | {d.get('over_cap', 0):,} |")
    else:
        body.append("(not in this build)")
    dups = {r["outcome"]: r["samples"] for r in f["drop_reasons"]}
    body += ["", "## What curation dropped", "", *_table(f["drop_reasons"]), "", "## Deduplication", "",
             f"- exact (url, caption) duplicates removed from the pool: "
             f"{f['pool_duplicates'] if f['pool_duplicates'] is not None else 'not in this build'}",
             f"- exact image duplicates (same bytes) dropped: {dups.get('exact_duplicate', 0):,}",
             f"- near duplicates (pHash and colour) dropped: {dups.get('near_duplicate', 0):,}",
             f"- copies of evaluation images dropped: {dups.get('eval_set', 0):,}",
             "", "## Settings", "", "Each stage's parameters (paths and URLs left out):", ""]
    for name, params in f["settings"].items():
        body.append(f"- **{name}**: " + (", ".join(f"`{k}` = {json.dumps(v)}" for k, v in params.items())
                                         or "(defaults)"))
    return "\n".join(yaml + body) + "\n"


def _place(src, dest: Path) -> None:
    """dest: a hard link to the local file src where the disk allows, else a copy."""
    if storage.is_remote(src):
        storage.download_file(src, dest)
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def export_hf(build, out) -> Path:
    """Write DIR/train/*.tar and DIR/README.md; returns DIR."""
    import pyarrow.parquet as pq
    build = storage.location(build)
    folder, sizes = published(build)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WitError(f"{out}: exists and is not an empty folder; give a new DIR")
    (out / "train").mkdir(parents=True, exist_ok=True)
    with_source_uid = False
    for name in sorted(sizes):
        _place(folder / name, out / "train" / name)
        side = folder / (name[:-4] + ".parquet")
        if not with_source_uid and side.exists():
            with side.open("rb") as fh:
                col = pq.read_table(fh, columns=["source_uid"]).column(0)
            with_source_uid = col.null_count < len(col)
    (out / "README.md").write_text(card(build, sizes, with_source_uid))
    return out
