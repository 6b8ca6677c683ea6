"""Small real worlds for the trainer tests: shards of synthetic captioned images.

The task: an image shows a coloured shape on a grey background; its caption names both in
one of several phrasings. A model that learns it can classify new images zero-shot by
colour ("a photo of a red thing") or by shape.
"""

import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 220, 40),
    "purple": (140, 40, 170), "orange": (250, 140, 20), "white": (250, 250, 250), "black": (10, 10, 10),
}
SHAPES = ("circle", "square", "triangle", "cross")
PHRASES = (
    "a {color} {shape}", "a photo of a {color} {shape} on grey", "{color} {shape}",
    "the {shape} is {color}", "a picture showing one {color} {shape}", "{shape} in {color}",
)


def draw(color: str, shape: str, size: int, rng: random.Random) -> Image.Image:
    g = rng.randint(90, 160)
    im = Image.new("RGB", (size, size), (g, g, g))
    d = ImageDraw.Draw(im)
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLORS[color])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = r / 3
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    return im


def encode(im: Image.Image, fmt: str = "jpeg") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=90) if fmt == "jpeg" else im.save(buf, format=fmt)
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(folder, shards: int = 2, per_shard: int = 32, size: int = 32, seed: int = 0,
                corrupt: tuple = (), image_ext: str = "jpg") -> list[str]:
    """Write a build-directory style shards/ folder (like `wit-build publish`) and return the paths.

    `corrupt` lists global sample indices whose image bytes are garbage.
    """
    rng = random.Random(seed)
    out = Path(folder) / "shards"
    out.mkdir(parents=True, exist_ok=True)
    paths, sizes, index = [], {}, 0
    for s in range(shards):
        path = out / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(per_shard):
                color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
                key = f"{s:05d}{index:04d}"
                image = encode(draw(color, shape, size, rng), "jpeg" if image_ext == "jpg" else image_ext)
                if index in corrupt:
                    image = b"\xff\xd8\xff\xe0 this is not a jpeg" + bytes(50)
                caption = rng.choice(PHRASES).format(color=color, shape=shape)
                add_member(tar, f"{key}.{image_ext}", image)
                add_member(tar, f"{key}.txt", caption.encode())
                add_member(tar, f"{key}.json", json.dumps({"uid": key, "color": color, "shape": shape}).encode())
                index += 1
        sizes[path.name] = per_shard
        paths.append(str(path))
    (out / "sizes.json").write_text(json.dumps(sizes))
    return paths


def make_image_folder(folder, per_class: int = 10, size: int = 32, seed: int = 1, by: str = "color") -> Path:
    """image_dir/<class>/*.png for zero-shot evaluation, classes being colours or shapes."""
    rng = random.Random(seed)
    root = Path(folder)
    classes = list(COLORS) if by == "color" else list(SHAPES)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            color = name if by == "color" else rng.choice(list(COLORS))
            shape = name if by == "shape" else rng.choice(SHAPES)
            draw(color, shape, size, rng).save(root / name / f"{i}.png")
    return root


def open_clip_zero_shot(model_dir, image_dir, tokenize, templates) -> tuple[float, "object"]:
    """Zero-shot accuracy on image_dir/<class>/<image> computed entirely by open_clip (its
    model loaded from `local-dir:model_dir`, its preprocessing), prompts tokenized by
    `tokenize`; returns (accuracy, the per-template class embeddings)."""
    import open_clip
    import torch
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    root = Path(image_dir)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    classes = [d.name.replace("_", " ") for d in folders]
    with torch.no_grad():
        text = torch.stack([model.encode_text(tokenize([t.format(c) for c in classes]), normalize=True)
                            for t in templates])
        weights = torch.nn.functional.normalize(text.mean(0), dim=-1)
        correct = []
        for label, folder in enumerate(folders):
            for f in sorted(folder.iterdir()):
                x = preprocess(Image.open(f).convert("RGB")).unsqueeze(0)
                correct.append(int((model.encode_image(x, normalize=True) @ weights.T).argmax()) == label)
    return sum(correct) / len(correct), text


def checkpoint_of(path, name: str, tokenizer, seed: int = 0, **overrides):
    """A wit checkpoint of a `name` model whose every weight and BatchNorm statistic is
    random (a fresh init leaves the ResNet's blocks as identities and its statistics at 0/1)."""
    import torch

    from trainer.checkpoint import save_checkpoint
    from trainer.model import CLIP, model_config
    torch.manual_seed(seed)
    cfg = model_config(name, vocab_size=tokenizer.vocab_size, eot_id=tokenizer.end_id, **overrides)
    model = CLIP(cfg)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.05)
                if key.endswith("running_var"):
                    t.abs_().add_(0.5)
    save_checkpoint(path, {"model": model.state_dict(), "model_config": cfg.to_dict(),
                           "tokenizer": tokenizer.to_str(), "tokenizer_kind": tokenizer.kind})
    return path
