"""wit-train export --format open_clip: open_clip loads the model and computes what wit computes."""

import pytest
import torch

from tests.support.trainer import PHRASES, checkpoint_of, make_image_folder, open_clip_zero_shot
from trainer.checkpoint import load_checkpoint, model_from_checkpoint
from trainer.cli import main
from trainer.evaluate import zero_shot
from trainer.export import WEIGHTS
from trainer.tokenizer import CaptionTokenizer, clip_bpe, train_bpe

torch.set_num_threads(2)
CAPTIONS = ["a photo of a red circle", "the square is blue", "a picture showing one green cross",
            "Ein Fuchs im Schnee — 狐狸", ""]


def export(ckpt, out) -> None:
    assert main(["export", str(ckpt), str(out), "--format", "open_clip"]) == 0


def same_features(wit, oc, tokens, size: int) -> None:
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(oc.encode_image(images, normalize=True), wit.encode_image(images),
                                   atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(oc.encode_text(tokens, normalize=True), wit.encode_text(tokens),
                                   atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(oc.logit_scale.exp(), wit.logit_scale.exp())


@pytest.mark.parametrize("name", ["tiny", "tiny-rn"])
def test_tiny_sizes_with_a_build_tokenizer_export_through_a_custom_config(name, tmp_path):
    import open_clip
    tok = train_bpe([p.format(color=c, shape=s) for p in PHRASES for c in ("red", "blue", "green")
                     for s in ("circle", "square", "cross")] * 3, vocab_size=400)
    ckpt = checkpoint_of(tmp_path / "ckpt.pt", name, tok)
    export(ckpt, tmp_path / "oc")
    wit, wtok = model_from_checkpoint(load_checkpoint(ckpt))
    oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    oc.eval()
    exported = CaptionTokenizer.from_file(tmp_path / "oc" / "tokenizer.json")
    assert torch.equal(exported(CAPTIONS), wtok(CAPTIONS))
    same_features(wit, oc, wtok(CAPTIONS), wit.cfg.image_size)


@pytest.mark.slow
@pytest.mark.parametrize("name,builtin", [("vit-b-32", "ViT-B-32"), ("rn50", "RN50")])
def test_the_paper_s_sizes_load_into_open_clip_s_own_architectures(name, builtin, tmp_path):
    """With CLIP's tokenizer the export is open_clip's ViT-B-32 / RN50, tokenizer included."""
    import open_clip
    ckpt = checkpoint_of(tmp_path / "ckpt.pt", name, clip_bpe())
    export(ckpt, tmp_path / "oc")
    wit, wtok = model_from_checkpoint(load_checkpoint(ckpt))
    assert open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")(CAPTIONS).equal(wtok(CAPTIONS))
    # open_clip's built-in config, weights from the export (strict load): the same model
    oc = open_clip.create_model(builtin, pretrained=str(tmp_path / "oc" / WEIGHTS)).eval()
    same_features(wit, oc, open_clip.tokenize(CAPTIONS), 224)


def test_zero_shot_scores_the_same_through_open_clip(tmp_path):
    """wit-train eval's zero-shot and the same classification done entirely in open_clip
    (its model, its preprocessing, its tokenizer) agree."""
    import open_clip

    from trainer.evaluate import TEMPLATES, class_embeddings
    images = make_image_folder(tmp_path / "eval", per_class=3, size=48)
    ckpt = checkpoint_of(tmp_path / "ckpt.pt", "tiny", clip_bpe(), image_size=32)
    export(ckpt, tmp_path / "oc")
    ours = zero_shot(ckpt, images, device="cpu")
    accuracy, text = open_clip_zero_shot(tmp_path / "oc", images,
                                         open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}"), TEMPLATES)
    assert ours["accuracy"] == pytest.approx(accuracy)
    wit, wtok = model_from_checkpoint(load_checkpoint(ckpt))
    classes = sorted(p.name for p in images.iterdir())
    torch.testing.assert_close(class_embeddings(wit, wtok, classes, TEMPLATES, "cpu"), text,
                               atol=2e-5, rtol=1e-4)


def test_export_refuses_a_folder_with_files_in_it(tmp_path, capsys):
    ckpt = checkpoint_of(tmp_path / "ckpt.pt", "tiny", clip_bpe())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["export", str(ckpt), str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_clip_benchmark_scores_the_exported_model_as_wit_train_eval_does(tmp_path, capsys):
    """CLIP_benchmark's own zero-shot classification (clip_benchmark.metrics), on the
    exported model as open_clip loads it, over a torchvision ImageFolder with open_clip's
    preprocessing, gives the acc1, acc5 and mean per-class recall that `wit-train eval`
    writes in CLIP_benchmark's JSON for the same images and prompts."""
    import json

    import open_clip
    from clip_benchmark.metrics import zeroshot_classification
    from torchvision.datasets import ImageFolder

    from trainer.evaluate import TEMPLATES
    images = make_image_folder(tmp_path / "eval", per_class=4, size=48)
    ckpt = checkpoint_of(tmp_path / "ckpt.pt", "tiny", clip_bpe(), image_size=32)
    export(ckpt, tmp_path / "oc")
    assert main(["eval", "--checkpoint", str(ckpt), "--images", str(images),
                 "--output", str(tmp_path / "{dataset}_{task}.json")]) == 0
    capsys.readouterr()
    ours = json.loads((tmp_path / "eval_zeroshot_classification.json").read_text())["metrics"]
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    model.eval()
    data = ImageFolder(str(images), transform=preprocess)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")
    # CLIP_benchmark's own classifier and classification; its `evaluate` ends in
    # `accuracy()`, whose float() of a 1-element array NumPy >= 2.4 refuses, so its last
    # step (top-k and sklearn's balanced accuracy, as `evaluate` computes them) is here.
    classifier = zeroshot_classification.zero_shot_classifier(
        model, tokenizer, data.classes, [t.replace("{}", "{c}") for t in TEMPLATES], "cpu", amp=False)
    logits, target = zeroshot_classification.run_classification(
        model, classifier, torch.utils.data.DataLoader(data, batch_size=8), "cpu", amp=False)
    from sklearn.metrics import balanced_accuracy_score
    top5 = logits.topk(5, 1).indices
    theirs = {"acc1": (top5[:, 0] == target).float().mean().item(),
              "acc5": (top5 == target[:, None]).any(1).float().mean().item(),
              "mean_per_class_recall": balanced_accuracy_score(target, logits.argmax(1))}
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (key, ours, theirs)
    # and CLIP_benchmark's own table builder reads the JSON wit wrote
    import csv
    import subprocess
    import sys
    table = tmp_path / "benchmark.csv"
    subprocess.run([sys.executable, "-m", "clip_benchmark.cli", "build",
                    str(tmp_path / "eval_zeroshot_classification.json"), "--output", str(table)],
                   check=True, capture_output=True)
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 1 and rows[0]["task"] == "zeroshot_classification"
    assert float(rows[0]["acc1"]) == pytest.approx(theirs["acc1"]) and rows[0]["dataset"] == "eval"
