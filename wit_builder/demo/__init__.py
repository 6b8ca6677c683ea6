"""The offline demo world (shipped for `wit-build demo`; not pipeline code)."""
