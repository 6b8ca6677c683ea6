"""Tests of wit_builder/demo: the generated world, its image server, the demo run."""
