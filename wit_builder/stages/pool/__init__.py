"""Stage pool: candidate (url, caption) files -> one deduplicated pool."""
