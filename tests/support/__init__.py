"""Helpers the tests share: fixtures are registered as pytest plugins (conftest.py)."""
