"""Results the field can compare: retrieval on image folders, and CLIP_benchmark's JSON.

CLIP_benchmark (`clip_benchmark eval`) writes one JSON object per dataset and task:

    {"dataset": ..., "model": ..., "pretrained": ..., "task": "zeroshot_classification",
     "metrics": {"acc1": ..., "acc5": ..., "mean_per_class_recall": ...}, "language": "en"}

and for "zeroshot_retrieval" the metrics `image_retrieval_recall@k` (text -> image) and
`text_retrieval_recall@k` (image -> text). `wit-train eval` writes the same, to the
path template `--output` ({dataset}, {model}, {task} filled in), so its numbers sit in
the same tables as CLIP_benchmark's.
"""

import json
from pathlib import Path

import torch

from wit_builder.errors import WitError

from .data import IMAGE_EXTS, eval_image, load_image, normalize


def caption_pairs(image_dir) -> list[tuple[Path, str]]:
    """(image, caption) for every image under image_dir with a `.txt` of the same stem."""
    root = Path(image_dir)
    if not root.is_dir():
        raise WitError(f"--retrieval-images {image_dir}: no such folder")
    pairs = []
    for f in sorted(root.rglob("*")):
        if f.suffix.lower().lstrip(".") in IMAGE_EXTS and f.with_suffix(".txt").is_file():
            pairs.append((f, f.with_suffix(".txt").read_text().strip()))
    if len(pairs) < 2:
        raise WitError(f"--retrieval-images {image_dir}: want at least two images with a caption "
                       f"beside each (NAME.jpg + NAME.txt); found {len(pairs)}")
    return pairs


@torch.no_grad()
def folder_retrieval(model, tokenizer, image_dir, batch_size: int = 64, device="cpu") -> dict:
    """Image->text and text->image recall@1/5/10 over an image folder's captioned images."""
    from .evaluate import recall_at
    pairs = caption_pairs(image_dir)
    size = model.cfg.image_size
    images, texts = [], []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i: i + batch_size]
        x = torch.stack([eval_image(load_image(f.read_bytes(), size), size) for f, _ in chunk])
        images.append(model.encode_image(normalize(x, device)).cpu())
        texts.append(model.encode_text(tokenizer([c for _, c in chunk]).to(device)).cpu())
    similarity = torch.cat(images) @ torch.cat(texts).T
    i2t, t2i = recall_at(similarity), recall_at(similarity.T)
    return {**{f"image_to_text_R@{k}": v for k, v in i2t.items()},
            **{f"text_to_image_R@{k}": v for k, v in t2i.items()}, "n": len(pairs)}


def clip_benchmark_records(result: dict, model: str, checkpoint, datasets: dict) -> list[dict]:
    """CLIP_benchmark's result objects for wit-train eval's `result` ({"zero_shot": ...,
    "retrieval": ..., "folder_retrieval": ...}); `datasets` names each part's dataset."""
    out = []

    def record(task: str, key: str, metrics: dict) -> None:
        out.append({"dataset": datasets[key], "model": model, "pretrained": str(checkpoint),
                    "task": task, "metrics": metrics, "language": "en"})
    if "zero_shot" in result:
        zs = result["zero_shot"]
        record("zeroshot_classification", "zero_shot", {
            "acc1": zs["accuracy"], "acc5": zs["accuracy_top5"],
            "mean_per_class_recall": zs["mean_per_class_recall"]})
    for key in ("retrieval", "folder_retrieval"):
        if key in result:
            r = result[key]
            metrics = {}
            for k in (1, 5, 10):
                metrics[f"image_retrieval_recall@{k}"] = r[f"text_to_image_R@{k}"]
                metrics[f"text_retrieval_recall@{k}"] = r[f"image_to_text_R@{k}"]
            record("zeroshot_retrieval", key, metrics)
    return out


def write_records(records: list[dict], template: str) -> list[Path]:
    """Each record to `template` with {dataset}, {model}, {task} filled in."""
    paths = []
    for rec in records:
        try:
            path = Path(template.format(dataset=rec["dataset"], model=rec["model"], task=rec["task"]))
        except (KeyError, IndexError) as e:
            raise WitError(f"--output {template}: unknown placeholder {e}; use {{dataset}}, "
                           "{model}, {task}") from None
        if path in paths:
            raise WitError(f"--output {template}: two results would go to {path}; add {{task}} "
                           "or {dataset} to the name")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=2) + "\n")
        paths.append(path)
    return paths
