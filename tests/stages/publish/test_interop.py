"""wit's shards in the field's tools: open_clip's trainer, Hugging Face datasets, Ray Data,
DataComp's subset files; docs/interop.md run as written."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.publish import make_published
from tests.support.trainer import make_image_folder
from wit_builder.app import cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytestmark = pytest.mark.slow  # Ray, a published build, open_clip's trainer


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
    # The Hub's viewer streams the first rows of each config and split from the card's
    # `configs`, with the features it declares: the same, streamed, with nothing cached.
    streamed = datasets.load_dataset(str(out), streaming=True)["train"]
    first = next(iter(streamed))
    assert set(first) == set(ds.features) and first["json"]["uid"] in {r["json"]["uid"] for r in rows}
    assert {f["name"] for f in meta["dataset_info"]["features"]} >= {"jpg", "txt", "json"}
    card = (out / "README.md").read_text()
    assert "| exact_duplicate | 1 |" in card and "`shard_size` = 4" in card
    assert "://" not in card.split("## Settings", 1)[1]  # no paths or URLs in the settings
    capsys.readouterr()
    assert cli.main(["export", "hf", str(out), "--out", str(pub)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


REPO = Path(__file__).resolve().parents[3]


def doc_blocks(doc: Path) -> list[tuple[str, str]]:
    """(language, code) of each block marked `<!-- run: sh|python -->`, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(
        r"<!-- run: (sh|python) -->\n```(?:sh|python)\n(.*?)```", doc.read_text(), re.S)]


def test_the_interop_page_runs_as_written(pub, tmp_path, monkeypatch):
    """Every command of docs/interop.md, in order, from a folder holding wit-data/ and
    eval-images/: wit-build and wit-train are this checkout's, python is this one."""
    import numpy as np
    shutil.copytree(pub, tmp_path / "wit-data")
    make_image_folder(tmp_path / "eval-images", per_class=2, size=48)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, module in (("wit-build", "wit_builder.app.cli"), ("wit-train", "trainer.cli"), ("python", None)):
        run = f'exec {sys.executable} -m {module} "$@"' if module else f'exec {sys.executable} "$@"'
        (bin_dir / name).write_text(f"#!/bin/sh\n{run}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    monkeypatch.chdir(tmp_path)
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    blocks = doc_blocks(REPO / "docs" / "interop.md")
    assert [lang for lang, _ in blocks] == ["sh", "python", "sh", "sh", "python", "python", "python", "python"]
    spaces = []
    for lang, code in blocks:
        if lang == "sh":
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{code}\n{done.stderr[-3000:]}"
        else:
            spaces.append({})
            exec(compile(code, "docs/interop.md", "exec"), spaces[-1])  # Ray: the session's own
    log = (tmp_path / "open_clip-logs" / "wit" / "out.log").read_text()
    losses = [float(x) for x in re.findall(r"Contrastive_loss: ([0-9.]+) \(", log)]
    assert len(losses) == 4 and all(0 < x < 10 for x in losses)  # 15 samples, batches of 4
    assert spaces[0]["text"].shape == (1, 128)
    results = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert results == ["eval-images_tiny_zeroshot_classification.json"]
    assert spaces[1]["ds"].num_rows == 15
    assert (spaces[2]["samples"].count(), spaces[2]["meta"].count()) == (15, 15)
    subset = np.load(tmp_path / "subset.npy")
    assert subset.dtype == np.dtype("u8,u8") and len(np.unique(subset)) == 15
    assert sum(s["successes"] for s in spaces[4]["stats"]) == 15
