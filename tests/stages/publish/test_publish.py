"""Publish: final WebDataset shards that webdataset, datasets and Ray Data read back."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.support.fetch import Sample, encode, make_fetch, picture
from tests.support.publish import FOX_URL, SHARD_SIZE, make_published
from wit_builder import storage
from wit_builder.app import cli
from wit_builder.build import catalog, pipeline
from wit_builder.build.stage import committed
from wit_builder.errors import WitError
from wit_builder.stages.publish import publish

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytestmark = pytest.mark.slow  # Ray, and a curated build to publish
REPO = Path(__file__).resolve().parents[3]


def kept_rows(build: Path) -> dict[str, dict]:
    return {r["uid"]: r for r in pq.read_table(committed(build, "curate")).to_pylist() if r["keep"]}


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} for one tar."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


def file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def expected_meta(src: dict, key: str) -> dict:
    """What the sample's .json holds: img2dataset's fields, then wit's."""
    return {"url": src["url"], "caption": src["text"], "key": key, "status": "success",
            "error_message": None, "width": src["width"], "height": src["height"],
            "original_width": src["original_width"], "original_height": src["original_height"],
            "sha256": src["sha256"], "uid": src["uid"],
            "source_uid": "laion-123" if src["url"] == FOX_URL else "",
            "selected_by": src["selected_by"], "query_ids": src["query_ids"],
            "query": ["fox", "snow", "meadow"][src["selected_by"]]}


@pytest.fixture(scope="module")
def pub(tmp_path_factory, ray_cluster):
    return make_published(tmp_path_factory.mktemp("publish") / "wit-data")


def test_sizes_manifest_and_tars_agree(pub):
    kept = kept_rows(pub)
    assert len(kept) == 15  # 18 selected: one exact copy, one undecodable, one failed
    sizes = json.loads((committed(pub, "publish", "shards") / "sizes.json").read_text())
    tars = sorted((committed(pub, "publish", "shards")).glob("*.tar"))
    assert sorted(p.name for p in committed(pub, "publish", "shards").iterdir()) == sorted(
        ["sizes.json"] + [f"0000{i}{ext}" for i in range(4) for ext in (".tar", ".parquet", "_stats.json")])
    assert list(sizes) == [t.name for t in tars] == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]
    assert list(sizes.values()) == [4, 4, 4, 3]
    manifest = pq.read_table(committed(pub, "publish", "manifest")).to_pylist()
    assert sum(sizes.values()) == len(manifest) == len(kept)
    seen: Counter = Counter()
    for tar in tars:
        members = tar_samples(tar)
        assert len(members) == sizes[tar.name]
        for key, files in members.items():
            meta = json.loads(files["json"])
            seen[meta["uid"]] += 1
            row = next(m for m in manifest if m["uid"] == meta["uid"])
            assert (row["shard"], row["key"]) == (storage.rel(storage.location(pub), tar), key)
            src = kept[meta["uid"]]
            image = files[src["image_format"]]
            assert hashlib.sha256(image).hexdigest() == src["image_sha256"]
            assert files["txt"].decode() == src["text"]
            assert meta == expected_meta(src, key)
    assert seen == Counter(list(kept))  # every kept uid in exactly one shard
    assert {m["uid"]: (m["url"], m["text"], m["selected_by"]) for m in manifest} == {
        u: (r["url"], r["text"], r["selected_by"]) for u, r in kept.items()}
    n = catalog.query(pub, "SELECT count(*) AS n, count(DISTINCT key) AS keys FROM shards").to_pylist()
    assert n == [{"n": 15, "keys": 15}]


