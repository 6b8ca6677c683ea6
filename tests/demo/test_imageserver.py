"""The image server: images follow the URL, and every misbehaving route misbehaves as documented."""
from __future__ import annotations

import io
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from wit_builder.demo.drawing import COLORS, DEFAULT_PX, Scene, blobs, color_mask
from wit_builder.demo.imageserver import ServerProcess, render, serve

RED_CIRCLE = Scene("circle", "red", 1, "plain", "white", 7)


@pytest.fixture(scope="module")
def srv():
    with serve() as s:
        yield s


def get(url: str, timeout: float = 10.0):
    """(status, headers, body) of a GET, following good redirects like img2dataset does."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def image(body: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(body))
    img.load()
    return img


def roundness(mask: np.ndarray) -> float:
    """Farthest pixel from the centroid over the radius of a disc of the same area (1.0 = disc)."""
    ys, xs = np.nonzero(mask)
    return float(np.hypot(ys - ys.mean(), xs - xs.mean()).max() / np.sqrt(len(ys) / np.pi))


def test_image_follows_the_path(srv):
    path = RED_CIRCLE.path()
    status, headers, body = get(srv.url(path))
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body == get(srv.url(path))[2] == render(RED_CIRCLE.spec)   # deterministic, predictable
    img = image(body)
    assert img.size == (DEFAULT_PX, DEFAULT_PX) and img.format == "JPEG"
    for ext, fmt in (("png", "PNG"), ("webp", "WEBP")):
        status, headers, body = get(srv.url(RED_CIRCLE.path(ext)))
        assert (status, headers["Content-Type"], image(body).format) == (200, f"image/{ext}", fmt)
    assert image(get(srv.url(RED_CIRCLE.path(px=96)))[2]).size == (96, 96)
    assert get(srv.url("/img/1-red-unicorn-plain-white-0.jpg"))[0] == 404
    assert get(srv.url("/img/1-red-circle-plain-white-0@5000.jpg"))[0] == 400
    assert Scene.parse(RED_CIRCLE.spec) == RED_CIRCLE


@pytest.mark.parametrize("scene", [
    Scene("circle", "red", 1, "plain", "white", 7),
    Scene("square", "blue", 1, "plain", "sand", 3),
    Scene("triangle", "green", 3, "plain", "sky", 11),
    Scene("star", "yellow", 5, "plain", "black", 2),
    Scene("heart", "purple", 2, "plain", "gray", 5),
])
def test_image_shows_its_scene(srv, scene):
    img = image(get(srv.url(scene.path()))[2])
    shape = color_mask(img, scene.color)
    assert len(blobs(shape, min_size=10)) == scene.count
    others = [c for c in COLORS if c != scene.color and c not in ("white", "black")]
    assert shape.mean() > 0.05
    assert all(color_mask(img, c).mean() < shape.mean() / 3 for c in others)
    if scene.thing == "circle":
        assert roundness(shape) < 1.06
    if scene.thing == "square":
        assert roundness(shape) > 1.1


def test_textures_and_backgrounds_are_drawn(srv):
    plain = image(get(srv.url(Scene("circle", "red", 1, "plain", "white", 1).path()))[2])
    striped = image(get(srv.url(Scene("circle", "red", 1, "striped", "white", 1).path()))[2])
    # the stripes are white lines across a red disc: less red, and the red falls apart
    assert color_mask(striped, "red").sum() < 0.85 * color_mask(plain, "red").sum()
    assert len(blobs(color_mask(striped, "red"))) > 2
    night = image(get(srv.url(Scene("circle", "red", 1, "plain", "night", 1).path()))[2])
    assert color_mask(night, (15, 20, 50), tol=30).mean() > 0.3


def test_errors_and_rate_limits(srv):
    assert get(srv.url("/status/404/img/a.jpg"))[0] == 404
    assert get(srv.url("/status/500/img/a.jpg"))[0] == 500
    status, headers, _ = get(srv.url("/status/429/img/a.jpg"))
    assert status == 429 and headers["Retry-After"] == "1"
    flaky = srv.url("/flaky/2" + RED_CIRCLE.path())
    assert [get(flaky)[0] for _ in range(3)] == [429, 429, 200]
    assert get(srv.url("/nothing/here"))[0] == 404
    assert get(srv.url("/slow/abc/x"))[0] == 400


def test_broken_and_wrong_content(srv):
    full = get(srv.url(RED_CIRCLE.path()))[2]
    status, headers, cut = get(srv.url("/truncated" + RED_CIRCLE.path()))
    assert status == 200 and int(headers["Content-Length"]) == len(cut) < len(full) and full.startswith(cut)
    with pytest.raises(OSError):
        image(cut)
    status, headers, body = get(srv.url("/html-as-image/photo.jpg"))
    assert headers["Content-Type"] == "image/jpeg" and body.startswith(b"<!DOCTYPE html>")
    assert get(srv.url("/html/photo.jpg"))[1]["Content-Type"].startswith("text/html")
    assert image(get(srv.url(RED_CIRCLE.path("png", px=1)))[2]).size == (1, 1)


def test_decompression_bomb(srv):
    status, headers, body = get(srv.url("/bomb/30000x30000/x.png"))
    assert status == 200 and headers["Content-Type"] == "image/png" and len(body) < 200_000
    assert int.from_bytes(body[16:20], "big") == int.from_bytes(body[20:24], "big") == 30000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))
    assert get(srv.url("/bomb/99999x99999/x.png"))[0] == 400


def test_redirects(srv):
    with pytest.raises(urllib.error.HTTPError, match="infinite loop"):
        urllib.request.urlopen(srv.url("/loop/t1/a"), timeout=10)
    assert srv.hits("/loop/t1/a") >= 2 and srv.hits("/loop/t1/b") >= 2
    with urllib.request.urlopen(srv.url("/redirect" + RED_CIRCLE.path()), timeout=10) as r:
        assert r.url == srv.url(RED_CIRCLE.path()) and r.read() == render(RED_CIRCLE.spec)


def test_robots_opt_out_headers(srv):
    for directive in ("noai", "noimageai"):
        status, headers, body = get(srv.url(f"/robots/{directive}" + RED_CIRCLE.path()))
        assert status == 200 and headers["X-Robots-Tag"] == directive and body == render(RED_CIRCLE.spec)


def test_duplicates(srv):
    base = get(srv.url(RED_CIRCLE.path()))[2]
    assert get(srv.url("/mirror/copy-1" + RED_CIRCLE.path()))[2] == base          # exact
    for variant in (RED_CIRCLE.path(quality=30), RED_CIRCLE.path(px=48)):         # near
        body = get(srv.url(variant))[2]
        assert body != base
        near = np.asarray(image(body).convert("L").resize((16, 16)), dtype=float)
        orig = np.asarray(image(base).convert("L").resize((16, 16)), dtype=float)
        assert np.abs(near - orig).mean() < 8


def test_slow_route_times_out_without_blocking_others(srv):
    slow = srv.url("/slow/20" + RED_CIRCLE.path())
    errors = []

    def fetch_slow():
        try:
            urllib.request.urlopen(slow, timeout=0.5).read()
        except (TimeoutError, socket.timeout, urllib.error.URLError) as e:
            errors.append(e)

    t0 = time.monotonic()
    t = threading.Thread(target=fetch_slow)
    t.start()
    assert get(srv.url(RED_CIRCLE.path()), timeout=2)[0] == 200      # served meanwhile
    t.join()
    assert errors and time.monotonic() - t0 < 3
    with urllib.request.urlopen(srv.url("/slow/0.3" + RED_CIRCLE.path()), timeout=5) as r:
        assert r.read() == render(RED_CIRCLE.spec)


def test_counts_per_path(srv):
    path = "/img/2-blue-star-plain-white-123.jpg"
    before = srv.hits(path)
    for _ in range(3):
        get(srv.url(path))
    assert srv.hits(path) == before + 3 and srv.hits(srv.url(path)) == before + 3
    assert srv.counts()[path] == before + 3


def test_stops_cleanly_even_with_a_slow_request_pending():
    before = set(threading.enumerate())
    s = serve()
    outcome = []

    def fetch_slow():
        try:
            get(s.url("/slow/25/img/1-red-circle-plain-white-0.jpg"), timeout=30)
        except (OSError, urllib.error.URLError) as e:   # the server hangs up: no reply at all
            outcome.append(e)

    t = threading.Thread(target=fetch_slow)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    s.stop()
    assert time.monotonic() - t0 < 3
    t.join(5)
    assert outcome and not t.is_alive()
    s.stop()   # idempotent
    assert set(threading.enumerate()) <= before
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(s.url("/health"), timeout=2)


def test_static_files_under_root(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path.parent / "secret.txt").write_text("no")
    with serve(root=tmp_path) as s:
        assert get(s.url("/files/a.txt"))[2] == b"hello"
        assert get(s.url("/files/../secret.txt"))[0] == 404
        assert get(s.url("/files/%2e%2e/secret.txt"))[0] == 404


def test_server_in_its_own_process(tmp_path):
    with ServerProcess() as p:
        status, _, body = get(p.url(RED_CIRCLE.path()))
        assert status == 200 and body == render(RED_CIRCLE.spec)
        assert p.hits(RED_CIRCLE.path()) == 1
    assert p.proc.returncode is not None
