"""wit-train eval as the field reports it: top-1/top-5, CLIP's 80 templates, retrieval on an
image folder, CLIP_benchmark's JSON."""

import json
import shutil

import torch

from tests.support.trainer import checkpoint_of, make_image_folder
from trainer.checkpoint import load_checkpoint, model_from_checkpoint
from trainer.cli import main
from trainer.data import eval_image, load_image, normalize
from trainer.evaluate import class_embeddings, clip80
from trainer.tokenizer import clip_bpe

torch.set_num_threads(2)


def test_clip80_is_clip_s_imagenet_templates():
    t = clip80()
    assert len(t) == 80 == len(set(t)) and all(x.count("{}") == 1 for x in t)
    assert t[0] == "a bad photo of a {}." and "itap of a {}." in t and t[-1] == "a tattoo of the {}."


def test_eval_writes_top5_retrieval_and_clip_benchmark_json(tmp_path, capsys):
    images = make_image_folder(tmp_path / "colours", per_class=2, size=32)
    captioned = tmp_path / "captioned"
    for f in sorted(images.rglob("*.png"))[::2]:  # one picture per colour, its caption beside it
        (captioned / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, captioned / f.parent.name / f.name)
        (captioned / f.parent.name / f.name).with_suffix(".txt").write_text(f"a {f.parent.name} thing")
    (tmp_path / "run").mkdir()
    ckpt = checkpoint_of(tmp_path / "run" / "checkpoint.pt", "tiny", clip_bpe(), image_size=32)
    out = tmp_path / "results" / "{dataset}_{model}_{task}.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--images", str(images), "--templates", "clip80",
                 "--retrieval-images", str(captioned), "--output", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    ours = json.loads((tmp_path / "run" / "eval.json").read_text())
    zs = ours["zero_shot"]
    assert zs["templates"] == 80 and zs["n"] == 16

    # top-1 and top-5 recomputed here from the same model and prompts
    model, tok = model_from_checkpoint(load_checkpoint(ckpt))
    classes = sorted(p.name for p in images.iterdir())
    with torch.no_grad():
        weights = torch.nn.functional.normalize(class_embeddings(model, tok, classes, clip80(), "cpu").mean(0), dim=-1)
        files = [(c, f) for c, name in enumerate(classes) for f in sorted((images / name).iterdir())]
        x = torch.stack([eval_image(load_image(f.read_bytes(), 32), 32) for _, f in files])
        logits = model.encode_image(normalize(x, "cpu")) @ weights.T
    labels = torch.tensor([c for c, _ in files])
    top5 = (logits.topk(5, dim=-1).indices == labels[:, None]).any(1).float().mean().item()
    assert abs(zs["accuracy"] - (logits.argmax(-1) == labels).float().mean().item()) < 1e-6
    assert abs(zs["accuracy_top5"] - top5) < 1e-6 and zs["accuracy"] <= zs["accuracy_top5"]

    cls = json.loads((tmp_path / "results" / "colours_tiny_zeroshot_classification.json").read_text())
    assert set(cls) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert (cls["dataset"], cls["model"], cls["task"], cls["language"]) == (
        "colours", "tiny", "zeroshot_classification", "en")
    assert cls["metrics"] == {"acc1": zs["accuracy"], "acc5": zs["accuracy_top5"],
                              "mean_per_class_recall": zs["mean_per_class_recall"]}
    ret = json.loads((tmp_path / "results" / "captioned_tiny_zeroshot_retrieval.json").read_text())
    r = ours["folder_retrieval"]
    assert r["n"] == 8 and r["image_to_text_R@10"] == r["text_to_image_R@10"] == 1.0  # 8 candidates
    assert ret["metrics"]["image_retrieval_recall@1"] == r["text_to_image_R@1"]
    assert ret["metrics"]["text_retrieval_recall@5"] == r["image_to_text_R@5"]
    assert r["image_to_text_R@1"] <= r["image_to_text_R@5"] <= 1.0


def test_eval_explains_a_folder_without_captions(tmp_path, capsys):
    images = make_image_folder(tmp_path / "colours", per_class=1, size=32)
    (tmp_path / "run").mkdir()
    ckpt = checkpoint_of(tmp_path / "run" / "checkpoint.pt", "tiny", clip_bpe(), image_size=32)
    assert main(["eval", "--checkpoint", str(ckpt), "--retrieval-images", str(images)]) == 2
    assert "NAME.jpg + NAME.txt" in capsys.readouterr().err
