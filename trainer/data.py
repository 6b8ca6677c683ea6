"""Batches of (image, caption) from WebDataset tar shards.

A worker's path: shard order -> webdataset tar reader -> shuffle buffer -> decode + crop ->
batch (images stay uint8 until they reach the device; captions are tokenized here).

Every random choice is seeded by (seed, segment, rank, worker): the trainer starts a new
segment at each checkpoint step, so a resumed run reads exactly the batches the
uninterrupted run would have read.
"""

import glob
import importlib
import io
import itertools
import json
import math
import random
import tarfile
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import InterpolationMode

from wit_builder.canonical import on_white
from wit_builder.errors import WitError

from .tokenizer import CaptionTokenizer

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image statistics
STD = (0.26862954, 0.26130258, 0.27577711)
MAX_FAILURES_IN_ROW = 200  # a worker that reads this many bad samples in a row gives up


def _fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **_kw):
    """webdataset's opener for object-store URLs (s3://, gs://, …): fsspec, with the
    credentials and endpoint wit-build uses (wit_builder.storage)."""
    from wit_builder import storage
    loc = storage.location(url, "--data")
    return loc.fs.open(loc.path, mode, block_size=max(bufsize, 1 << 24))


for _scheme in ("s3", "gs", "gcs", "az", "abfs"):  # webdataset's own gs:// needs gsutil
    importlib.import_module("webdataset.gopen").gopen_schemes[_scheme] = _fsspec_open


def _published(build) -> list[str] | None:
    """The shards a wit build's publish stage committed, or None if `build` is no build."""
    from wit_builder.build import stage
    if not (build / "_stages" / "publish.json").exists():
        return None
    folder = stage.committed(build, "publish", "shards")
    return sorted(str(p) for p in folder.glob("*.tar"))


def _remote_shards(item: str) -> list[str]:
    from wit_builder import storage
    urls = []
    for pattern in wds.shardlists.expand_urls(item):
        loc = storage.location(pattern, "--data")
        storage.check_reachable(loc, "--data")
        proto = pattern.split("://", 1)[0]
        if glob.has_magic(pattern):
            found = [f"{proto}://{n}" for n in sorted(loc.fs.glob(loc.path))]
        elif loc.fs.isdir(loc.path):
            found = _published(loc)
            if found is None:
                folder = loc / "shards" if (loc / "shards").exists() else loc
                found = sorted(str(p) for p in folder.glob("*.tar"))
        else:
            found = [pattern] if loc.fs.exists(loc.path) else []
        if not found:
            raise WitError(f"--data {item}: {pattern} matches no shards; give a build URL, shard "
                           "URLs, a glob or a brace pattern like 's3://bucket/shards/{00000..00009}.tar'")
        urls += found
    return urls


def resolve_shards(data: str | list[str]) -> list[str]:
    """Shard URLs from a build directory (its published shards), files, globs or brace
    patterns; local paths or object-store URLs."""
    from wit_builder import storage
    urls = []
    for item in [data] if isinstance(data, str) else list(data):
        if storage.scheme(item) not in ("", "http", "https", "pipe") and "://" in item:
            urls += _remote_shards(item)
            continue
        if "://" in item or item.startswith("pipe:"):
            urls += wds.shardlists.expand_urls(item)  # remote: trust the caller
            continue
        path = Path(item)
        if path.is_dir():
            found = _published(path)
            if found is None:
                folder = path / "shards" if (path / "shards").is_dir() else path
                found = sorted(str(p) for p in folder.glob("*.tar"))
            if not found:
                raise WitError(f"--data {item}: no .tar shards in it; give a build directory "
                               "that `wit-build publish` wrote, or shard files")
            urls += found
            continue
        for pattern in wds.shardlists.expand_urls(item):
            found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            missing = [p for p in found if not Path(p).is_file()]
            if not found or missing:
                what = f"{missing[0]} does not exist" if missing else "it matches no files"
                raise WitError(f"--data {item}: {what}; give a build directory, shard files, "
                               "a glob or a brace pattern like 'shards/{00000..00009}.tar'")
            urls += found
    return urls


