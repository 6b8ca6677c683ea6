"""The one adapter between wit and img2dataset: every use fetch makes of its insides.

img2dataset's `Downloader` takes its resizer and its sample writer class as
arguments, so those are injected: `download_shard` hands it fetch's resizer (its
`Resizer`, built by `resizer`, wrapped by `wit_builder.stages.fetch.resizing.hashing_resizer`) and
img2dataset's own `WebDatasetSampleWriter`. Two things it offers no seam for:

- the download: `Downloader.download_shard` calls the module global
  `img2dataset.downloader.download_image_with_retry` from its thread pool (a bare
  urllib call); fetch downloads with `netguard.Fetcher` instead;
- the `cv2` its `Resizer` decodes and encodes with: the module global
  `img2dataset.resizer.cv2`; fetch gives it `resizing.CvTap` (reduced JPEG decoding,
  the stored pixels for the signature).

A fetch task imports img2dataset through `load`: img2dataset's package imports its
writer, whose webdataset imports torch if it can, and a downloading worker never uses
torch. `load` imports img2dataset with torch hidden when nothing has imported torch
yet in that process: a Ray worker then starts in ~2.5 s less CPU and holds ~470 MB
less memory (215 MB instead of 683 MB resident on this project's machines). torch
stays importable afterwards; only webdataset, in that process, keeps its stand-ins
for torch's classes, which neither img2dataset's writer nor any wit task uses.

`patched` swaps those two globals for one `with` block and puts them back on exit:
it is the only patch wit makes to img2dataset (`download_shard` uses it for a fetch
shard, the benchmarks for the resizer alone). For a fetch shard it also swaps two
more of the resizer's globals that cost time, not results: its `Resizer` builds its
albumentations transforms (LongestMaxSize, PadIfNeeded...) anew for every image,
about 0.5 ms of argument validation each time, and opens /dev/null twice per image
to silence libjpeg's warnings. `SharedTransforms` builds each transform once per
argument set and `Quiet` opens /dev/null once per shard; the stored bytes are the
same (tests/stages/fetch/test_i2d.py compares them). It, the resizer's six-value result
(`resized`) and the sample keys (`sample_key`) rely on img2dataset 1.47, so
`check_version` refuses any other release with a one-line `WitError`;
pyproject.toml and constraints.txt pin the same range.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from wit_builder.errors import WitError

SUPPORTED = "1.47"  # major.minor; keep in step with pyproject.toml and constraints.txt
INPUT_COLUMNS = ["uid", "caption", "url"]   # the shard input file (Arrow IPC) it reads


def check_version(found: str | None = None) -> str:
    """The installed img2dataset's version (or `found`), if fetch supports it; else
    a WitError saying which is installed and how to get the right one."""
    if found is None:
        found = _installed()
        if found is None:
            raise WitError(f"img2dataset is not installed; wit's fetch needs {SUPPORTED}.x; "
                           "install with -c constraints.txt")
    if found.split(".")[:2] != SUPPORTED.split("."):
        raise WitError(f"img2dataset {found} found; wit's fetch supports {SUPPORTED}.x; "
                       "install with -c constraints.txt")
    return found


def load() -> None:
    """Import the parts of img2dataset fetch uses, without torch where none is loaded
    yet (see the module doc); a no-op once they are imported."""
    import sys
    if "img2dataset.downloader" in sys.modules:
        return
    hide = "torch" not in sys.modules and "webdataset" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` fails: webdataset takes its stand-ins
    try:
        import img2dataset.downloader  # noqa: F401 (the package imports its writer and resizer)
    finally:
        if hide and sys.modules.get("torch", False) is None:
            del sys.modules["torch"]


@lru_cache(maxsize=1)
def _installed() -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("img2dataset")
    except PackageNotFoundError:
        return None


class Resized(NamedTuple):
    """What img2dataset's `Resizer` returns, by name (1.47: six values in this order)."""
    img: bytes | None
    width: int | None
    height: int | None
    original_width: int | None
    original_height: int | None
    error: str | None


def resized(out: tuple) -> Resized:
    """img2dataset's resizer result `out` as a `Resized`, refusing another shape (a
    release that changed it) instead of reading the wrong positions."""
    if len(out) != len(Resized._fields):
        raise WitError(f"img2dataset's Resizer returned {len(out)} values, not the "
                       f"{len(Resized._fields)} of {SUPPORTED}.x ({', '.join(Resized._fields)}); "
                       "install with -c constraints.txt")
    return Resized(*out)


def resizer(image_size: int, resize_mode: str, encode_format: str = "jpg",
            encode_quality: int = 95, max_image_area: float = float("inf")) -> Callable:
    """img2dataset's `Resizer` with these settings (never upscale-only, no blurring)."""
    from img2dataset.resizer import Resizer
    return Resizer(image_size, resize_mode, False, encode_quality=encode_quality,
                   encode_format=encode_format, max_image_area=max_image_area)


def write_input(path: Path, uid, caption, url) -> None:
    """The shard's input file as `Downloader.download_shard` reads it (Arrow IPC)."""
    import pyarrow as pa
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(
            f, pa.schema([(c, pa.string()) for c in INPUT_COLUMNS])) as w:
        w.write_table(pa.table({"uid": uid, "caption": caption, "url": url}))


