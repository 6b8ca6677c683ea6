"""Tests of wit_builder/stages/curate."""
