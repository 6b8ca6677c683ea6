"""Tests of wit_builder/app: recipes, the report, hostile and careless use of the CLI."""
