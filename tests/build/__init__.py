"""Tests of wit_builder/build: the executor, stage records, storage across stages."""
