"""wit's CLIP trainer: `trainer.train.train(TrainConfig)`, `trainer.evaluate.zero_shot/retrieval`, `wit-train`."""
