"""wit-train and wit-train eval see images as the builder stored them: transparency on white."""
from __future__ import annotations

import io
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from trainer.data import ShardStream, eval_image, load_image
from trainer.tokenizer import train_bpe


def silhouette(mode: str) -> bytes:
    """A black disc on a transparent background whose hidden pixels are black too."""
    mask = Image.new("L", (64, 48), 0)
    ImageDraw.Draw(mask).ellipse([20, 12, 44, 36], fill=255)
    im = Image.new("RGBA", mask.size, (0, 0, 0, 0))
    im.putalpha(mask)
    buf = io.BytesIO()
    if mode == "RGBA":
        im.save(buf, "PNG")
    elif mode == "LA":
        im.convert("LA").save(buf, "PNG")
    elif mode == "P":  # palette with transparency given as bytes (PIL warns on convert)
        p = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8), "P")
        p.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)
        p.save(buf, "PNG", transparency=bytes([0, 255]))
    elif mode == "WEBP":
        im.save(buf, "WEBP", lossless=True)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "WEBP"])
def test_transparent_images_load_on_white_without_warnings(mode):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's palette-transparency warning would raise
        im = load_image(silhouette(mode), 32)
    a = np.asarray(im)
    assert im.mode == "RGB" and a.shape == (48, 64, 3)
    assert (a[0, 0] == 255).all() and (a[24, 32] < 10).all()  # white around, black disc
    assert (a.min(axis=2) > 200).mean() > 0.7  # mostly white, not mostly black
    t = eval_image(im, 32)
    assert t.dtype == torch.uint8 and t.float().mean() > 180


def test_opaque_images_load_as_before():
    im = Image.new("RGB", (40, 30), (200, 30, 40))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    a = np.asarray(load_image(buf.getvalue(), 32))
    assert np.abs(a.astype(int) - (200, 30, 40)).max() < 6


def test_training_batches_show_transparent_pngs_on_white(tmp_path):
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            for name, data in ((f"{i:05d}.png", silhouette("RGBA")), (f"{i:05d}.txt", b"a black disc")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tok = train_bpe(["a black disc"] * 20, vocab_size=300, context_length=8)
    batch = next(iter(ShardStream([str(shard)], tok, 32, 4, train=False)))
    assert batch["skipped"] == 0 and batch["images"].shape == (4, 3, 32, 32)
    assert batch["images"].float().mean() > 180  # on white; convert("RGB") gave ~70
