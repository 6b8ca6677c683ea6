"""Tests of wit_builder/stages/balance."""