def sample_key(index: int, shard: int, shard_size: int, oom_shard_count: int) -> str:
    """img2dataset's key of row `index` of `shard` (downloader.compute_key):
    shard and index, zero-padded; computed here so the driver need not import it."""
    oom_sample = math.ceil(math.log10(shard_size))
    return f"{shard * 10 ** oom_sample + index:0{oom_sample + oom_shard_count}d}"


class SharedTransforms:
    """Stands in for the albumentations module inside img2dataset's resizer: each
    transform it asks for is built once per set of arguments and then reused. They are
    deterministic (p=1, no random parameters; sizes and padding are worked out from
    each image as it comes), and the resizer runs in its shard's one main thread."""
    SHARED = ("LongestMaxSize", "SmallestMaxSize", "PadIfNeeded", "CenterCrop")

    def __init__(self, module):
        self.module = module
        self.built: dict[str, Any] = {}

    def __getattr__(self, name: str):
        make = getattr(self.module, name)
        if name not in self.SHARED:
            return make

        def shared(**kwargs):
            key = f"{name}{sorted(kwargs.items())!r}"
            if key not in self.built:
                self.built[key] = make(**kwargs)
            return self.built[key]
        return shared


class Quiet:
    """img2dataset's SuppressStdoutStderr (fds 1 and 2 point at /dev/null around each
    image, so libjpeg's warnings do not flood the log) with /dev/null and the saved
    descriptors opened once, not twice per image; `close` gives them back."""

    def __init__(self):
        self.null = os.open(os.devnull, os.O_RDWR)
        self.saved = (os.dup(1), os.dup(2))

    def __call__(self) -> "Quiet":  # the resizer writes `with SuppressStdoutStderr():`
        return self

    def __enter__(self) -> None:
        os.dup2(self.null, 1)
        os.dup2(self.null, 2)

    def __exit__(self, *_) -> None:
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)

    def close(self) -> None:
        for fd in (self.null, *self.saved):
            os.close(fd)


@contextmanager
def patched(download: Callable | None = None, cv2: Any = None, reuse: bool = False) -> Iterator[None]:
    """Inside the block, img2dataset's downloader fetches with `download(index, url)
    -> (index, stream or None, error or None)` (the index of the row it fetched: the
    one it was handed, or another of the shard's not yet handed out, as
    frontier.Frontier picks) and its resizer uses `cv2`, and with `reuse`
    its resizer builds each transform once (`SharedTransforms`) and silences libjpeg
    without reopening /dev/null per image (`Quiet`); all are restored on exit. The one
    patch of img2dataset in wit (see the module doc)."""
    from img2dataset import downloader as i2d_downloader
    from img2dataset import resizer as i2d_resizer
    check_version()
    swaps = [(i2d_downloader, "download_image_with_retry"), (i2d_resizer, "cv2"),
             (i2d_resizer, "A"), (i2d_resizer, "SuppressStdoutStderr")]
    for module, name in swaps:
        if not hasattr(module, name):
            raise WitError(f"{module.__name__} has no {name}; wit's fetch supports img2dataset "
                           f"{SUPPORTED}.x; install with -c constraints.txt")
    saved = [getattr(module, name) for module, name in swaps]
    if download is not None:
        def with_retry(row, **_options):  # its timeout/retries/robots options: fetch's own
            return download(*row)
        i2d_downloader.download_image_with_retry = with_retry
    if cv2 is not None:
        i2d_resizer.cv2 = cv2
    quiet = Quiet() if reuse else None
    if reuse:
        i2d_resizer.A = SharedTransforms(i2d_resizer.A)
        i2d_resizer.SuppressStdoutStderr = quiet
    try:
        yield
    finally:
        for (module, name), value in zip(swaps, saved):
            setattr(module, name, value)
        if quiet is not None:
            quiet.close()


def download_shard(shard: int, input_file: Path, out: Path, *, download: Callable, resize: Callable,
                   cv2: Any, threads: int, shard_size: int, oom_shard_count: int, timeout: float,
                   retries: int, encode_format: str) -> Path:
    """Run img2dataset's `Downloader` on one shard's `input_file` (see `write_input`)
    into `out`, with `download` and `cv2` patched in and `resize` injected; returns
    its parquet (one row per sample: status, error_message, width, height,
    original_width, original_height, sha256, by uid). NNNNN.tar and
    NNNNN_stats.json lie beside it."""
    from img2dataset.downloader import Downloader
    from img2dataset.writer import WebDatasetSampleWriter
    downloader = Downloader(
        sample_writer_class=WebDatasetSampleWriter, resizer=resize, thread_count=threads,
        save_caption=True, extract_exif=False, output_folder=str(out), column_list=INPUT_COLUMNS,
        timeout=timeout, number_sample_per_shard=shard_size, oom_shard_count=oom_shard_count,
        compute_hash="sha256", verify_hash_type=None, encode_format=encode_format,
        retries=retries, user_agent_token=None, disallowed_header_directives=None)
    with patched(download, cv2, reuse=True):  # the task owns its worker process: nothing else runs here
        downloader.download_shard((shard, str(input_file)))
    return out / f"{shard:0{oom_shard_count}d}.parquet"
