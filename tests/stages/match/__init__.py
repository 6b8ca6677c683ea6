"""Tests of wit_builder/stages/match."""
