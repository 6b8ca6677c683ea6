"""Fetch: real downloads from wit_builder.demo.imageserver on 127.0.0.1 through img2dataset under Ray."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.support.fetch import encode, picture, write_selected
from wit_builder.build import catalog
from wit_builder.build.stage import committed
from wit_builder.canonical import phash_bytes
from wit_builder.demo import imageserver
from wit_builder.errors import WitError
from wit_builder.phash import hamming
from wit_builder.stages.fetch import fetch
from wit_builder.stages.fetch.netguard import DEFAULT_USER_AGENT, Fetcher, Policy, address_problem
from wit_builder.stages.fetch.resizing import CvTap, reduction

SCENES = [f"1-{c}-{t}-plain-white-{i}" for i, (c, t) in enumerate(
    (c, t) for c in ("red", "blue", "green") for t in ("circle", "star", "square", "heart"))]


def status_rows(build: Path) -> list[dict]:
    return pq.read_table(committed(build, "fetch") / "status").to_pylist()


def tar_members(build: Path) -> Counter:
    """(key, extension) -> count over every shard tar; and the json of each sample."""
    seen: Counter = Counter()
    for tar in sorted((committed(build, "fetch") / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                seen[(key, ext)] += 1
    return seen


def stored_images(build: Path) -> dict[str, bytes]:
    """key -> the image bytes stored in the shard tars."""
    out = {}
    for tar in sorted((committed(build, "fetch") / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                if ext in ("jpg", "png", "webp"):
                    out[key] = tf.extractfile(m).read()
    return out


def check_one_row_per_uid_and_shards(build: Path, uids: list[str]) -> list[dict]:
    rows = status_rows(build)
    assert Counter(r["uid"] for r in rows) == Counter(uids)  # exactly one row per selected uid
    members = tar_members(build)
    success_keys = {r["key"] for r in rows if r["status"] == "success"}
    assert {k for k, ext in members if ext == "jpg"} == success_keys
    assert all(n == 1 for n in members.values())  # every success in exactly one shard
    return rows


def fast(**kw) -> fetch.Config:
    base = dict(image_size=32, timeout=2.0, retries=0, threads=4, fetch_shard_size=6,
                shards_in_flight=2, allow_private_network=True, per_host_rps=0,
                host_give_up_after=0)
    return fetch.Config(**{**base, **kw})


@pytest.mark.slow
def test_statuses_against_a_misbehaving_server(build, ray_cluster):
    # render the heavy replies up front (the server shares this process's cache), so a
    # loaded machine cannot turn them into timeouts
    imageserver.bomb_png(30000, 30000), imageserver.bomb_png(12000, 12000)
    with imageserver.serve() as srv:
        good = [srv.url(f"/img/{s}.jpg") for s in SCENES]
        odd = {
            "not_found": srv.url("/status/404/gone.jpg"),
            "server_error": srv.url("/status/500/broken.jpg"),
            "rate_limited": srv.url("/status/429/busy.jpg"),
            "timeout": srv.url(f"/slow/5/img/{SCENES[0]}.jpg"),
            "truncated": srv.url(f"/truncated/img/{SCENES[1]}@128.jpg"),
            "not_an_image": srv.url("/html/page"),
            "too_large": srv.url("/bomb/30000x30000/bomb.png"),
            "redirect_loop": srv.url("/loop/x/a"),
            "robots_optout": srv.url(f"/robots/noai/img/{SCENES[2]}.jpg"),
            # its robots.txt is unreachable too: disallowed for now, never requested
            "robots_unavailable": "http://127.0.0.1:9/nothing-listens-here.jpg",
            "bad_url": "file:///etc/passwd",
        }
        tiny = srv.url(f"/img/{SCENES[3]}@1.png")
        other_bot = srv.url(f"/robots/otherbot:noai/img/{SCENES[4]}.jpg")
        redirected = srv.url(f"/redirect/img/{SCENES[5]}.png")
        big = srv.url("/bomb/12000x12000/big.png")  # under Pillow's own limit, over ours
        broken = "http://[::1/not-a-url.jpg"  # must not take its shard down
        uids = write_selected(build, good + list(odd.values()) + [tiny, other_bot, redirected, big, broken])
        res = fetch.run(fast(), build)
        assert srv.hits("/status/404/gone.jpg") == 1

    rows = check_one_row_per_uid_and_shards(build, uids)
    by_url = {r["url"]: r for r in rows}
    assert Counter(r["status"] for r in rows) == {"success": len(good) + 3, **{k: 1 for k in odd},
                                                  "too_large": 2, "bad_url": 2}
    for status, url in odd.items():
        assert by_url[url]["status"] == status, (url, by_url[url]["error"])
        assert by_url[url]["error"] and by_url[url]["width"] is None
    assert "noai" in by_url[odd["robots_optout"]]["error"]
    assert "900000000 pixels" in by_url[odd["too_large"]]["error"]
    assert "12000x12000" in by_url[big]["error"] and "--max-image-area" in by_url[big]["error"]
    assert (by_url[tiny]["original_width"], by_url[tiny]["original_height"]) == (1, 1)
    one = by_url[good[0]]
    served = imageserver.render(SCENES[0])
    assert (one["width"], one["height"], one["original_width"]) == (32, 32, 64)
    assert one["sha256"] == hashlib.sha256(served).hexdigest() and one["bytes"] == len(served)
    assert one["text"].startswith("caption 0") and one["query_ids"] == [0, 7]
    assert res.summary["success"] == len(good) + 3
    assert res.summary["failures_by_status"] == {**{k: 1 for k in odd}, "too_large": 2, "bad_url": 2}
    assert res.summary["images_per_s"] > 0 and res.summary["shards"] == math.ceil(len(rows) / 6)
    assert res.summary["bytes"] == sum(r["bytes"] or 0 for r in rows)
    got = catalog.query(build, "SELECT count(*) AS n FROM samples WHERE status = 'success'")
    assert got["n"].to_pylist() == [len(good) + 3]
    # the stored json names the uid, so keys map back to samples
    with tarfile.open(committed(build, "fetch") / "shards" / f"{one['fetch_shard']:05d}.tar") as tf:
        meta = json.load(tf.extractfile(f"{one['key']}.json"))
    assert meta["uid"] == one["uid"]
    # fetch hashed what it stored: the sha256 of the bytes in the tar, and the pHash of
    # the pixels it encoded (close to a hash of those bytes decoded again)
    stored = stored_images(build)
    ok = [r for r in rows if r["status"] == "success"]
    assert all(r["stored_sha256"] == hashlib.sha256(stored[r["key"]]).hexdigest() for r in ok)
    d = hamming(np.array([r["stored_phash"] for r in ok]),
                phash_bytes([stored[r["key"]] for r in ok]))
    # 32-px JPEGs: chroma subsampling blurs a shape's edge by a tenth of the image,
    # which moves the white-margin trim; tests/stages/curate/test_curate.py checks 128 px closely
    assert d.max() <= 16 and d.mean() <= 3, d
    assert all(r["stored_phash"] is None and r["stored_sha256"] is None
               for r in rows if r["status"] != "success")
    again = fetch.run(fast(), build)
    assert again.skipped


def test_reduction_keeps_the_measured_side_at_least_the_target():
    assert reduction(1200, 900, 256, "border") == 4          # longest side 1200 -> 300
    assert reduction(1200, 900, 256, "keep_ratio") == 2      # shortest side 900 -> 450
    assert reduction(2048, 2048, 256, "center_crop") == 8    # exactly 256
    assert reduction(2041, 2041, 256, "center_crop") == 8    # libjpeg rounds 255.1 up to 256
    assert reduction(2040, 2040, 256, "center_crop") == 4    # 255 would be too small
    assert reduction(4000, 60, 256, "keep_ratio") == 1
    assert reduction(500, 400, 256, "border") == 1
    assert reduction(5000, 5000, 256, "no") == 1             # stored at the original size


def test_tap_decodes_large_jpegs_reduced_and_the_rest_as_img2dataset(tmp_path):
    import cv2
    tap = CvTap(cv2, 256, "border")
    cases = {"colour": encode(picture(1, 1200, 900)), "gray": encode(picture(2, 1000, 800).convert("L")),
             "png": encode(picture(3, 900, 700), "PNG"), "small": encode(picture(4, 300, 200)),
             "cmyk": encode(picture(5, 1200, 900).convert("CMYK")), "junk": b"\xff\xd8\xff junk"}
    shapes = {}
    for name, data in cases.items():
        buf = np.frombuffer(data, np.uint8)
        img = tap.imdecode(buf, cv2.IMREAD_UNCHANGED)
        full = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        shapes[name] = (None if img is None else img.shape, tap.original)
        if tap.original is None:  # not reduced: exactly img2dataset's decode
            assert (img is None and full is None) or np.array_equal(img, full), name
    assert shapes["colour"] == ((225, 300, 3), (1200, 900))
    assert shapes["gray"] == ((400, 500), (1000, 800))  # 1000/4 = 250 would be too small
    assert shapes["png"][1] is None and shapes["small"][1] is None and shapes["cmyk"][1] is None
    assert shapes["junk"] == (None, None)


@pytest.mark.slow
@pytest.mark.parametrize("resize_mode", ["border", "keep_ratio"])
def test_reduced_decoding_stores_what_full_decoding_stores(tmp_path, ray_cluster, resize_mode):
    """Same statuses, original sizes and stored sizes (to a pixel), nearly the same
    pixels and pHashes; images that are not reduced are stored byte for byte alike."""
    files = tmp_path / "files"
    files.mkdir()
    pics = {"colour.jpg": encode(picture(1, 1200, 900)),
            "gray.jpg": encode(picture(2, 1000, 800).convert("L")),
            "tall.jpg": encode(picture(6, 700, 1500)), "png.png": encode(picture(3, 900, 700), "PNG"),
            "small.jpg": encode(picture(4, 200, 150))}  # under 2 x 128 on both sides
    for name, data in pics.items():
        (files / name).write_bytes(data)
    builds = {}
    with imageserver.serve(root=files) as srv:
        for reduced in (True, False):
            build = tmp_path / f"{resize_mode}-{reduced}"
            write_selected(build, [srv.url(f"/files/{n}") for n in pics])
            fetch.run(fetch.Config(image_size=128, resize_mode=resize_mode, reduced_decode=reduced,
                                   timeout=5.0, retries=0, allow_private_network=True,
                                   per_host_rps=0), build)
            builds[reduced] = build
    rows = {k: {r["url"].rsplit("/", 1)[-1]: r for r in status_rows(b)} for k, b in builds.items()}
    images = {k: stored_images(b) for k, b in builds.items()}
    for name, data in pics.items():
        fast, full = rows[True][name], rows[False][name]
        assert fast["status"] == full["status"] == "success", name
        true_size = Image.open(io.BytesIO(data)).size
        assert (fast["original_width"], fast["original_height"]) == true_size
        assert (full["original_width"], full["original_height"]) == true_size
        assert abs(fast["width"] - full["width"]) <= 1 and abs(fast["height"] - full["height"]) <= 1
        a = Image.open(io.BytesIO(images[True][fast["key"]]))
        b = Image.open(io.BytesIO(images[False][full["key"]]))
        assert a.mode == b.mode == ("L" if name == "gray.jpg" else "RGB"), name
        if name in ("png.png", "small.jpg"):
            assert fast["stored_sha256"] == full["stored_sha256"], name
        x = np.asarray(a.resize(b.size), dtype=float)
        mse = ((x - np.asarray(b, dtype=float)) ** 2).mean()
        assert 10 * np.log10(255 ** 2 / max(mse, 1e-9)) > 28, (name, mse)
        assert hamming(np.array([fast["stored_phash"]]), np.array([full["stored_phash"]]))[0] <= 4


def test_address_guard_and_host_interleaving(build, ray_cluster):
    """Without --allow-private-network nothing private is contacted (robots.txt
    included); each host sits in few consecutive shards."""
    hosts = {"127.0.0.1:8": 13, "10.1.2.3": 5, "192.168.0.7": 3, "169.254.169.254": 2,
             "[::1]": 1, "localhost": 1, "224.0.0.1": 1}
    urls = [f"http://{h}/img/{i}.jpg" for h, n in hosts.items() for i in range(n)]
    uids = write_selected(build, urls)
    res = fetch.run(fast(shards_in_flight=4, fetch_shard_size=5, allow_private_network=False), build)
    rows = check_one_row_per_uid_and_shards(build, uids)
    assert {r["status"] for r in rows} == {"blocked_address"}
    assert res.summary["failures_by_status"] == {"blocked_address": len(urls)}
    err = {r["url"].split("/")[2]: r["error"] for r in rows}
    assert "loopback" in err["127.0.0.1:8"] and "private" in err["10.1.2.3"]
    assert "link-local" in err["169.254.169.254"] and "multicast" in err["224.0.0.1"]
    assert "--allow-private-network" in err["localhost"]
    n_shards = res.summary["shards"]
    assert n_shards == math.ceil(len(urls) / 5)
    held: dict[str, set] = {}
    for r in rows:
        held.setdefault(r["url"].split("/")[2], set()).add(r["fetch_shard"])
    for host, shards in held.items():  # blocks of 5 host-sorted URLs go to shards in turn
        assert len(shards) <= math.ceil(hosts[host] / 5) + 1, (host, shards)
        ring = sorted((s - min(shards)) % n_shards for s in shards)
        assert ring == list(range(len(shards))) or len(shards) == n_shards


def test_address_problem_and_fetcher_on_loopback():
    assert address_problem("127.0.0.1") == "loopback"
    assert address_problem("::ffff:127.0.0.1") == "loopback"
    assert address_problem("10.0.0.1") == "private"
    assert address_problem("fe80::1") == "link-local"
    assert address_problem("240.0.0.1") == "reserved"
    assert address_problem("0.0.0.0") == "unspecified"
    assert address_problem("100.64.0.1") is not None  # carrier-grade NAT: not global
    assert address_problem("8.8.8.8") is None and address_problem("2606:4700::1111") is None
    with imageserver.serve() as srv:
        url = srv.url(f"/img/{SCENES[0]}.jpg")
        data, status, error = Fetcher(Policy(timeout=2)).fetch(url)
        assert (data, status) == (None, "blocked_address") and "127.0.0.1" in error
        assert srv.total_hits == 0
        data, status, error = Fetcher(Policy(timeout=2, allow_private_network=True)).fetch(url)
        assert status == "success" and data == imageserver.render(SCENES[0])
        # a redirect is followed only through the same guard
        loop = Fetcher(Policy(timeout=2, allow_private_network=True)).fetch(srv.url("/loop/y/a"))
        assert loop[1] == "redirect_loop"
        noai = srv.url(f"/robots/noai/img/{SCENES[0]}.jpg")
        assert Fetcher(Policy(timeout=2, allow_private_network=True)).fetch(noai)[1] == "success"


def test_fetcher_keeps_http11_connections_alive():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class KeepAlive(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        connections = 0
        agents: set = set()

        def setup(self):
            super().setup()
            type(self).connections += 1

        def do_GET(self):  # noqa: N802
            type(self).agents.add(self.headers["User-Agent"])
            found = self.path.startswith("/img")
            body = imageserver.render(SCENES[0]) if found else b"nope"
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    fetcher = Fetcher(Policy(timeout=2, allow_private_network=True))
    try:
        got = [fetcher.fetch(f"{base}/img/{i}.jpg")[1] for i in range(4)] + [fetcher.fetch(f"{base}/x")[1]]
        got.append(fetcher.fetch(f"{base}/img/last.jpg")[1])
    finally:
        fetcher.close()
        httpd.shutdown()
        httpd.server_close()
    assert got == ["success"] * 4 + ["not_found", "success"]
    assert KeepAlive.connections == 1
    assert KeepAlive.agents == {DEFAULT_USER_AGENT} and "wit-build" in DEFAULT_USER_AGENT


@pytest.mark.parametrize("header, opted_out", [
    ("noai", True), ("NoImageAI", True), ("noindex, nofollow", True), ("all", False),
    ("otherbot: noai", False), ("wit: noai", True), ("img2dataset: noimageai", True),
    ("max-snippet: 20, noai", True), ("unavailable_after: 25 Jun 2010 15:00:00 PST", False),
])
def test_x_robots_tag_directives(header, opted_out):
    from email.message import Message

    from wit_builder.stages.fetch.netguard import is_opted_out
    msg = Message()
    msg["X-Robots-Tag"] = header
    directives = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
    assert (is_opted_out(msg, directives) is not None) == opted_out


def test_nothing_selected_gives_an_empty_samples_view(build):
    write_selected(build, [])
    res = fetch.run(fast(), build)
    assert res.rows == 0 and res.summary["shards"] == 0
    assert catalog.query(build, "SELECT count(*) AS n FROM samples")["n"].to_pylist() == [0]
    assert pq.read_schema(next((committed(build, "fetch") / "status").glob("*.parquet"))).names == fetch.STATUS_COLUMNS
    retry = fetch.run(fast(retry_failed=True), build)  # nothing transient: nothing to do
    assert retry.skipped and retry.summary["retried"] == 0


@pytest.mark.slow
def test_retry_failed_retries_only_transient_failures(build, ray_cluster):
    with imageserver.serve() as srv:
        flaky = srv.url(f"/flaky/1/img/{SCENES[6]}.jpg")   # 429 once, then the image
        urls = [srv.url(f"/img/{s}.jpg") for s in SCENES[:5]] + [
            flaky, srv.url("/status/503/down.jpg"), srv.url("/status/404/gone.jpg")]
        uids = write_selected(build, urls)
        first = fetch.run(fast(), build)
        assert first.summary["failures_by_status"] == {"rate_limited": 1, "server_error": 1,
                                                       "not_found": 1}
        old_shards = {p.name for p in (committed(build, "fetch") / "shards").glob("*.tar")}
        with pytest.raises(WitError, match="--image-size"):
            fetch.run(fast(retry_failed=True, image_size=48), build)
        retry = fetch.run(fast(retry_failed=True), build)
        assert srv.hits("/status/404/gone.jpg") == 1          # not transient: not retried
        assert srv.hits("/status/503/down.jpg") == 2
        assert srv.hits(f"/flaky/1/img/{SCENES[6]}.jpg") == 2
    rows = check_one_row_per_uid_and_shards(build, uids)
    assert retry.summary["retried"] == 2
    assert Counter(r["status"] for r in rows) == {"success": 6, "server_error": 1, "not_found": 1}
    row = next(r for r in rows if r["url"] == flaky)
    assert row["fetch_shard"] > max(r["fetch_shard"] for r in rows if r["url"] != flaky
                                    and r["status"] != "server_error")
    assert old_shards < {p.name for p in (committed(build, "fetch") / "shards").glob("*.tar")}
    assert fetch.run(fast(), build).skipped  # the plain command accepts the retried output


@pytest.mark.slow
def test_a_shard_stopped_at_its_time_limit_keeps_what_it_finished(build, ray_cluster):
    """--shard-time-limit 8: the shard stops fetching at polite.stop_after(8) = 4 s, so
    it stores the images it finished and marks only the slow one `shard_stopped`; then
    --retry-failed requests that one alone."""
    from wit_builder.stages.fetch.polite import stop_after
    assert stop_after(8) == 4 and stop_after(3600) == 2880 and stop_after(30) == 20
    with imageserver.serve() as srv:
        slow = srv.url(f"/slow/6/img/{SCENES[0]}.jpg")
        good = [srv.url(f"/img/{s}.jpg") for s in SCENES[1:4]]
        uids = write_selected(build, [slow] + good)
        res = fetch.run(fast(timeout=30, shard_time_limit=8, shard_retries=0, fetch_shard_size=4),
                        build)
        rows = check_one_row_per_uid_and_shards(build, uids)
        by_url = {r["url"]: r for r in rows}
        assert [by_url[u]["status"] for u in good] == ["success"] * 3, [by_url[u]["error"] for u in good]
        assert by_url[slow]["status"] == "shard_stopped", by_url[slow]
        assert "--shard-time-limit 8 s" in by_url[slow]["error"]
        assert res.summary["shards_failed"] == 0 and res.summary["success"] == 3
        retry = fetch.run(fast(timeout=30, shard_time_limit=20, fetch_shard_size=4, retry_failed=True),
                          build)
        assert srv.hits(slow) == 2 and all(srv.hits(u) == 1 for u in good)
    rows = check_one_row_per_uid_and_shards(build, uids)
    assert retry.summary["retried"] == 1
    assert Counter(r["status"] for r in rows) == {"success": 4}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_completes(build, ray_cluster):
    """kill -9 the CLI while shards are finishing; the same command completes the build."""
    import ray
    with imageserver.serve() as srv:
        urls = [srv.url(f"/slow/0.4/img/{SCENES[i % len(SCENES)]}@{40 + i}.jpg") for i in range(32)]
        uids = write_selected(build, urls)
        cmd = [sys.executable, "-m", "wit_builder.app.cli", "fetch", "--out", str(build),
               "--allow-private-network", "--fetch-shard-size", "4", "--shards-in-flight", "1",
               "--threads", "2", "--image-size", "32", "--timeout", "5", "--per-host-rps", "0"]
        # the CLI joins the session's Ray (its own job: its workers go when it is killed)
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
        proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        work = next_work_dir(build, proc)
        done_dir = work / "done"
        deadline = time.monotonic() + 90
        while len(list(done_dir.glob("*/summary.json"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        assert not (build / "_stages" / "fetch.json").exists()
        finished = {p.parent.name: pq.read_table(p.parent / "status.parquet")["url"].to_pylist()
                    for p in done_dir.glob("*/summary.json")}
        assert 2 <= len(finished) < 8
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "shards_resumed" in rerun.stdout
        for shard_urls in finished.values():
            for url in shard_urls:
                assert srv.hits(url) == 1, url  # finished shards were not downloaded again
    rows = check_one_row_per_uid_and_shards(build, uids)
    assert {r["status"] for r in rows} == {"success"}


def next_work_dir(build: Path, proc) -> Path:
    deadline = time.monotonic() + 60
    while True:
        found = list((build / "_work").glob("fetch-*"))
        if found:
            return found[0]
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "fetch did not start"
        time.sleep(0.1)


def test_mistakes_name_the_flag_or_the_missing_stage(build, capsys):
    from wit_builder.app.cli import main
    assert main(["fetch", "--out", str(build)]) == 2
    assert "balance" in capsys.readouterr().err  # nothing selected yet: says what to run
    write_selected(build, ["http://example.invalid/a.jpg"])
    for bad, flag in ((dict(threads=0), "--threads"), (dict(encode_quality=20, encode_format="png"),
                      "--encode-quality"), (dict(resize_mode="stretch"), "--resize-mode")):
        with pytest.raises(WitError, match=flag):
            fetch.run(fetch.Config(**bad), build)
    with pytest.raises(WitError, match="no finished fetch"):
        fetch.run(fetch.Config(retry_failed=True), build)


def test_image_checks_read_a_jpeg_header_as_pil_does():
    """netguard's image checks read a plain JPEG's size from its frame header, not PIL:
    the verdicts are PIL's on the same bytes (size, area cap, cut files), and a JPEG
    the header reader leaves alone (CMYK) still goes through PIL."""
    from wit_builder.stages.fetch import netguard_checks

    def pil_verdict(data, area):  # the checks as they were, through PIL alone
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except Image.DecompressionBombError:
            return "too_large"
        if w * h > area:
            return "too_large"
        return None if netguard_checks._jpeg_complete(data) else "truncated"

    rgb = encode(picture(1, 120, 80))
    gray = encode(Image.fromarray(np.full((50, 70), 90, np.uint8)))
    buf = io.BytesIO()
    Image.new("CMYK", (40, 30), (10, 20, 30, 40)).save(buf, "JPEG")
    cmyk = buf.getvalue()
    sof = rgb.index(b"\xff\xc0")
    huge = rgb[:sof + 5] + (30000).to_bytes(2, "big") * 2 + rgb[sof + 9:]  # the header lies
    for data in (rgb, gray, cmyk, huge, rgb[:len(rgb) // 2], rgb[:-2]):
        for area in (89_478_485, 9_000):
            got = netguard_checks.image_problem(data, area)
            assert (got and got[0]) == pil_verdict(data, area), (len(data), area, got)
    assert "30000x30000 = 900,000,000 pixels" in netguard_checks.image_problem(huge, 89_478_485)[1]
    assert netguard_checks.image_problem(b"<html>", 100)[0] == "not_an_image"
