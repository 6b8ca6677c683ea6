"""The pipeline's stages, one folder each, every helper beside the stage it serves."""
