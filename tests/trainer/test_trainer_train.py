"""wit-train end to end on small shards: the run's files, resume, the CLI and its error messages."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import torch

from tests.support.trainer import make_image_folder, make_shards
from trainer.checkpoint import load_checkpoint
from trainer.cli import main
from trainer.train import TrainConfig, train

torch.set_num_threads(1)


def tiny(tmp, data, **kw) -> TrainConfig:
    base = dict(data=[str(data)], out=str(tmp), model="tiny", image_size=32, batch_size=8, steps=4,
                warmup=2, workers=0, threads=1, log_every=2, checkpoint_every=2, shuffle_buffer=16,
                progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    make_shards(root, shards=2, per_shard=24, size=32, corrupt=(5,))
    return root


@pytest.fixture(scope="module")
def run(build, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, train(tiny(out, build))


def test_a_run_writes_checkpoint_tokenizer_log_and_plot(run):
    out, summary = run
    assert summary["steps"] == 4 and summary["checkpoint"] == str(out / "checkpoint.pt")
    assert summary["skipped"] >= 1  # the corrupt sample, met at least once
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for key in ("loss", "accuracy", "lr", "logit_scale", "samples_per_s", "data_wait", "skipped"):
        assert key in records[0]
    assert 0 <= records[-1]["data_wait"] <= 1 and records[-1]["samples_per_s"] > 0
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["model_config"]["name"] == "tiny"
    assert ckpt["model_config"]["vocab_size"] == len(json.loads(ckpt["tokenizer"])["model"]["vocab"])


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_parameters(build, tmp_path):
    kw = dict(steps=6, checkpoint_every=3, workers=1, seed=7)
    whole = train(tiny(tmp_path / "whole", build, **kw))
    first = train(tiny(tmp_path / "parts", build, stop_after=4, **kw))  # stops mid-segment
    assert first["steps"] == 4 and load_checkpoint(first["checkpoint"])["step"] == 4
    second = train(tiny(tmp_path / "parts", build, resume="auto", **kw))
    assert second["steps"] == 6
    a, b = load_checkpoint(whole["checkpoint"]), load_checkpoint(second["checkpoint"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["scheduler"] == b["scheduler"]
    exp_avg = lambda c: [s["exp_avg"] for s in c["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(exp_avg(a), exp_avg(b)))
    log = [json.loads(line)["step"] for line in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()]
    assert log == [2, 4, 6]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "sizes", "plot"):
        assert command in out


def expect_error(capsys, message, *argv):
    code, _, err = cli(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_bad_input_gets_a_message_not_a_traceback(build, run, tmp_path, capsys):
    out, _ = run
    expect_error(capsys, "matches no files", "--data", tmp_path / "none-*.tar", "--out", tmp_path / "a")
    no_images = tmp_path / "noimg"
    make_shards(no_images, shards=1, per_shard=2, image_ext="png")
    for f in (no_images / "shards").glob("*.tar"):  # strip the images out
        with tarfile.open(f) as t:
            members = [(m, t.extractfile(m).read()) for m in t if not m.name.endswith(".png")]
        with tarfile.open(f, "w") as t:
            for m, data in members:
                t.addfile(m, io.BytesIO(data))
    expect_error(capsys, "no images", "--data", no_images, "--out", tmp_path / "b")
    expect_error(capsys, "no CUDA device", "--data", build, "--device", "cuda", "--out", tmp_path / "c")
    expect_error(capsys, "exists: pass --resume", "--data", build, "--out", out)
    expect_error(capsys, "holds a 'tiny' model, this run asks for 'small'",
                 "--data", build, "--out", out, "--resume", "--model", "small")
    expect_error(capsys, "no such checkpoint", "--data", build, "--out", tmp_path / "d", "--resume")
    toml = tmp_path / "bad.toml"
    toml.write_text('steps = 5\nbatchsize = 3\n')
    expect_error(capsys, "unknown key 'batchsize'", "--config", toml, "--data", build)
    expect_error(capsys, "not a readable checkpoint", "eval", "--checkpoint", toml, "--shards", build)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    expect_error(capsys, "not a wit-train checkpoint", "eval", "--checkpoint", tmp_path / "other.pt",
                 "--shards", build)


def test_toml_config_then_flags(build, tmp_path):
    from trainer.cli import build_parser
    from trainer.config import config_from_args

    toml = tmp_path / "run.toml"
    toml.write_text(f'data = ["{build}"]\nsteps = 77\nlr = 1\nmodel = "tiny-rn"\ncompile = true\n')
    cfg = config_from_args(build_parser().parse_args(["train", "--config", str(toml), "--steps", "9"]))
    assert (cfg.steps, cfg.lr, cfg.model, cfg.compile, cfg.batch_size) == (9, 1.0, "tiny-rn", True, 32)



def test_a_toml_config_reads_values_as_a_recipe_does(build, tmp_path, capsys):
    """wit-train --config and a recipe's [train] table take and refuse the same values."""
    from trainer.cli import build_parser
    from trainer.config import TrainConfig, config_from_args
    from wit_builder import config as cfgmod
    toml = tmp_path / "run.toml"
    toml.write_text(f'data = ["{build}"]\nsteps = "100"\nlr = "0.01"\n')
    cfg = config_from_args(build_parser().parse_args(["train", "--config", str(toml)]))
    recipe = cfgmod.from_mapping(TrainConfig, {"data": [str(build)], "steps": "100", "lr": "0.01"})
    assert (cfg.steps, cfg.lr) == (recipe.steps, recipe.lr) == (100, 0.01)
    for bad, said in (("steps = true", "steps = True is not a valid int"),
                      ("steps = 1.9", "steps = 1.9 is not a valid int"),
                      ("lr = nan", "lr = nan: give a finite number")):
        toml.write_text(f'data = ["{build}"]\n{bad}\n')
        expect_error(capsys, said, "--config", toml)


