"""wit_builder.stages.fetch.i2d: the one adapter to img2dataset (version check, the one patch, the
resizer's result by name), on the installed img2dataset; no other release is installed."""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wit_builder.errors import WitError
from wit_builder.stages.fetch import i2d
from wit_builder.stages.fetch.resizing import CvTap, Download, hashing_resizer

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("found", ["1.48.0", "1.46.3", "2.0.0", "1.4.7", "1.470.1"])
def test_a_release_fetch_does_not_support_is_refused_in_one_line(found):
    with pytest.raises(WitError) as e:
        i2d.check_version(found)
    assert str(e.value) == (f"img2dataset {found} found; wit's fetch supports 1.47.x; "
                            "install with -c constraints.txt")


def test_the_supported_releases_and_the_installed_one_pass():
    assert i2d.check_version("1.47.0") == "1.47.0"
    assert i2d.check_version("1.47.9") == "1.47.9"
    assert i2d.check_version().startswith("1.47.")  # what constraints.txt installs


def test_pyproject_and_constraints_pin_the_supported_release():
    pyproject = (ROOT / "pyproject.toml").read_text()
    constraints = (ROOT / "constraints.txt").read_text()
    assert f'"img2dataset>={i2d.SUPPORTED},<1.48"' in pyproject
    assert re.search(rf"^img2dataset=={re.escape(i2d.SUPPORTED)}\.\d+$", constraints, re.M)


def test_the_resizer_result_is_read_by_name_and_another_shape_refused():
    out = i2d.resized((b"x", 4, 3, 8, 6, None))
    assert (out.img, out.original_width, out.original_height, out.error) == (b"x", 8, 6, None)
    with pytest.raises(WitError, match=r"Resizer returned 5 values, not the 6 of 1\.47\.x"):
        i2d.resized((b"x", 4, 3, 8, None))


def test_patched_swaps_the_globals_and_restores_them_even_on_error():
    from img2dataset import downloader, resizer
    before = downloader.download_image_with_retry, resizer.cv2, resizer.A, resizer.SuppressStdoutStderr
    tap = object()
    with pytest.raises(RuntimeError):
        with i2d.patched(lambda index, url: (index, None, f"no {url}"), tap, reuse=True):
            assert resizer.cv2 is tap
            assert isinstance(resizer.A, i2d.SharedTransforms)
            assert isinstance(resizer.SuppressStdoutStderr, i2d.Quiet)
            # called as img2dataset's Downloader calls it, keyword options and all
            got = downloader.download_image_with_retry(
                (7, "http://a.test/x.jpg"), timeout=1, retries=0, user_agent_token=None,
                disallowed_header_directives=None)
            assert got == (7, None, "no http://a.test/x.jpg")
            raise RuntimeError("the shard failed")
    assert (downloader.download_image_with_retry, resizer.cv2, resizer.A,
            resizer.SuppressStdoutStderr) == before


def test_sample_key_is_img2dataset_s():
    from img2dataset.downloader import compute_key
    for index, shard, size, oom in ((0, 0, 10000, 1), (42, 3, 500, 2), (9999, 12, 10000, 5)):
        oom_sample = int(np.ceil(np.log10(size)))
        assert i2d.sample_key(index, shard, size, oom) == compute_key(index, shard, oom_sample, oom)