def test_side_files_are_img2dataset_s_and_datacomp_reads_the_uids(pub):
    """NNNNN.parquet holds the .json of each sample in tar order; NNNNN_stats.json has
    img2dataset's keys; the uids parse as DataComp's resharder parses them (two u64)."""
    import pandas as pd
    folder = committed(pub, "publish", "shards")
    sizes = json.loads((folder / "sizes.json").read_text())
    frames = []
    for tar in sorted(folder.glob("*.tar")):
        metas = [json.loads(files["json"]) for files in tar_samples(tar).values()]
        assert pq.read_table(tar.with_suffix(".parquet")).to_pylist() == metas
        df = pd.read_parquet(tar.with_suffix(".parquet"))  # as img2dataset users read them
        stats = json.loads((folder / f"{tar.stem}_stats.json").read_text())
        assert set(stats) == {"count", "successes", "failed_to_download", "failed_to_resize",
                              "duration", "start_time", "end_time", "status_dict"}
        assert stats["count"] == stats["successes"] == sizes[tar.name] == len(df)
        assert stats["status_dict"] == {"success": len(df)}
        frames.append(df)
    df = pd.concat(frames)
    assert set(df["uid"]) == set(kept_rows(pub)) and (df["status"] == "success").all()
    assert df.columns.tolist()[:10] == ["url", "caption", "key", "status", "error_message", "width",
                                        "height", "original_width", "original_height", "sha256"]
    # datacomp/resharder.py: np.array((int(uid[:16], 16), int(uid[16:32], 16)), np.dtype("u8,u8"))
    uids = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in df["uid"]], np.dtype("u8,u8"))
    assert all(len(u) == 32 for u in df["uid"]) and len(np.unique(uids)) == len(df)
    fox = df[df["url"] == FOX_URL].iloc[0]
    assert (fox["source_uid"], fox["query"]) == ("laion-123", "snow")
    assert (fox["width"], fox["height"], fox["original_width"], fox["original_height"]) == (400, 300, 400, 300)


def test_order_is_the_seeded_shuffle_across_the_build(pub):
    manifest = pq.read_table(committed(pub, "publish", "manifest")).to_pylist()
    order = [m["uid"] for m in manifest]

    def rank(uid: str, seed: int) -> tuple[int, str]:
        return int.from_bytes(hashlib.md5(f"{seed}:{uid}".encode()).digest(), "little"), uid
    assert order == sorted(order, key=lambda u: rank(u, 7))
    assert order != sorted(order)  # not uid order
    first = {kept_rows(pub)[m["uid"]]["fetch_tar"] for m in manifest[:SHARD_SIZE]}
    assert len(first) > 1  # one final shard mixes fetch shards


def test_shards_read_back_with_webdataset(pub):
    import webdataset as wds
    tars = [str(t) for t in sorted((committed(pub, "publish", "shards")).glob("*.tar"))]
    got = list(wds.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "txt", "json"))
    kept = kept_rows(pub)
    assert len(got) == len(kept)
    for key, image, text, meta in got:
        assert image.size == (kept[meta["uid"]]["width"], kept[meta["uid"]]["height"])
        assert text == kept[meta["uid"]]["text"] and meta["key"] == key


