"""A tiny model trained briefly on a synthetic captioned-image task learns something transferable."""

import pytest
import torch

from tests.support.trainer import make_image_folder, make_shards
from trainer.evaluate import retrieval, zero_shot
from trainer.train import TrainConfig, train

torch.set_num_threads(1)


@pytest.mark.slow
def test_tiny_model_classifies_held_out_images_zero_shot_well_above_chance(tmp_path):
    make_shards(tmp_path / "build", shards=4, per_shard=300, size=32, seed=0)
    held_out = make_shards(tmp_path / "held_out", shards=1, per_shard=200, size=32, seed=99)
    images = make_image_folder(tmp_path / "colors", per_class=12, by="color", seed=5)
    summary = train(TrainConfig(data=[str(tmp_path / "build")], out=str(tmp_path / "run"), image_size=32,
                                batch_size=32, steps=90, warmup=10, lr=2e-3, workers=1, threads=1,
                                log_every=10, checkpoint_every=0, progress=False))
    assert summary["final_loss"] < 2.5  # ln 32 = 3.47 at the start

    # the prompts ("a photo of a red.", "art of the red.", ...) never appear in training
    result = zero_shot(summary["checkpoint"], images)
    assert result["n"] == 96 and result["chance"] == 1 / 8
    assert result["accuracy"] >= 0.6, result
    assert result["accuracy_single_template"] >= 0.5, result

    recall = retrieval(summary["checkpoint"], held_out)
    assert recall["n"] == 200
    assert recall["image_to_text_R@10"] > 3 * 10 / 200, recall
    assert recall["text_to_image_R@10"] > 3 * 10 / 200, recall
