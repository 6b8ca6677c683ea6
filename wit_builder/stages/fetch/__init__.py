"""Stage fetch: the download, politely (robots.txt, per-host limits, DNS, address guard)."""
