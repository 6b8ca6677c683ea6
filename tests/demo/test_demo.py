"""The offline demo end to end (a smaller world), its resume, and the report it writes."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from wit_builder.app import cli
from wit_builder.build import catalog
from wit_builder.build.stage import committed

pytestmark = pytest.mark.slow

DEMO = ["demo", "--size", "small", "--minutes", "1.5",
        "--set", "train.steps=250", "--set", "train.warmup=20", "--set", "train.batch_size=48"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, ray_cluster):
    out = tmp_path_factory.mktemp("demo") / "wit-demo"
    code = cli.main(DEMO + ["--out", str(out)])
    return out, code, None


def test_demo_runs_every_stage(demo_run, capsys):
    out, code, _ = demo_run
    assert code == 0
    stages = {r["stage"]: r["rows"] for r in
              catalog.query(out, "SELECT stage, rows FROM stages").to_pylist()}
    assert set(stages) == {"queries", "pool", "match", "balance", "fetch", "curate", "publish"}
    assert all(n > 0 for n in stages.values()), stages
    sizes = json.loads((committed(out, "publish", "shards") / "sizes.json").read_text())
    assert sum(sizes.values()) == stages["publish"]
    assert (out / "train" / "checkpoint.pt").exists()


def test_demo_model_beats_chance(demo_run):
    out, _, _ = demo_run
    zs = json.loads((out / "reports" / "eval.json").read_text())["zero_shot"]
    assert zs["n"] > 0
    assert zs["accuracy"] > 2 * zs["chance"], zs


def test_the_demo_model_scores_the_same_in_open_clip(demo_run, tmp_path):
    """Exported to open_clip, the demo's model classifies the held-out images as wit did."""
    from tests.support.trainer import open_clip_zero_shot
    from trainer.cli import main as wit_train
    from trainer.evaluate import TEMPLATES
    from trainer.tokenizer import CaptionTokenizer
    out, _, _ = demo_run
    zs = json.loads((out / "reports" / "eval.json").read_text())["zero_shot"]
    assert wit_train(["export", str(out / "train" / "checkpoint.pt"), str(tmp_path / "oc")]) == 0
    tokenizer = CaptionTokenizer.from_file(tmp_path / "oc" / "tokenizer.json")  # the demo's: build
    accuracy, _ = open_clip_zero_shot(tmp_path / "oc", out / "world" / "eval", tokenizer, TEMPLATES)
    # The demo's model is barely above chance, so many images sit on near-tied logits and
    # the resampling of two preprocessings (wit's, open_clip's) can flip a few of them:
    # seen 0.1625 against 0.18125 (3 of 160). Exact agreement is test_trainer_export's.
    assert abs(accuracy - zs["accuracy"]) <= 0.03, (accuracy, zs["accuracy"])


def test_the_hf_card_reports_the_build_s_facts(demo_run, tmp_path):
    out, _, _ = demo_run
    assert cli.main(["export", "hf", str(tmp_path / "hf"), "--out", str(out)]) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    balance = json.loads((out / "_stages" / "balance.json").read_text())["summary"]
    assert f"{balance['pairs_matched']:,} matched pairs, {balance['pairs_selected']:,} selected" in card
    assert "| before balancing |" in card and "| wiki_unigram |" in card
    assert str(out) not in card  # link-free


def test_eval_images_never_reach_the_shards(demo_run):
    out, _, _ = demo_run
    leaked = catalog.query(out, "SELECT count(*) AS n FROM samples WHERE keep AND "
                                "drop_reason IS NULL AND url LIKE '%/eval%'").to_pylist()
    dropped = catalog.query(out, "SELECT count(*) AS n FROM samples "
                                 "WHERE drop_reason = 'eval_set'").to_pylist()
    assert leaked == [{"n": 0}] and dropped[0]["n"] > 0


def test_every_near_duplicate_is_near_the_sample_it_names(demo_run):
    """The demo's simple pictures form long runs of near pairs; none may chain."""
    out, _, _ = demo_run
    bits = json.loads((out / "_stages" / "curate.json").read_text())["params"]["near_dup_bits"]
    rows = catalog.query(out, """
        SELECT count(*) AS n, max(bit_count(xor(s.phash, k.phash))) AS far,
               count(*) FILTER (WHERE NOT k.keep) AS keeper_dropped
        FROM samples s JOIN samples k ON k.uid = s.duplicate_of
        WHERE s.drop_reason = 'near_duplicate'""").to_pylist()[0]
    assert rows["n"] > 0 and rows["far"] <= bits and rows["keeper_dropped"] == 0, rows


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_report_is_offline_and_has_plots(demo_run):
    out, _, _ = demo_run
    page = out / "reports" / "index.html"
    parser = _Refs()
    parser.feed(page.read_text())
    assert parser.refs, "the report shows no plots"
    for ref in parser.refs:
        assert not re.match(r"^[a-z]+:", ref), f"non-local reference {ref}"
        img = Image.open(page.parent / ref)
        assert img.width > 100 and img.height > 100
        low, high = img.convert("L").getextrema()
        assert high - low > 50, f"{ref} is blank"
    for section in ["Per-query counts", "Drop reasons", "Image sizes", "Training", "Zero-shot"]:
        assert section in page.read_text()


def test_second_run_resumes_without_redoing_work(demo_run, capsys):
    out, _, _ = demo_run
    log = out / "train" / "log.jsonl"
    steps_before = log.read_text()
    capsys.readouterr()
    assert cli.main(DEMO + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already done with the same parameters") == 7
    assert log.read_text() == steps_before  # training resumed at its last step: nothing to do