def count_samples(urls: list[str]) -> int | None:
    """Samples in these shards according to their sizes.json files (open_clip style), if all have one."""
    from wit_builder import storage
    total, cache = 0, {}
    for url in urls:
        if "://" in url and storage.scheme(url) in ("http", "https", "pipe"):
            return None
        path = storage.location(url, "--data")
        sizes_file = path.parent / "sizes.json"
        key = str(sizes_file)
        if key not in cache:
            cache[key] = json.loads(sizes_file.read_text()) if sizes_file.exists() else {}
        if path.name not in cache[key]:
            return None
        total += int(cache[key][path.name])
    return total


def check_shards(urls: list[str], members: int = 200) -> None:
    """Fail early, with a message, when the first local shard holds no image/caption pairs."""
    url = next((u for u in urls if Path(u).is_file()), None)
    if url is None:
        return
    try:
        with tarfile.open(url) as tar:
            names = [m.name for _, m in zip(range(members), tar) if m.isfile()]
    except (tarfile.TarError, OSError) as e:
        raise WitError(f"{url}: not a readable tar shard ({e})") from None
    exts = {n.rsplit(".", 1)[-1].lower() for n in names if "." in n}
    found = ", ".join(sorted("." + e for e in exts)) or "nothing"
    if not exts & set(IMAGE_EXTS):
        raise WitError(f"{url}: no images (.jpg, .jpeg, .png, .webp) in its first {len(names)} files "
                       f"(found {found}); wit-train needs key.jpg + key.txt pairs")
    if "txt" not in exts:
        raise WitError(f"{url}: no captions (.txt) in its first {len(names)} files (found {found}); "
                       "wit-train needs key.jpg + key.txt pairs")


def _shard_captions(url: str):
    if Path(url).is_file():  # a seekable tar: headers are read, image bytes skipped over
        try:
            with tarfile.open(url) as tar:
                for m in tar:
                    if m.isfile() and m.name.lower().endswith(".txt"):
                        yield tar.extractfile(m).read()
        except (tarfile.TarError, OSError):
            return
    else:
        for s in wds.tarfile_samples([dict(url=url)], handler=wds.ignore_and_continue,
                                     select_files=lambda name: name.lower().endswith(".txt")):
            yield s.get("txt", b"")


def read_captions(urls: list[str], limit: int):
    """Up to `limit` captions, shard by shard, for training the tokenizer."""
    captions = (c.decode("utf-8", "replace").strip() for url in urls for c in _shard_captions(url))
    return itertools.islice((c for c in captions if c), limit)


def crop_box(rng: random.Random, width: int, height: int, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, drawing from `rng` instead of torch's global RNG."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height  # fall back to a central crop
    w, h = width, height
    if in_ratio < ratio[0]:
        h = round(w / ratio[0])
    elif in_ratio > ratio[1]:
        w = round(h * ratio[1])
    return (height - h) // 2, (width - w) // 2, h, w


def load_image(data: bytes, size: int) -> Image.Image:
    """Encoded bytes -> RGB, transparent areas composited on white as fetch stores them
    (convert("RGB") would show the hidden pixels, often black)."""
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (size, size))  # JPEG: decode at the smallest scale still >= size (much faster)
    return on_white(im)


def train_image(im: Image.Image, size: int, rng: random.Random) -> torch.Tensor:
    """Random resized crop (the paper's only augmentation), as uint8 (3, size, size)."""
    top, left, h, w = crop_box(rng, *im.size)
    im = TF.resized_crop(im, top, left, h, w, [size, size], InterpolationMode.BICUBIC, antialias=True)
    return TF.pil_to_tensor(im)