def test_hashing_resizer_keeps_img2dataset_s_bytes_and_reports_the_true_original_size():
    import cv2
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (600, 900, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    plain = i2d.resized(i2d.resizer(128, "border")(io.BytesIO(data)))  # img2dataset's own cv2
    stored: dict = {}
    tap_full, tap_reduced = CvTap(cv2, None, "border"), CvTap(cv2, 128, "border")
    with i2d.patched(cv2=tap_full):
        same = hashing_resizer(i2d.resizer(128, "border"), tap_full, stored)(Download(0, data))
    with i2d.patched(cv2=tap_reduced):
        small = hashing_resizer(i2d.resizer(128, "border"), tap_reduced, stored)(Download(1, data))
    assert isinstance(same, i2d.Resized) and same == plain  # only the hash is added
    assert tap_reduced.original == (900, 600)  # decoded at 1/4 of each side
    assert (small.width, small.height, small.original_width, small.original_height) == (128, 128, 900, 600)
    assert set(stored) == {0, 1} and stored[0][0] == hashlib.sha256(same.img).hexdigest()


def test_only_the_adapter_reaches_into_img2dataset():
    """wit's code and benchmarks import img2dataset in wit_builder/stages/fetch/i2d.py alone (the
    benchmarks run the `img2dataset` command, which is not an import)."""
    reach = re.compile(r"^\s*(from img2dataset\b|import img2dataset\b)|resizer\.cv2\s*=|"
                       r"download_image_with_retry\s*=", re.M)
    offenders = [str(p.relative_to(ROOT)) for folder in ("wit_builder", "trainer", "benchmarks")
                 for p in sorted((ROOT / folder).rglob("*.py"))
                 if p.name != "i2d.py" and reach.search(p.read_text())]
    assert offenders == []


def _pictures() -> list[bytes]:
    """JPEGs and PNGs of many shapes: wide, tall, smaller than the target (upscaled),
    gray, with alpha, one the size of the target."""
    rng = np.random.default_rng(3)
    out = []
    for i, (w, h, mode) in enumerate([(900, 600, "RGB"), (333, 517, "RGB"), (40, 90, "RGB"),
                                      (128, 128, "RGB"), (257, 64, "L"), (300, 200, "RGBA"),
                                      (61, 61, "LA"), (1000, 999, "RGB"), (97, 300, "RGBA")]):
        a = rng.integers(0, 255, (h, w, len(mode)), dtype=np.uint8)
        im = Image.fromarray(a[..., 0] if mode == "L" else a, mode)
        buf = io.BytesIO()
        im.save(buf, "PNG" if "A" in mode else "JPEG", **({} if "A" in mode else {"quality": 80 + i}))
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("mode", ["border", "keep_ratio", "center_crop", "keep_ratio_largest", "no"])
def test_reused_transforms_store_the_very_bytes_of_img2dataset_s_resizer(mode):
    """A fetch shard's resizer builds each albumentations transform once (reuse=True):
    every stored image, in every resize mode and over images of every shape, is byte
    for byte what img2dataset's own resizer stores, run after run."""
    import cv2
    pictures = _pictures()
    for size, fmt in ((128, "jpg"), (64, "png"), (200, "webp")):
        quality = {"jpg": 90, "png": 6, "webp": 80}[fmt]
        plain = [i2d.resized(i2d.resizer(size, mode, fmt, quality)(io.BytesIO(d))) for d in pictures]
        assert all(p.error is None for p in plain)
        tap = CvTap(cv2, None, mode)
        with i2d.patched(cv2=tap, reuse=True):
            from img2dataset import resizer as i2d_resizer
            reuse = i2d.resizer(size, mode, fmt, quality)
            again = [i2d.resized(reuse(io.BytesIO(d))) for _ in range(2) for d in pictures]
            built = dict(i2d_resizer.A.built)
        assert again == plain + plain, (size, fmt)
        # built once, whatever the image: one per interpolation and step ("no" builds none)
        assert (mode == "no") == (not built) and len(built) <= 4


@pytest.mark.parametrize("torch_first", [False, True])
def test_a_fetch_worker_imports_img2dataset_without_torch_and_torch_still_imports(torch_first):
    """i2d.load in a fresh process (a Ray worker's first fetch shard) imports img2dataset
    with torch hidden; torch imports normally afterwards. A process that already has
    torch keeps it, and webdataset gets torch's own classes."""
    import subprocess
    import sys
    script = "\n".join([
        "import sys",
        "import torch" if torch_first else "pass",
        "from wit_builder.stages.fetch import i2d",
        "i2d.load(); i2d.load()",
        "import img2dataset.downloader, img2dataset.writer, img2dataset.resizer, webdataset",
        "print('torch' in sys.modules, webdataset.pytorch.IterableDataset.__module__)",
        "import torch",
        "print(torch.tensor([1, 2]).sum().item())",
    ])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.split("\n")[:2]
    assert first == ("True torch.utils.data.dataset" if torch_first else "False webdataset.pytorch")
    assert second == "3"
