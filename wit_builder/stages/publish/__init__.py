"""Stage publish (and takedown, export): shards, manifests, the data card."""
