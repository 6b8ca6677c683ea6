"""The shard pipeline: finding shards, reading them, skipping what cannot be read."""

import tarfile

import pytest
import torch

from tests.support.trainer import add_member, make_shards
from trainer.data import ShardStream, check_shards, count_samples, loader, resolve_shards
from trainer.tokenizer import train_bpe
from wit_builder.errors import WitError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    make_shards(root, shards=3, per_shard=10, size=32)
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["a red circle", "the blue square is blue", "green cross"] * 10, vocab_size=400)


def read_all(urls, tokenizer, **kw):
    """Every batch of a one-pass (eval) stream."""
    return list(loader(ShardStream(urls, tokenizer, 32, 4, train=False, **kw), workers=0))


def test_build_dir_brace_glob_and_list_all_resolve(build):
    shards = build / "shards"
    expected = [str(shards / f"0000{i}.tar") for i in range(3)]
    assert resolve_shards(str(build)) == expected
    assert resolve_shards(str(shards / "{00000..00002}.tar")) == expected
    assert resolve_shards(str(shards / "*.tar")) == expected
    assert resolve_shards([expected[2], expected[0]]) == [expected[2], expected[0]]
    assert count_samples(expected) == 30


@pytest.mark.parametrize("pattern, message", [
    ("nowhere/*.tar", "matches no files"),
    ("shards/{00000..00005}.tar", "00003.tar does not exist"),
])
def test_patterns_that_match_nothing_say_so(build, pattern, message):
    with pytest.raises(WitError, match=message):
        resolve_shards(str(build / pattern))


def test_empty_build_dir_says_so(tmp_path):
    with pytest.raises(WitError, match="no .tar shards"):
        resolve_shards(str(tmp_path))


def write_tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            add_member(tar, name, data)
    return str(path)


def test_shards_without_images_or_captions_are_named(tmp_path):
    no_images = write_tar(tmp_path / "a.tar", {"k1.txt": b"a cat", "k1.json": b"{}"})
    no_captions = write_tar(tmp_path / "b.tar", {"k1.jpg": b"\xff\xd8", "k1.json": b"{}"})
    with pytest.raises(WitError, match=r"a.tar: no images .*\(found .json, .txt\)"):
        check_shards([no_images])
    with pytest.raises(WitError, match=r"b.tar: no captions \(.txt\)"):
        check_shards([no_captions])
    (tmp_path / "c.tar").write_bytes(b"junk" * 10)
    with pytest.raises(WitError, match="not a readable tar"):
        check_shards([str(tmp_path / "c.tar")])


def test_a_corrupt_sample_is_skipped_and_counted(tmp_path, tokenizer):
    urls = make_shards(tmp_path, shards=2, per_shard=6, size=32, corrupt=(2, 7))
    batches = read_all(urls, tokenizer)
    assert sum(len(b["images"]) for b in batches) == 10
    assert sum(b["skipped"] for b in batches) == 2
    assert "000000002 in " in next(b["error"] for b in batches if b["error"])  # names the sample
    assert all(b["images"].dtype == torch.uint8 and b["images"].shape[1:] == (3, 32, 32) for b in batches)


def test_a_truncated_shard_is_skipped_not_fatal(tmp_path, tokenizer):
    urls = make_shards(tmp_path, shards=2, per_shard=6, size=32)
    data = open(urls[1], "rb").read()
    open(urls[1], "wb").write(data[: len(data) // 2 + 100])
    batches = read_all(urls, tokenizer)
    assert 6 <= sum(len(b["images"]) for b in batches) < 12
    assert sum(b["skipped"] for b in batches) >= 1


@pytest.mark.parametrize("ext", ["png", "webp"])
def test_png_and_webp_samples_are_read(tmp_path, tokenizer, ext):
    urls = make_shards(tmp_path, shards=1, per_shard=5, size=32, image_ext=ext)
    assert sum(len(b["images"]) for b in read_all(urls, tokenizer)) == 5


def test_a_worker_that_reads_nothing_reports_it(tmp_path, tokenizer):
    bad = write_tar(tmp_path / "bad.tar", {f"k{i}.jpg": b"junk" for i in range(250)}
                    | {f"k{i}.txt": b"cap" for i in range(250)})
    stream = ShardStream([bad], tokenizer, 32, 4, train=True)
    batch = next(iter(loader(stream, workers=0)))
    assert "200 unreadable samples in a row" in batch["fatal"]


def first_batches(urls, tokenizer, n=3, **kw):
    stream = ShardStream(urls, tokenizer, 32, 4, train=True, shuffle_buffer=8, **kw)
    it = iter(loader(stream, workers=0))
    return [next(it) for _ in range(n)]


def test_training_stream_is_seeded_by_segment_and_endless(build, tokenizer):
    urls = resolve_shards(str(build))
    a, b = first_batches(urls, tokenizer, seed=1, segment=5), first_batches(urls, tokenizer, seed=1, segment=5)
    c = first_batches(urls, tokenizer, seed=1, segment=10)
    assert all(torch.equal(x["images"], y["images"]) and torch.equal(x["tokens"], y["tokens"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["images"], y["images"]) for x, y in zip(a, c))
    assert len(first_batches(urls[:1], tokenizer, n=8)) == 8  # 32 samples from a 10-sample shard


def test_each_epoch_splits_shards_between_ranks_and_workers():
    urls = [f"s{i}.tar" for i in range(10)]

    def order(rank, slot_of_rank, world=2, workers=2):
        stream = ShardStream(urls, train_bpe(["a b"] * 5, 300), 32, 4, seed=3, rank=rank, world=world)
        gen = stream.shard_order(rank * workers + slot_of_rank, world * workers, rng=None)
        return [next(gen)["url"] for _ in range(len(range(rank * workers + slot_of_rank, 10, 4)))]

    parts = [order(r, w) for r in range(2) for w in range(2)]
    assert sorted(u for p in parts for u in p) == sorted(urls)  # one epoch: each shard exactly once