def test_shards_read_back_with_datasets(pub, tmp_path):
    import datasets
    ds = datasets.load_dataset("webdataset", data_files={"train": str(committed(pub, "publish", "shards") / "*.tar")},
                               split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == len(kept_rows(pub))
    assert {"__key__", "jpg", "txt", "json"} <= set(ds.column_names)
    uids = {row["json"]["uid"] for row in ds}
    assert uids == set(kept_rows(pub))
    meadow = [row for row in ds if row["txt"] == "a lossless picture of a meadow"]
    assert len(meadow) == 1 and meadow[0]["jpg"].size == (500, 300)


def test_shards_read_back_with_ray_data(pub):
    import ray
    ds = ray.data.read_webdataset(str(committed(pub, "publish", "shards")), file_extensions=["tar"])  # as the docs show
    rows = ds.take_all()
    assert len(rows) == len(kept_rows(pub))
    uids = {json.loads(r["json"])["uid"] if isinstance(r["json"], (bytes, str)) else r["json"]["uid"]
            for r in rows}
    assert uids == set(kept_rows(pub))


def test_rerun_is_byte_identical_and_seed_changes_only_the_order(pub, tmp_path):
    before = file_digests(committed(pub, "publish", "shards"))
    again = publish.run(publish.Config(shard_size=SHARD_SIZE, seed=7), pub, force=True)
    assert not again.skipped and file_digests(committed(pub, "publish", "shards")) == before
    copy = Path(shutil.copytree(pub, tmp_path / "copy"))
    publish.run(publish.Config(shard_size=SHARD_SIZE, seed=8), copy)
    a = [m["uid"] for m in pq.read_table(committed(pub, "publish", "manifest")).to_pylist()]
    b = [m["uid"] for m in pq.read_table(committed(copy, "publish", "manifest")).to_pylist()]
    assert sorted(a) == sorted(b) and a != b


def test_a_changed_fetch_shard_is_refused_and_publish_resumes(pub, tmp_path):
    build = Path(shutil.copytree(pub, tmp_path / "copy"))
    row = pq.read_table(committed(build, "publish", "manifest")).to_pylist()[-1]  # in the last final shard
    src = kept_rows(build)[row["uid"]]
    tar = build / src["fetch_tar"]
    original = tar.read_bytes()
    with open(tar, "r+b") as f:
        f.seek(src["image_offset"] + 100)
        f.write(b"\0" * 16)
    with pytest.raises(WitError, match=f"uid {row['uid']} .* no longer matches"):
        publish.run(publish.Config(shard_size=SHARD_SIZE, seed=7), build, force=True)
    finished = {p.name: p.stat().st_ino for p in (build / "_work").glob("publish-*/shards/*.tar")}
    assert finished == {k: v for k, v in finished.items() if k != "00003.tar"} and len(finished) == 3
    tar.write_bytes(original)
    publish.run(publish.Config(shard_size=SHARD_SIZE, seed=7), build, force=True)
    assert {n: (committed(build, "publish", "shards") / n).stat().st_ino for n in finished} == finished  # reused
    assert file_digests(committed(build, "publish", "shards")) == file_digests(committed(pub, "publish", "shards"))
    assert not list((build / "_work").glob("publish-*"))


def test_nothing_kept_gives_empty_shards_and_manifest(build, ray_cluster):
    make_fetch(build, [Sample("http://x/a", "a", encode(picture(1)))], shards=1)
    pipeline.run_stages(build, {"curate": {}, "publish": {"shard_size": 2}}, ["curate", "publish"])
    assert json.loads((committed(build, "publish", "shards") / "sizes.json").read_text()) == {}
    assert not list((committed(build, "publish", "shards")).glob("*.tar"))
    assert catalog.query(build, "SELECT count(*) AS n FROM shards").to_pylist() == [{"n": 0}]
    again = pipeline.run_stages(build, {"curate": {}, "publish": {"shard_size": 2}},
                                ["curate", "publish"])
    assert [r.skipped for r in again] == [True, True]


def test_download_takes_the_curate_and_publish_flags(capsys):
    args = cli.build_parser().parse_args(
        ["download", "--shard-size", "5", "--seed", "3", "--near-dup-bits", "2",
         "--min-side", "64", "--eval-images", "evals"])
    assert (args.shard_size, args.seed, args.near_dup_bits, args.min_side, args.eval_images) == (
        5, 3, 2, 64, "evals")
    assert pipeline.DOWNLOAD[-2:] == ["curate", "publish"]
    assert cli.main(["publish", "--shard-size", "0", "--out", "nowhere"]) == 2
    assert "--shard-size 0" in capsys.readouterr().err


MARKER = "<!-- sql-examples-publish -->"


@pytest.mark.parametrize("doc", [d for d in (REPO / "docs" / "curate.md", REPO / "README.md")
                                 if MARKER in d.read_text()], ids=lambda d: d.name)
def test_publish_sql_examples_work_as_written(pub, doc, capsys):
    block = doc.read_text().split(MARKER, 1)[1].split("```", 2)[1]
    examples = [shlex.split(line) for line in block.splitlines() if line.startswith("wit-build sql")]
    assert len(examples) == 2
    outputs = []
    for argv in examples:
        assert cli.main(argv[1:] + ["--out", str(pub)]) == 0, argv
        outputs.append(capsys.readouterr().out)
    fox = next(m for m in pq.read_table(committed(pub, "publish", "manifest")).to_pylist() if m["url"] == FOX_URL)
    assert fox["shard"] in outputs[0] and fox["key"] in outputs[0]
    assert f"{storage.rel(storage.location(pub), committed(pub, 'publish', 'shards'))}/00003.tar" in outputs[1]
    assert "(4 rows)" in outputs[1]


def test_download_sets_a_shared_setting_per_stage_only_when_asked():
    """--seed sets balance's and publish's seeds alike (its help says so); --balance-seed
    and --publish-seed set one each; pool's and balance's memory limits likewise."""
    stages = ["pool", "balance", "publish"]
    parse = cli.build_parser().parse_args
    both = cli.download_settings(parse(["download", "--seed", "3"]), stages)
    assert both["balance"]["seed"] == both["publish"]["seed"] == 3
    one = cli.download_settings(parse(["download", "--seed", "3", "--balance-seed", "7",
                                       "--pool-memory-limit", "2GB"]), stages)
    assert (one["balance"]["seed"], one["publish"]["seed"]) == (7, 3)
    assert one["pool"]["memory_limit"] == "2GB" and "memory_limit" not in one["balance"]
    text = cli.build_parser()._subparsers._group_actions[0].choices["download"].format_help()
    flat = " ".join(text.split())
    assert "sets seed for each of balance, publish" in flat
    assert "the pool's dedup of pairs" in flat and "counting and selecting the pairs" in flat