def test_eval_command_reports_zero_shot_and_retrieval(run, build, tmp_path, capsys):
    out, _ = run
    images = make_image_folder(tmp_path / "images", per_class=2, by="shape")
    names = tmp_path / "names.txt"
    names.write_text("circle\ncross\nsquare\ntriangle\n")
    code, stdout, err = cli(capsys, "eval", "--checkpoint", out / "checkpoint.pt", "--images", images,
                            "--classnames", names, "--shards", build)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["zero_shot"]["n"] == 8 and result["zero_shot"]["chance"] == 0.25
    assert set(result["zero_shot"]["per_class"]) == {"circle", "cross", "square", "triangle"}
    assert result["retrieval"]["n"] == 47 and result["retrieval"]["skipped"] == 1
    assert result["retrieval"]["image_to_text_R@10"] >= result["retrieval"]["image_to_text_R@1"]
    expect_error(capsys, "3 names for 4 class folders", "eval", "--checkpoint", out / "checkpoint.pt",
                 "--images", images, "--classnames", names.write_text("a\nb\nc\n") and names)


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_to_resume_from(build, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer.cli", "--data", str(build), "--out", str(out), "--steps", "100000",
           "--image-size", "32", "--batch-size", "8", "--workers", "1", "--threads", "1", "--log-every", "1",
           "--checkpoint-every", "1000", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        log = out / "log.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the worker process gets it too
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "continue with --resume" in stdout
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["interrupted"] and 2 <= summary["steps"] < 100000
    assert load_checkpoint(out / "checkpoint.pt")["step"] == summary["steps"]


def test_resume_mistakes_are_refused_and_the_run_kept(build, run, tmp_path, capsys):
    """A resumed run never records one setting and trains with another, and a damaged
    run folder is named, not a traceback."""
    import shutil
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    before = (out / "checkpoint.pt").read_bytes()
    expect_error(capsys, "--lr 0.01 (started with 0.0005): the checkpoint's optimizer state carries "
                 "the old value", "--data", build, "--out", out, "--resume", "--lr", "0.01")
    expect_error(capsys, "--steps 3: " + str(out / "checkpoint.pt") + " has already done 4 steps",
                 "--data", build, "--out", out, "--resume", "--steps", "3")
    assert (out / "checkpoint.pt").read_bytes() == before  # the refused resumes wrote nothing
    # as many steps as done: nothing to train, and a summary that is valid JSON (no NaN)
    code, stdout, err = cli(capsys, "--data", build, "--out", out, "--resume", "--steps", "4")
    assert code == 0, err
    assert "already at --steps 4; nothing to train" in stdout
    summary = stdout[stdout.index("{"):]
    assert json.loads(summary, parse_constant=lambda c: pytest.fail(f"{c} in the summary"))["steps"] == 4
    settings = (out / "config.json").read_text()
    (out / "config.json").write_text(settings[: len(settings) // 2])
    expect_error(capsys, f"{out / 'config.json'}: the run's settings are not readable",
                 "--data", build, "--out", out, "--resume")
    (out / "config.json").write_text(settings)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    del ckpt["optimizer"], ckpt["rng"]
    torch.save(ckpt, out / "cut.pt")
    expect_error(capsys, f"{out / 'cut.pt'}: checkpoint lacks optimizer, rng",
                 "--data", build, "--out", out, "--resume", out / "cut.pt")