def eval_image(im: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side, centre crop, as uint8 (3, size, size)."""
    im = TF.center_crop(TF.resize(im, size, InterpolationMode.BICUBIC, antialias=True), size)
    return TF.pil_to_tensor(im)


_STATS: dict = {}  # device -> (mean, std), made once: a fresh host->GPU copy would sync every step


def normalize(images: torch.Tensor, device) -> torch.Tensor:
    """uint8 batch -> float, normalised with CLIP's statistics, on `device`."""
    images = images.to(device, non_blocking=True).float().div_(255)
    device = images.device
    if device not in _STATS:
        _STATS[device] = (torch.tensor(MEAN, device=device).view(1, 3, 1, 1),
                          torch.tensor(STD, device=device).view(1, 3, 1, 1))
    mean, std = _STATS[device]
    return images.sub_(mean).div_(std)


class ShardStream(IterableDataset):
    """Batches dict(images=uint8 (B,3,S,S), tokens=(B,T), skipped=int, error=str|None).

    train=True: endless. Each epoch is a seeded shard permutation split across
    processes x workers; with too few shards (or resample=True) each worker draws shards
    with replacement, so no process ever runs dry. train=False: one pass, no shuffling,
    centre crops, the last short batch included.
    A batch with key "fatal" says the worker found nothing readable.
    """

    def __init__(self, urls, tokenizer: CaptionTokenizer, image_size: int, batch_size: int, *,
                 train: bool = True, seed: int = 0, segment: int = 0, rank: int = 0, world: int = 1,
                 resample: bool = False, shuffle_buffer: int = 1000, trim_text: bool = True):
        super().__init__()
        self.urls, self.tokenizer_json = list(urls), tokenizer.to_str()
        self.context_length = tokenizer.context_length
        self.image_size, self.batch_size, self.train = image_size, batch_size, train
        self.seed, self.segment, self.rank, self.world = seed, segment, rank, world
        self.resample, self.shuffle_buffer, self.trim_text = resample, shuffle_buffer, trim_text

    def shard_order(self, slot: int, slots: int, rng: random.Random):
        if not self.train:
            yield from (dict(url=u) for u in self.urls[slot::slots])
            return
        if self.resample or len(self.urls) < slots:
            while True:
                yield dict(url=rng.choice(self.urls))
        for epoch in itertools.count():  # the same permutation in every worker of every process
            order = list(self.urls)
            random.Random(f"{self.seed}/{self.segment}/epoch{epoch}").shuffle(order)
            yield from (dict(url=u) for u in order[slot::slots])

    def skip(self, exn: Exception) -> bool:
        """webdataset's error handler: count the bad sample (or unreadable shard) and go on."""
        self.skipped += 1
        self.failures_in_row += 1
        self.error = self.error or f"{type(exn).__name__}: {exn}"[:300]
        return self.failures_in_row < MAX_FAILURES_IN_ROW

    def decode(self, sample: dict, rng: random.Random):
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        where = f"{sample.get('__key__')} in {sample.get('__url__')}"
        if ext is None or "txt" not in sample:
            raise ValueError(f"{where}: no {'image' if ext is None else 'caption'}")
        caption = sample["txt"].decode("utf-8", "replace").strip()
        if not caption:
            raise ValueError(f"{where}: empty caption")
        try:
            im = load_image(sample[ext], self.image_size)
        except Exception as e:
            raise ValueError(f"{where}: {e}") from None
        image = train_image(im, self.image_size, rng) if self.train else eval_image(im, self.image_size)
        return image, caption

    def collate(self, images, captions, tokenizer):
        tokens = tokenizer(captions)
        if self.trim_text:
            tokens = tokens[:, : int((tokens == tokenizer.end_id).int().argmax(1).max()) + 1]
        batch = dict(images=torch.stack(images), tokens=tokens, skipped=self.skipped, error=self.error)
        self.skipped, self.error = 0, None
        return batch

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        slot, slots = self.rank * workers + worker, self.world * workers
        rng = random.Random(f"{self.seed}/{self.segment}/{slot}")
        tokenizer = CaptionTokenizer.from_str(self.tokenizer_json, self.context_length)
        self.skipped, self.failures_in_row, self.error = 0, 0, None
        samples = wds.tarfile_samples(self.shard_order(slot, slots, rng), handler=self.skip)
        if self.train:
            samples = wds.shuffle(self.shuffle_buffer, min(100, self.shuffle_buffer), rng=rng)(samples)
        images, captions = [], []
        for sample in samples:
            try:
                image, caption = self.decode(sample, rng)
            except ValueError as e:
                if not self.skip(e):
                    break
                continue
            self.failures_in_row = 0
            images.append(image)
            captions.append(caption)
            if len(images) == self.batch_size:
                yield self.collate(images, captions, tokenizer)
                images, captions = [], []
        if self.failures_in_row >= MAX_FAILURES_IN_ROW:
            yield dict(fatal=f"{MAX_FAILURES_IN_ROW} unreadable samples in a row, e.g. {self.error}")
        elif images and not self.train:
            yield self.collate(images, captions, tokenizer)


def loader(stream: ShardStream, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      prefetch_factor=4 if workers else None)
