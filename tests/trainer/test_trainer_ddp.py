"""Two gloo processes on 127.0.0.1 against one process with the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from tests.support.trainer import make_shards
from trainer.loss import clip_loss
from trainer.model import CLIP, model_config
from trainer.train import TrainConfig, train

CFG = model_config("tiny", vocab_size=300, eot_id=2, image_size=32)


def batch(n=8):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64)
    tokens = torch.randint(3, 300, (n, 10), generator=g)
    tokens[torch.arange(n), torch.randint(1, 10, (n,), generator=g)] = 2
    return images, tokens


def loss_and_grads(model, images, tokens):
    loss, _ = clip_loss(*model(images, tokens))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def worker(rank: int, world: int, port: int, data: str, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    # 1. one step on half the batch each, in float64 so only the summation order may differ
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    model = DistributedDataParallel(CLIP(CFG))
    images, tokens = batch()
    half = len(images) // world
    mine = slice(rank * half, (rank + 1) * half)
    loss, grads = loss_and_grads(model, images[mine], tokens[mine])
    dist.all_reduce(loss)
    result = {"loss": loss / world, "grads": {n.removeprefix("module."): g for n, g in grads.items()}}
    torch.set_default_dtype(torch.float32)
    # 2. the trainer itself under torchrun-style environment variables
    summary = train(TrainConfig(data=[data], out=out, image_size=32, batch_size=4, steps=3, warmup=1,
                                workers=0, log_every=1, checkpoint_every=3, progress=False))
    result["summary"] = summary
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_full_batch(tmp_path):
    make_shards(tmp_path / "build", shards=1, per_shard=16, size=32)
    out = tmp_path / "run"
    out.mkdir()
    # fork: the children need not import torch again (they use one thread each)
    mp.start_processes(worker, args=(2, free_port(), str(tmp_path / "build"), str(out)), nprocs=2,
                       start_method="fork")

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        loss, grads = loss_and_grads(CLIP(CFG), *batch())
    finally:
        torch.set_default_dtype(torch.float32)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:
        assert r["loss"].item() == pytest.approx(loss.item(), rel=1e-10)
        assert grads.keys() == r["grads"].keys()
        for name, g in grads.items():
            assert torch.allclose(g, r["grads"][name], rtol=1e-7, atol=1e-12), name
    # the trainer ran in step on both ranks; only rank 0 wrote the run's files
    assert [r["summary"]["steps"] for r in ranks] == [3, 3]
    assert ranks[0]["summary"]["final_loss"] == pytest.approx(ranks[1]["summary"]["final_loss"])
    assert (out / "checkpoint.pt").exists() and (out / "log.jsonl").exists()
