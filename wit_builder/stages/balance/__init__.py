"""Stage balance: at most --per-query pairs per query."""
