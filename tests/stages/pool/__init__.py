"""Tests of wit_builder/stages/pool."""
