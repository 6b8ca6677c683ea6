"""Tests of each stage, one folder per stage."""
