"""Evaluation: zero-shot classification with prompt ensembles, and image<->text retrieval recall@k."""

from pathlib import Path

import torch

from wit_builder.errors import WitError

from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import IMAGE_EXTS, ShardStream, eval_image, load_image, loader, normalize, resolve_shards

# A few of CLIP's ImageNet prompt templates (the paper's Appendix); their ensemble is the default.
TEMPLATES = (
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a close-up photo of a {}.",
    "a bright photo of a {}.", "a cropped photo of a {}.", "a photo of the large {}.",
    "a photo of the small {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of a {}.",
    "a drawing of a {}.", "a rendering of a {}.", "a good photo of a {}.", "itap of a {}.",
    "art of the {}.", "a low resolution photo of the {}.", "a photo of a nice {}.", "a {}.",
)


def clip80() -> list[str]:
    """The 80 prompt templates of CLIP's ImageNet evaluation (as open_clip ships them)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def pick_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WitError(f"--device {device}: no CUDA device is visible here; use --device cpu or auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load(checkpoint, device):
    model, tokenizer = model_from_checkpoint(load_checkpoint(checkpoint))
    return model.to(device), tokenizer


def read_lines(path, flag: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise WitError(f"{flag} {path}: no such file")
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


@torch.no_grad()
def class_embeddings(model, tokenizer, classnames: list[str], templates, device) -> torch.Tensor:
    """(templates, classes, dim): each prompt's normalised text feature."""
    prompts = [t.format(c) for t in templates for c in classnames]
    tokens = tokenizer(prompts).to(device)
    features = torch.cat([model.encode_text(tokens[i: i + 256]) for i in range(0, len(tokens), 256)])
    return features.view(len(templates), len(classnames), -1)


def zero_shot(checkpoint, image_dir, classnames=None, templates=None, batch_size: int = 64,
              device: str = "auto") -> dict:
    """Classify image_dir/<class>/<image> by the nearest class prompt.

    classnames: None (folder names, '_' read as space), a list in sorted-folder order, or a
    file with one name per line in that order. templates: None (TEMPLATES), a list of strings
    with '{}', or a file with one per line. Returns accuracy (prompt ensemble), accuracy of the
    first template alone, chance, per-class accuracy and n.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise WitError(f"--images {image_dir}: no such folder (want image_dir/<class>/<image>)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    files = [(i, f) for i, d in enumerate(folders) for f in sorted(d.iterdir())
             if f.suffix.lower().lstrip(".") in IMAGE_EXTS]
    if len(folders) < 2 or not files:
        raise WitError(f"--images {image_dir}: want at least two class folders holding "
                       f"{'/'.join(IMAGE_EXTS)} images; found {len(folders)} folders, {len(files)} images")
    if classnames is None:
        classnames = [d.name.replace("_", " ") for d in folders]
    elif isinstance(classnames, (str, Path)):
        classnames = read_lines(classnames, "--classnames")
    if len(classnames) != len(folders):
        raise WitError(f"--classnames: {len(classnames)} names for {len(folders)} class folders; "
                       "give one name per folder, in sorted folder order")
    if templates is None:
        templates = TEMPLATES
    elif templates == "clip80":
        templates = clip80()
    elif isinstance(templates, (str, Path)):
        templates = read_lines(templates, "--templates")
    if not templates or any("{}" not in t for t in templates):
        raise WitError("--templates: each template needs a '{}' where the class name goes")
    device = pick_device(device)
    model, tokenizer = load(checkpoint, device)
    per_template = class_embeddings(model, tokenizer, list(classnames), templates, device)
    ensemble = torch.nn.functional.normalize(per_template.mean(0), dim=-1)
    size = model.cfg.image_size
    predictions, single, labels, unreadable, top5 = [], [], [], [], []
    with torch.no_grad():
        for i in range(0, len(files), batch_size):
            chunk, images = [], []
            for c, f in files[i: i + batch_size]:
                try:
                    images.append(eval_image(load_image(f.read_bytes(), size), size))
                    chunk.append((c, f))
                except Exception:
                    unreadable.append(str(f))
            if not chunk:
                continue
            features = model.encode_image(normalize(torch.stack(images), device))
            logits = features @ ensemble.T
            predictions.append(logits.argmax(-1).cpu())
            top5.append(logits.topk(min(5, logits.shape[1]), dim=-1).indices.cpu())
            single.append((features @ per_template[0].T).argmax(-1).cpu())
            labels.append(torch.tensor([c for c, _ in chunk]))
    if not labels:
        raise WitError(f"--images {image_dir}: none of the {len(files)} images could be read")
    predictions, single, labels = torch.cat(predictions), torch.cat(single), torch.cat(labels)
    correct = predictions == labels
    per_class = {name: correct[labels == c].float().mean().item() if (labels == c).any() else None
                 for c, name in enumerate(classnames)}
    recalls = [v for v in per_class.values() if v is not None]
    return {"accuracy": correct.float().mean().item(),
            "accuracy_top5": (torch.cat(top5) == labels[:, None]).any(1).float().mean().item(),
            "mean_per_class_recall": sum(recalls) / len(recalls),
            "accuracy_single_template": (single == labels).float().mean().item(),
            "chance": 1 / len(classnames), "per_class": per_class, "n": len(labels),
            "classes": len(classnames), "templates": len(templates), "unreadable": unreadable}


def recall_at(similarity: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Row i's match is column i; recall@k = share of rows whose match ranks in the top k."""
    target = similarity.diagonal().unsqueeze(1)
    rank = (similarity > target).sum(1)  # how many candidates beat the true match
    return {k: (rank < k).float().mean().item() for k in ks}


def retrieval(checkpoint, shards, batch_size: int = 64, device: str = "auto", workers: int = 0) -> dict:
    """Image->text and text->image recall@1/5/10 over every readable pair in held-out shards."""
    device = pick_device(device)
    model, tokenizer = load(checkpoint, device)
    stream = ShardStream(resolve_shards(shards), tokenizer, model.cfg.image_size, batch_size, train=False)
    image_features, text_features, skipped = [], [], 0
    with torch.no_grad():
        for batch in loader(stream, workers):
            if "fatal" in batch:
                raise WitError(f"--shards: {batch['fatal']}")
            skipped += batch["skipped"]
            image_features.append(model.encode_image(normalize(batch["images"], device)).cpu())
            text_features.append(model.encode_text(batch["tokens"].to(device)).cpu())
    if not image_features:
        raise WitError(f"--shards {shards}: no readable image/caption pairs")
    images, texts = torch.cat(image_features), torch.cat(text_features)
    similarity = images @ texts.T
    i2t, t2i = recall_at(similarity), recall_at(similarity.T)
    result = {f"image_to_text_R@{k}": v for k, v in i2t.items()}
    result.update({f"text_to_image_R@{k}": v for k, v in t2i.items()})
    result.update(n=len(images), skipped=skipped)
    return result
