"""fetch -> curate -> publish -> wit-train with the build in object storage (moto's real S3
server on loopback), against the same work on local disk; kills mid-stage on S3."""
from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.support.fetch import write_selected
from trainer.train import TrainConfig, train
from wit_builder import storage
from wit_builder.app import cli
from wit_builder.build import catalog, pipeline
from wit_builder.build.stage import committed, read_record
from wit_builder.demo import imageserver

SCENES = [f"1-{c}-{t}-plain-white-{i}" for i, (c, t) in enumerate(
    (c, t) for c in ("red", "blue", "green", "black") for t in ("circle", "star", "square", "heart"))]
FETCH = dict(image_size=32, timeout=5.0, retries=0, threads=4, fetch_shard_size=5,
             shards_in_flight=2, allow_private_network=True, per_host_rps=0, host_give_up_after=0)
SETTINGS = {"fetch": FETCH, "curate": {"min_side": 16}, "publish": {"shard_size": 4, "seed": 3}}


def shard_digests(build) -> dict[str, str]:
    """sha256 of every published shard, by name."""
    out = {}
    for tar in committed(build, "publish", "shards").glob("*.tar"):
        out[tar.name] = hashlib.sha256(tar.read_bytes()).hexdigest()
    return out


def status_uids(build) -> Counter:
    folder = committed(build, "fetch") / "status"
    uids: Counter = Counter()
    for f in folder.glob("*.parquet"):
        with f.open("rb") as fh:
            uids.update(pq.read_table(fh)["uid"].to_pylist())
    return uids


@pytest.fixture(scope="module")
def served():
    with imageserver.serve() as srv:
        yield srv


def urls_of(srv, n=len(SCENES)):
    return [srv.url(f"/img/{SCENES[i % len(SCENES)]}@{48 + i}.jpg") for i in range(n)]


@pytest.mark.slow
def test_s3_build_equals_the_local_build_and_trains(s3_build, build, served, ray_cluster, tmp_path):
    urls = urls_of(served)
    results = {}
    for where in (build, s3_build):
        uids = write_selected(where, urls)
        pipeline.run_stages(where, SETTINGS, ["fetch", "curate", "publish"])
        results[str(where)] = uids
    local, remote = storage.location(build), storage.location(s3_build)
    assert results[str(local)] == results[s3_build]
    assert status_uids(remote) == Counter(results[s3_build])
    assert shard_digests(remote) == shard_digests(local) and shard_digests(local)
    q = "SELECT uid, keep, drop_reason FROM samples ORDER BY uid"
    assert catalog.query(s3_build, q).to_pylist() == catalog.query(build, q).to_pylist()
    # everything the record names is in the bucket; nothing else is left under the outputs
    for stage_name in ("fetch", "curate", "publish"):
        rec = read_record(remote, stage_name)
        for rel in rec["outputs"].values():
            assert (remote / rel).exists()
            assert [p.name for p in (remote / rel.split("/")[0]).iterdir()] == [rec["run_id"]]
    assert not (remote / "_work").exists() or not list((remote / "_work").iterdir())
    # a rerun skips every stage
    again = pipeline.run_stages(s3_build, SETTINGS, ["fetch", "curate", "publish"])
    assert all(r.skipped for r in again)
    # the data card of the bucket's build lands in the bucket
    assert cli.main(["stats", "--out", s3_build]) == 0
    assert cli.main(["report", "--out", s3_build]) == 0
    page = (remote / "reports" / "index.html").read_text()
    assert "wit data card" in page and s3_build in page
    assert (remote / "reports" / "facts.json").exists()
    # wit-train reads the s3 build and writes its run to s3, then resumes from there
    out = s3_build.rsplit("/", 1)[0] + "/train"
    cfg = dict(data=[s3_build], out=out, model="tiny", image_size=32, batch_size=4, steps=4,
               warmup=1, workers=0, threads=1, log_every=1, checkpoint_every=2, shuffle_buffer=4,
               progress=False, stop_after=2)
    first = train(TrainConfig(**cfg))
    assert first["steps"] == 2 and first["checkpoint"] == out + "/checkpoint.pt"
    assert storage.location(out + "/checkpoint.pt").exists()
    assert first["samples_in_shards"] == sum(1 for r in catalog.query(
        s3_build, "SELECT uid FROM samples WHERE keep").to_pylist())
    import shutil
    shutil.rmtree(storage.cache_dir("train"))  # resume as if on another machine
    second = train(TrainConfig(**{**cfg, "resume": "auto", "stop_after": 0}))
    assert second["steps"] == 4
    log = storage.location(out + "/log.jsonl").read_text().splitlines()
    assert [int(__import__("json").loads(l)["step"]) for l in log] == [1, 2, 3, 4]


def _wait_for(path_glob_fn, proc, want: int, what: str, limit: float = 120):
    deadline = time.monotonic() + limit
    while len(path_glob_fn()) < want:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, f"{what} did not happen in time"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigkill_mid_fetch_and_mid_curate_on_s3(s3_build, served, ray_cluster):
    import ray
    urls = [served.url(f"/slow/0.3/img/{SCENES[i % len(SCENES)]}@{40 + i}.jpg") for i in range(30)]
    uids = write_selected(s3_build, urls)
    build = storage.location(s3_build)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    base = [sys.executable, "-m", "wit_builder.app.cli"]
    fetch_cmd = base + ["fetch", "--out", s3_build, "--allow-private-network",
                        "--fetch-shard-size", "3", "--shards-in-flight", "1", "--threads", "1",
                        "--image-size", "32", "--timeout", "5", "--per-host-rps", "0"]
    proc = subprocess.Popen(fetch_cmd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = lambda: list(build.glob("_work/fetch-*/done/*/summary.json"))  # noqa: E731
    _wait_for(done, proc, 2, "two fetch shards")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert read_record(build, "fetch") is None
    finished = len(done())
    assert 2 <= finished < 10
    rerun = subprocess.run(fetch_cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"shards_resumed: {finished}" in rerun.stdout
    assert status_uids(build) == Counter(uids)  # every selected uid exactly once

    # a large evaluation set keeps curate busy after its shard facts are written
    evals = build.parent / "eval"
    rng = np.random.default_rng(0)
    for i in range(1500):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, "PNG")
        (evals / f"{i:05d}.png").write_bytes(buf.getvalue())
    curate_cmd = base + ["curate", "--out", s3_build, "--min-side", "16", "--eval-images", str(evals)]
    proc = subprocess.Popen(curate_cmd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    facts = lambda: list(build.glob("_work/curate-*/facts/*.parquet"))  # noqa: E731
    _wait_for(facts, proc, 2, "two curate facts files")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert read_record(build, "curate") is None
    kept_facts = {str(p) for p in facts()}
    rerun = subprocess.run(curate_cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = catalog.query(s3_build, "SELECT uid FROM samples").to_pylist()
    assert Counter(r["uid"] for r in rows) == Counter(uids)
    assert kept_facts  # the facts files of the killed run were reused, not redone
    assert cli.main(["sql", "SELECT count(*) AS n FROM samples", "--out", s3_build]) == 0
