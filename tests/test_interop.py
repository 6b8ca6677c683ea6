"""wit's shards in the field's tools: open_clip's trainer, Hugging Face datasets."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from publish_fixture import make_published
from wit_builder import cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytestmark = pytest.mark.slow  # Ray, a published build, open_clip's trainer

# wit's `tiny` shape as an open_clip model config (CLIP's vocabulary: open_clip_train
# tokenizes with CLIP's BPE); no weights beside it, so open_clip starts from its own init
TINY = {"embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4}}


@pytest.fixture(scope="module")
def pub(tmp_path_factory, ray_cluster):
    return make_published(tmp_path_factory.mktemp("interop") / "wit-data")


def open_clip_flags(build, capsys) -> list[str]:
    assert cli.main(["export", "open_clip", "--out", str(build)]) == 0
    return capsys.readouterr().out.split()


def test_export_open_clip_prints_the_shards_and_their_count(pub, capsys):
    flags = open_clip_flags(pub, capsys)
    assert flags[0] == "--train-data" and flags[1].endswith("/{00000..00003}.tar")
    assert flags[2:] == ["--train-num-samples", "15", "--dataset-type", "webdataset"]
    assert cli.main(["export", "open_clip", "--out", str(pub / "nowhere")]) == 2
    assert "publish stage has not finished" in capsys.readouterr().err


def test_open_clip_trains_on_the_published_shards(pub, tmp_path, capsys):
    """open_clip's own entry point, on the shards as published: a few steps, loss logged."""
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    cmd = [sys.executable, "-m", "open_clip_train.main", *open_clip_flags(pub, capsys),
           "--model", f"local-dir:{model}", "--batch-size", "4", "--workers", "1",
           "--epochs", "1", "--warmup", "1", "--log-every-n-steps", "1", "--precision", "fp32",
           "--report-to", "", "--save-frequency", "0", "--logs", str(tmp_path / "logs"),
           "--name", "wit", "--seed", "0"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "logs" / "wit" / "out.log").read_text() if (
        tmp_path / "logs" / "wit" / "out.log").exists() else ""
    assert run.returncode == 0, run.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"Contrastive_loss: ([0-9.]+) \(", log)]
    assert len(losses) == 4  # 15 samples from sizes.json, batches of 4: 4 steps
    assert all(0 < x < 10 for x in losses)
    assert "[16/16 (100%)]" in log


def front_matter(readme) -> dict:
    import yaml
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_export_hf_loads_with_load_dataset_and_no_configuration(pub, tmp_path, capsys):
    import datasets
    out = tmp_path / "hf"
    assert cli.main(["export", "hf", str(out), "--out", str(pub)]) == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"0000{i}.tar" for i in range(4)]
    meta = front_matter(out / "README.md")
    assert meta["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": "train/*.tar"}]}]
    assert meta["size_categories"] == ["n<1K"] and "license" in meta
    assert meta["dataset_info"]["splits"] == [{"name": "train", "num_examples": 15}]
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))["train"]
    assert ds.num_rows == 15
    assert set(ds.features) == {"__key__", "__url__", "jpg", "txt", "json"}
    rows = list(ds)
    assert len({r["json"]["uid"] for r in rows}) == 15
    fox = next(r for r in rows if r["json"]["source_uid"] == "laion-123")
    assert fox["json"]["query"] == "snow" and fox["jpg"].size == (400, 300)
    card = (out / "README.md").read_text()
    assert "| exact_duplicate | 1 |" in card and "`shard_size` = 4" in card
    assert "://" not in card.split("## Settings", 1)[1]  # no paths or URLs in the settings
    capsys.readouterr()
    assert cli.main(["export", "hf", str(out), "--out", str(pub)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
