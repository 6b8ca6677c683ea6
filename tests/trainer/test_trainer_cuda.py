"""The trainer on CUDA: bf16 autocast, torch.compile, pinned-memory loading, NCCL DDP with
SyncBatchNorm. Marked `cuda` (`pytest -m cuda`); each test skips where torch sees no CUDA
device (the DDP one below two). benchmarks/gpu_check.sh runs them on a GPU machine."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from tests.support.trainer import PHRASES, make_shards
from tests.trainer.test_trainer_ddp import free_port
from trainer.data import ShardStream, loader, resolve_shards
from trainer.loss import clip_loss
from trainer.model import CLIP, model_config
from trainer.tokenizer import train_bpe
from trainer.train import TrainConfig, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cuda-shards")
    make_shards(folder, shards=4, per_shard=64, size=32)
    return str(folder)


def run(shards, out, **kw):
    base = dict(data=[shards], out=str(out), image_size=32, batch_size=32, steps=40, warmup=4,
                lr=1e-3, vocab_size=300, workers=2, device="cuda", log_every=5,
                checkpoint_every=40, progress=False)
    return train(TrainConfig(**{**base, **kw}))


def test_bf16_autocast_trains_and_keeps_fp32_weights(shards, tmp_path):
    s = run(shards, tmp_path / "bf16", precision="bf16")
    assert s["steps"] == 40 and math.isfinite(s["final_loss"])
    assert s["final_loss"] < math.log(32)                      # below chance at batch 32
    assert s["peak_memory_gb"] > 0 and s["samples_per_s"] > 0
    ckpt = torch.load(s["checkpoint"], weights_only=False)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())


def test_compiled_model_gives_the_eager_loss_and_trains(shards, tmp_path):
    cfg = model_config("tiny", vocab_size=300, eot_id=2, image_size=32)
    torch.manual_seed(0)
    model = CLIP(cfg).cuda()
    images = torch.randn(8, 3, 32, 32, device="cuda")
    tokens = torch.randint(3, 300, (8, 12), device="cuda")
    tokens[:, -1] = 2
    eager, _ = clip_loss(*model(images, tokens))
    compiled, _ = clip_loss(*torch.compile(model)(images, tokens))
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-3)
    s = run(shards, tmp_path / "compiled", compile=True, precision="bf16", steps=20, checkpoint_every=20)
    assert s["steps"] == 20 and math.isfinite(s["final_loss"])


def test_the_loader_pins_batches_for_cuda(shards):
    tok = train_bpe([p.format(color="red", shape="circle") for p in PHRASES] * 20, 300)
    stream = ShardStream(resolve_shards([shards]), tok, 32, 16)
    batch = next(iter(loader(stream, 1, pin_memory=True)))
    assert batch["images"].is_pinned() and batch["tokens"].is_pinned()
    on_gpu = batch["images"].to("cuda", non_blocking=True)
    assert on_gpu.shape == (16, 3, 32, 32) and on_gpu.dtype == torch.uint8


def test_a_training_step_never_waits_for_the_gpu():
    """No host-device synchronisation between log steps: the data path and a bf16 step run
    under torch's sync debug mode, which raises on any synchronising call."""
    from trainer.data import normalize
    cfg = model_config("tiny", vocab_size=300, eot_id=2, image_size=32)
    model = CLIP(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    images = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8).pin_memory()
    tokens = torch.randint(3, 300, (8, 12)).pin_memory()
    tokens[:, -1] = 2
    normalize(images, torch.device("cuda"))        # first call: the statistics go over once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            x, t = normalize(images, torch.device("cuda")), tokens.to("cuda", non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                feats = model(x, t)
            loss, _ = clip_loss(*(f.float() for f in feats))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            model.clamp_logit_scale()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _nccl_worker(rank: int, world: int, port: int, data: str, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl")
    # 1. SyncBatchNorm: ranks see different halves, yet share the global batch's statistics
    cfg = model_config("tiny-rn", vocab_size=300, eot_id=2, image_size=64)
    torch.manual_seed(0)
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(CLIP(cfg)).cuda(rank)
    model = DistributedDataParallel(model, device_ids=[rank])
    g = torch.Generator().manual_seed(rank)
    images = torch.randn(8, 3, 64, 64, generator=g).cuda(rank) + rank
    tokens = torch.randint(3, 300, (8, 10), generator=g).cuda(rank)
    tokens[:, -1] = 2
    loss, _ = clip_loss(*model(images, tokens))
    loss.backward()
    stats = torch.cat([m.running_mean for m in model.modules()
                       if isinstance(m, torch.nn.SyncBatchNorm)])
    dist.barrier()
    dist.destroy_process_group()
    # 2. the trainer itself over NCCL (it converts the ResNet's BatchNorm itself)
    summary = train(TrainConfig(data=[data], out=out, model="tiny-rn", image_size=64, batch_size=8,
                                steps=6, warmup=1, vocab_size=300, workers=1, device="cuda",
                                log_every=2, checkpoint_every=6, progress=False))
    torch.save({"stats": stats.cpu(), "summary": summary}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_nccl_ddp_with_syncbatchnorm(shards, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    mp.start_processes(_nccl_worker, args=(2, free_port(), shards, str(out)), nprocs=2,
                       start_method="spawn")
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert torch.allclose(ranks[0]["stats"], ranks[1]["stats"])
    assert [r["summary"]["steps"] for r in ranks] == [6, 6]
    assert ranks[0]["summary"]["final_loss"] == pytest.approx(ranks[1]["summary"]["final_loss"])
