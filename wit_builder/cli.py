"""Kept so that an editable install made before the move into folders still starts:
its `wit-build` script calls `wit_builder.cli:main`. The command lives in
wit_builder/app/cli.py; `pip install -e .` points the script there."""
from wit_builder.app.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
