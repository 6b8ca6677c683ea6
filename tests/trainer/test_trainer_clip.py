"""--tokenizer clip: CLIP's own BPE, token for token as open_clip gives it; recorded in checkpoints."""

import pytest
import torch

from tests.support.trainer import make_shards
from trainer.checkpoint import load_checkpoint, model_from_checkpoint
from trainer.config import TrainConfig
from trainer.tokenizer import CaptionTokenizer, clip_bpe
from trainer.train import train
from wit_builder.errors import WitError

torch.set_num_threads(1)
CAPTIONS = [
    "a photo of a dog.", "Red fox (Vulpes vulpes) in snow", "Ein Fuchs im Schnee — ünïcödé 狐狸",
    "it's 1999's   best &amp; worst &quot;day&quot;", "", "don't STOP me now!!! 123,456.78 😀🦊",
    "a " * 100, "naïve café résumé", "I'll we've they're", "tab\tnew\nline  ", "Ã©tÃ© mojibake",
]


def test_clip_tokenizer_gives_open_clip_s_ids():
    import open_clip
    tok = clip_bpe()
    assert (tok.vocab_size, tok.start_id, tok.end_id, tok.pad_id, tok.kind) == (49408, 49406, 49407, 0, "clip")
    assert torch.equal(tok(CAPTIONS), open_clip.tokenize(CAPTIONS))
    again = CaptionTokenizer.from_str(tok.to_str())  # as checkpoints and data workers rebuild it
    assert again.kind == "clip" and torch.equal(again(CAPTIONS), open_clip.tokenize(CAPTIONS))


def test_the_paper_s_sizes_default_to_clip_s_tokenizer_the_small_ones_to_build():
    def kind(**kw):
        return TrainConfig(data=["x"], **kw).validate().tokenizer
    assert [kind(model=m) for m in ("vit-b-32", "vit-b-16", "rn50", "rn101")] == ["clip"] * 4
    assert [kind(model=m) for m in ("tiny", "tiny-rn", "small")] == ["build"] * 3
    assert kind(model="vit-b-32", tokenizer="build") == "build"
    assert kind(model="tiny", tokenizer="clip") == "clip"


@pytest.mark.slow
def test_a_run_with_clip_s_tokenizer_records_it_and_resumes_only_with_it(tmp_path):
    data = tmp_path / "shards"
    make_shards(data, shards=2, per_shard=8, size=32)
    cfg = dict(data=[str(data)], model="tiny", image_size=32, batch_size=4, steps=2, warmup=1,
               workers=0, threads=1, log_every=1, checkpoint_every=2, shuffle_buffer=8, progress=False)
    train(TrainConfig(out=str(tmp_path / "clip"), tokenizer="clip", **cfg).validate())
    ckpt = load_checkpoint(tmp_path / "clip" / "checkpoint.pt")
    assert ckpt["tokenizer_kind"] == "clip" and ckpt["config"]["tokenizer"] == "clip"
    assert (ckpt["model_config"]["vocab_size"], ckpt["model_config"]["eot_id"]) == (49408, 49407)
    _, tok = model_from_checkpoint(ckpt)
    assert tok.kind == "clip"
    with pytest.raises(WitError, match="--tokenizer clip, this run asks for --tokenizer build"):
        train(TrainConfig(out=str(tmp_path / "clip"), tokenizer="build", resume="auto",
                          **{**cfg, "steps": 3}).validate())
    train(TrainConfig(out=str(tmp_path / "build"), **cfg).validate())
    assert load_checkpoint(tmp_path / "build" / "checkpoint.pt")["tokenizer_kind"] == "build"
