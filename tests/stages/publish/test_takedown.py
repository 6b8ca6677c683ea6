"""`wit-build takedown`: samples leave the published set; only their shards change."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from tests.support.fetch import Sample, encode, make_fetch, picture
from wit_builder.app import cli
from wit_builder.build import catalog, pipeline
from wit_builder.build.stage import committed
from wit_builder.stages.curate import curate

pytestmark = pytest.mark.slow  # Ray, and a curated build to publish


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def tar_uids(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        return [json.load(tf.extractfile(m))["uid"] for m in tf.getmembers() if m.name.endswith(".json")]


@pytest.fixture
def published(build, ray_cluster):
    samples = [Sample(f"http://img{i % 3}.example.org/{i}.jpg", f"a photo of scene {i}",
                      encode(picture(500 + i, 96, 72))) for i in range(12)]
    samples.append(Sample("http://cdn.opted-out.test/x.jpg", "a photo from an opted-out site",
                          encode(picture(600, 96, 72))))
    make_fetch(build, samples, shards=2)
    curate.run(curate.Config(min_side=32), build)
    assert cli.main(["publish", "--out", str(build), "--shard-size", "4", "--seed", "1"]) == 0
    return build


def test_takedown_rewrites_exactly_the_shards_that_held_the_samples(published, tmp_path, capsys):
    build = published
    shards = committed(build, "publish", "shards")
    before = digests(shards)
    manifest = catalog.query(build, "SELECT uid, shard FROM shards ORDER BY shard, key").to_pylist()
    by_shard: dict[str, list[str]] = {}
    for r in manifest:
        by_shard.setdefault(r["shard"].rsplit("/", 1)[-1], []).append(r["uid"])
    names = sorted(by_shard)
    victims = [by_shard[names[0]][0], by_shard[names[0]][2], by_shard[names[-1]][0]]
    uids = tmp_path / "uids.txt"
    uids.write_text("\n".join(victims) + "\n")
    assert cli.main(["takedown", "--out", str(build), "--uids", str(uids), "--reason", "owner asked"]) == 0
    assert "removed 3 samples from 2 shard(s)" in capsys.readouterr().out
    after = digests(shards)
    changed = {n for n in before if before[n] != after.get(n)}
    beside = {n.replace(".tar", ext) for n in (names[0], names[-1]) for ext in (".parquet", "_stats.json")}
    assert changed == {names[0], names[-1], "sizes.json"} | beside   # the others byte for byte
    sizes = json.loads((shards / "sizes.json").read_text())
    tars = sorted(shards.glob("*.tar"))
    assert sizes == {t.name: len(tar_uids(t)) for t in tars}
    import pyarrow.parquet as pq  # img2dataset's per-shard files agree with the rewritten tars
    for t in tars:
        table = pq.read_table(t.with_suffix(".parquet"))
        assert sorted(table.column("uid").to_pylist()) == sorted(tar_uids(t)), t.name
        stats = json.loads(t.with_name(t.stem + "_stats.json").read_text())
        assert stats["successes"] == len(tar_uids(t)), t.name
    left = catalog.query(build, "SELECT uid FROM shards").column("uid").to_pylist()
    assert sorted(left) == sorted(u for u in (r["uid"] for r in manifest) if u not in victims)
    # webdataset reads back exactly the manifest
    import webdataset as wds
    read = [json.loads(s["json"])["uid"] for s in wds.WebDataset([str(t) for t in tars], shardshuffle=False)]
    assert sorted(read) == sorted(left) and sum(sizes.values()) == len(left)
    log = catalog.query(build, "SELECT uid, reason, matched_by, removed_at FROM takedowns").to_pylist()
    assert sorted(r["uid"] for r in log) == sorted(victims)
    assert {r["reason"] for r in log} == {"owner asked"} and {r["matched_by"] for r in log} == {"uid"}
    assert all(r["removed_at"] for r in log)
    rec = json.loads((build / "_stages" / "publish.json").read_text())
    assert rec["rows"] == len(left) and rec["summary"]["taken_down"] == 3
    # the same takedown again: nothing to do, nothing changes
    snapshot = {p: p.read_bytes() for p in build.rglob("*") if p.is_file() and "catalog" not in p.name}
    assert cli.main(["takedown", "--out", str(build), "--uids", str(uids)]) == 0
    assert "nothing to remove" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in build.rglob("*") if p.is_file() and "catalog" not in p.name} == snapshot


def test_takedown_by_domain_and_a_later_publish_leaves_them_out(published, tmp_path, capsys):
    build = published
    domains = tmp_path / "domains.txt"
    domains.write_text("opted-out.test\n")
    urls = tmp_path / "urls.txt"
    urls.write_text("http://img0.example.org/3.jpg\n")
    assert cli.main(["takedown", "--out", str(build), "--domains", str(domains), "--urls", str(urls)]) == 0
    log = {r["url"]: r["matched_by"] for r in catalog.query(build, "SELECT url, matched_by FROM takedowns").to_pylist()}
    assert log == {"http://cdn.opted-out.test/x.jpg": "domain", "http://img0.example.org/3.jpg": "url"}
    pipeline.run_stages(build, {"publish": {"shard_size": 4, "seed": 1}}, ["publish"], force=True)
    urls_left = catalog.query(build, "SELECT url FROM shards").column("url").to_pylist()
    assert len(urls_left) == 11 and not set(log) & set(urls_left)
    assert cli.main(["takedown", "--out", str(build)]) == 2
    assert "--uids FILE" in capsys.readouterr().err
