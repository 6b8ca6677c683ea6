"""A two-node Ray cluster whose nodes share no files, on one machine.

The head is started with no CPUs, so every task runs on the second node, which lives in
its own mount namespace with a tmpfs over the test session's temporary folders and
~/.cache: it sees none of the driver's files (the world, the builds, the local caches). The build and every input are in S3
(moto's server on loopback). The whole pipeline must complete and equal a single-node
local build of the same world, byte for byte in its published shards.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wit_builder import storage
from wit_builder.build import catalog
from wit_builder.build.stage import committed
from wit_builder.demo import imageserver
from wit_builder.demo.world import make_world, write_pool

BIN = Path(sys.executable).parent
STAGE_TASKS = {"queries": {"count_chunk"}, "pool": {"read_file"}, "match": {"match_unit"},
               "balance": {"candidates"}, "fetch": {"fetch_shard"},
               "curate": {"shard_facts", "eval_facts"}, "publish": {"write_shard"}}


def _unshare_permitted() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _free_port() -> int:
    from tests.support.s3 import free_port
    return free_port()


def _run(argv, env, timeout=600):
    out = subprocess.run([str(BIN / "wit-build"), *argv], env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"{argv[0]}: {out.stderr[-3000:]}"
    return out.stdout


def _kill(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def two_nodes(s3_server, tmp_path_factory):
    """(address, head node id, worker node id) of a head with 0 CPUs and a 2-CPU node in
    its own mount namespace."""
    if not _unshare_permitted():
        pytest.skip("unshare -m is not permitted here (needs root or user namespaces)")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--port", str(port),
                             "--num-cpus", "0", "--include-dashboard=false",
                             "--temp-dir", f"/tmp/wit-ray-{port}", *common],
                            env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the folders that hold the driver's world, builds and caches (every test's tmp_path
    # is under the base temp), not the code: a checkout may itself live under /tmp
    hidden = tmp_path_factory.getbasetemp()
    hide = f"mount -t tmpfs none '{hidden}'"
    if Path.home().joinpath(".cache").is_dir():
        hide += f" && mount -t tmpfs none {Path.home() / '.cache'}"
    node = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"{hide} && exec '{BIN / 'ray'}' start --address {address} --num-cpus 2 "
         + " ".join(common)], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = ("import ray, json; ray.init(address='%s', logging_level='ERROR');"
             "print(json.dumps([[n['NodeID'], n['Resources'].get('CPU', 0)] for n in ray.nodes()"
             " if n['Alive']]))" % address)
    try:
        deadline = time.monotonic() + 120
        while True:
            got = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                                 text=True, timeout=60)
            nodes = json.loads(got.stdout.strip().splitlines()[-1]) if got.returncode == 0 else []
            if len(nodes) == 2:
                break
            assert time.monotonic() < deadline, f"the two Ray nodes did not come up: {got.stderr[-2000:]}"
            assert head.poll() is None and node.poll() is None, "a Ray node exited"
            time.sleep(1)
        head_id = next(n for n, cpu in nodes if not cpu)
        worker_id = next(n for n, cpu in nodes if cpu)
        yield address, head_id, worker_id
    finally:
        _kill(node)
        _kill(head)


def _task_nodes(address: str) -> dict[str, set[str]]:
    """Task function name -> the node ids it ran on, from the GCS task events."""
    script = ("import ray, json; from ray._private.state import state;"
              "ray.init(address='%s', logging_level='ERROR'); out = {};"
              "[out.setdefault(e.task_info.name, set()).add(e.state_updates.node_id.hex())"
              " for e in state._get_all_task_events() if e.state_updates.node_id];"
              "print(json.dumps({k: sorted(v) for k, v in out.items()}))" % address)
    got = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert got.returncode == 0, got.stderr[-2000:]
    return {k: set(v) for k, v in json.loads(got.stdout.strip().splitlines()[-1]).items()}


def _commands(world, src: dict, out: str) -> list[list[str]]:
    return [
        ["queries", "--wiki", src["wiki"], "--wordnet", src["wordnet"], "--pageviews",
         src["pageviews"], "--min-freq", str(world.min_freq), "--min-views",
         str(world.pageview_min), "--chunk-mb", "0.05", "--out", out],
        ["pool", "--pool", src["pool"], "--pool-parts", "2", "--out", out],
        ["match", "--out", out],
        ["balance", "--per-query", "30", "--seed", "1", "--out", out],
        ["fetch", "--allow-private-network", "--image-size", "32", "--timeout", "1.5",
         "--retries", "0", "--threads", "8", "--fetch-shard-size", "150", "--out", out,
         "--per-host-rps", "0", "--host-give-up-after", "0"],   # the world's one server is ours
        ["curate", "--min-side", "16", "--eval-images", src["eval"], "--out", out],
        ["publish", "--shard-size", "100", "--seed", "2", "--out", out],
    ]


def _digests(build) -> dict[str, str]:
    folder = committed(build, "publish", "shards")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.tar")}


@pytest.mark.slow
def test_pipeline_on_two_nodes_that_share_no_files(two_nodes, s3_server, tmp_path):
    address, head_id, worker_id = two_nodes
    world = make_world(tmp_path / "world", size="test", seed=3)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    base = s3_server.bucket("cluster-inputs") + "/world"

    def where(root: str) -> dict[str, str]:
        rel = lambda p: f"{root}/{Path(p).relative_to(world.root).as_posix()}"  # noqa: E731
        return {"wiki": rel(world.wiki_dump), "wordnet": rel(world.wordnet_dir),
                "pageviews": rel(world.pageviews), "pool": rel(world.pool_parquet),
                "eval": rel(world.eval_dir)}

    # Each build gets a fresh image server on the same port (some of the world's routes
    # answer by how often they were asked), so both see the same web.
    with imageserver.serve() as srv:
        port = int(srv.base_url.rsplit(":", 1)[1])
        write_pool(world, srv.base_url)
        fs = storage.location(base).fs
        for f in world.root.rglob("*"):
            if f.is_file():
                fs.put_file(str(f), f"cluster-inputs/world/{f.relative_to(world.root).as_posix()}")
        local = tmp_path / "local-build"
        for argv in _commands(world, where(str(world.root)), str(local)):
            _run(argv, env)  # a private local Ray, as on one machine
    remote = s3_server.bucket("cluster") + "/build"
    with imageserver.serve(port=port):
        for argv in _commands(world, where(base), remote):
            _run(argv + ["--ray-address", address], env)
    tasks = _task_nodes(address)
    for stage, names in STAGE_TASKS.items():
        ran = set().union(*(tasks.get(n, set()) for n in names))
        assert worker_id in ran, f"{stage}: no task on the second node ({sorted(tasks)})"
    assert head_id not in set().union(*tasks.values())  # the head had no CPU to give
    q = "SELECT uid, keep, drop_reason, duplicate_of FROM samples ORDER BY uid"
    os.environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    try:
        assert catalog.query(remote, q).to_pylist() == catalog.query(local, q).to_pylist()
        assert catalog.query(remote, "SELECT count(*) AS n FROM samples WHERE keep"
                             ).to_pylist()[0]["n"] > 0
    finally:
        os.environ.pop("XDG_CACHE_HOME", None)
    assert _digests(storage.location(remote)) == _digests(local) != {}
    # a few training steps on the bucket's shards, the run kept in the bucket too
    train_out = remote.rsplit("/", 1)[0] + "/train"
    got = subprocess.run([str(BIN / "wit-train"), "--data", remote, "--out", train_out,
                          "--model", "tiny", "--image-size", "32", "--batch-size", "8",
                          "--steps", "3", "--warmup", "1", "--workers", "0", "--threads", "1",
                          "--log-every", "1", "--no-progress"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-3000:]
    assert json.loads(got.stdout)["steps"] == 3
    assert storage.location(train_out + "/checkpoint.pt").exists()


PRIVATE = ("from wit_builder.build.cluster import ensure_ray, cpus; ensure_ray(num_cpus=1); import ray;"
           "print(cpus(), ray.get(ray.remote(lambda: 41 + 1).remote()))")


@pytest.mark.slow
def test_a_local_command_ignores_a_cluster_running_on_the_machine(two_nodes, tmp_path):
    """Without --ray-address, wit starts a private Ray even when `ray start` runs here
    (Ray's own default would join it and refuse num_cpus), and a stale address file
    left by a dead cluster changes nothing."""
    import shutil
    import tempfile
    ray_tmp = Path(tempfile.mkdtemp(prefix="wr", dir="/tmp"))  # Ray's socket paths are short
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")  # a dead cluster's
    for extra in ({}, {"RAY_TMPDIR": str(ray_tmp)}):
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", **extra}
        env.pop("RAY_ADDRESS", None)
        out = subprocess.run([sys.executable, "-c", PRIVATE], env=env, capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["1", "42"]
    shutil.rmtree(ray_tmp, ignore_errors=True)
