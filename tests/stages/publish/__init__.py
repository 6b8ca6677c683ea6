"""Tests of wit_builder/stages/publish."""
