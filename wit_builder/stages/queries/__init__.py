"""Stage queries: Wikipedia dump (or a given list) -> the query list."""
