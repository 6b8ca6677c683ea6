"""Tests of wit_builder/stages/queries."""
