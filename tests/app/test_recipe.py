"""Recipes: parsing, --set overrides, placeholders, and the shipped recipes."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from wit_builder import config as cfgmod
from wit_builder.app import cli, recipe
from wit_builder.build import pipeline
from wit_builder.errors import WitError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def test_set_overrides_parse_toml_values(tmp_path):
    path = write(tmp_path, "[balance]\nper_query = 20000\n")
    r = recipe.load(path, ["balance.per_query=500", "balance.mode=metaclip",
                           'pool.pool=["a.tsv", "b.tsv"]', "fetch.allow_private_network=true"])
    assert r["balance"] == {"per_query": 500, "mode": "metaclip"}
    assert r["pool"]["pool"] == ["a.tsv", "b.tsv"]
    assert r["fetch"]["allow_private_network"] is True


@pytest.mark.parametrize("bad, message", [
    ("per_query=5", "expected STAGE.KEY=VALUE"),
    ("nosuch.key=1", "unknown section 'nosuch'"),
    ("balance.per_query", "expected STAGE.KEY=VALUE"),
])
def test_bad_overrides_name_the_flag(tmp_path, bad, message):
    with pytest.raises(WitError, match=message):
        recipe.load(write(tmp_path, ""), [bad])


def test_placeholders_must_be_filled(tmp_path):
    path = write(tmp_path, '[queries]\nwiki = ["FILL-ME: path to the dump"]\n')
    with pytest.raises(WitError, match=r"\[queries\] wiki is not filled in.*--set queries.wiki="):
        recipe.load(path)
    assert recipe.load(path, ['queries.wiki=["x.xml.bz2"]'])["queries"]["wiki"] == ["x.xml.bz2"]


def test_bad_toml_and_unknown_sections(tmp_path):
    with pytest.raises(WitError, match="not valid TOML"):
        recipe.load(write(tmp_path, "[queries\n"))
    with pytest.raises(WitError, match="unknown section"):
        recipe.load(write(tmp_path, "[quries]\nmin_freq = 3\n"))
    with pytest.raises(WitError, match="no such file"):
        recipe.find_recipe(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_name_valid_settings(path):
    """Every key of every shipped recipe is a real setting of its stage."""
    raw = tomllib.loads(path.read_text())
    for stage, table in raw.items():
        if stage in pipeline.STAGES:
            values = {k: v for k, v in table.items()
                      if not (isinstance(v, str) and v.startswith(recipe.PLACEHOLDER))
                      and not (isinstance(v, list) and v and str(v[0]).startswith(recipe.PLACEHOLDER))}
            cfgmod.from_mapping(pipeline.module(stage).Config, values, where=str(path))
        elif stage == "train":
            from trainer.config import TrainConfig
            cfgmod.from_mapping(TrainConfig, table, where=str(path))
        else:
            assert stage in {"build", "eval", "report", "name", "description"}, stage


def test_full_scale_recipe_marks_what_to_fill_in():
    with pytest.raises(WitError, match="is not filled in"):
        recipe.load(REPO / "pipelines" / "wit400m.toml")


@pytest.mark.parametrize("section, message", [
    ("[publish]\nshard_size = 0\n", r"recipe \[publish\]: shard_size = 0: must be at least 1"),
    ("[curate]\neval_images = '/no/such/dir'\n", r"--eval-images /no/such/dir: not a directory"),
    ("[balance]\nper_query = 0\n", r"recipe \[balance\]: per_query = 0: must be at least 1"),
    ("[train]\nbatch_size = 1\n", r"recipe \[train\]: batch_size = 1: must be at least 2"),
    ("[train]\nbatch = 64\n", r"recipe \[train\]: unknown setting\(s\) batch"),
    ("[eval]\nimages = '/no/such/eval'\n", r"\[eval\] images = '/no/such/eval': no such folder"),
    ("[eval]\nimage = 'x'\n", r"recipe \[eval\]: unknown setting\(s\) image"),
    ("[report]\ncolour = 'x'\n", r"recipe \[report\]: unknown setting\(s\) colour"),
])
def test_a_mistake_in_a_late_section_stops_the_recipe_before_it_starts(tmp_path, section, message):
    """A typo in [publish] or [train] must not surface after hours of queries and fetch."""
    pool = tmp_path / "pool.tsv"
    pool.write_text("url\ttext\nhttp://x/a.jpg\ta red fox\n")
    path = write(tmp_path, f"[pool]\npool = ['{pool}']\n[match]\n" + section)
    build = tmp_path / "wit-data"
    with pytest.raises(WitError, match=message):
        recipe.run(recipe.load(path), build)
    assert not build.exists()  # nothing ran, nothing was written


def test_demo_checks_its_minutes_before_making_the_world(tmp_path, capsys):
    from wit_builder.app import cli
    assert cli.main(["demo", "--minutes", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--minutes 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_settings_are_checked_for_what_they_are(tmp_path, capsys):
    """true, 1.9, nan and inf are refused, naming the setting, before anything runs."""
    from wit_builder import config
    from wit_builder.stages.balance import balance
    from wit_builder.stages.fetch import fetch
    for value, field, cls in ((True, "per_query", balance.Config), (1.9, "per_query", balance.Config),
                              (float("nan"), "timeout", fetch.Config),
                              (float("inf"), "shard_time_limit", fetch.Config)):
        with pytest.raises(WitError, match=field):
            config.from_mapping(cls, {field: value}, where="recipe [x]")
    assert config.from_mapping(balance.Config, {"per_query": 3.0}, where="r").per_query == 3
    build = tmp_path / "b"
    assert cli.main(["fetch", "--timeout", "nan", "--out", str(build)]) == 2
    assert "--timeout" in capsys.readouterr().err and not build.exists()
