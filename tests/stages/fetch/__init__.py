"""Tests of wit_builder/stages/fetch."""
