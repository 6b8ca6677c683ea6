"""`wit-build export`: hand a published build to the field's tools.

`wit-build export open_clip` prints the flags that point open_clip's trainer
(`python -m open_clip_train.main`) at the build's shards: `--train-data` as a brace
pattern, `--train-num-samples` from `sizes.json`, `--dataset-type webdataset`.
`wit-build export hf DIR` writes a folder that `datasets.load_dataset(DIR)` and the
Hugging Face Hub's viewer read without configuration: the shards under `train/` and a
`README.md` dataset card (`wit_builder.stages.publish.datacard`).
"""
from __future__ import annotations

import argparse

from wit_builder import storage
from wit_builder.errors import WitError
from wit_builder.stages.publish.datacard import export_hf
from wit_builder.stages.publish.publish import published

TARGETS = ("hf", "open_clip")


def open_clip_flags(build) -> list[str]:
    """open_clip_train's data flags for the build's published shards."""
    folder, sizes = published(build)
    names = sorted(sizes)
    if names != [f"{i:05d}.tar" for i in range(len(names))]:
        raise WitError(f"{folder}/sizes.json: shard names are not 00000.tar onwards; rerun "
                       f"`wit-build publish --force --out {build}`")
    where = str(folder).rstrip("/")
    if " " in where:
        raise WitError(f"{where}: open_clip's --train-data cannot hold a space; move the build")
    return ["--train-data", f"{where}/{{00000..{len(names) - 1:05d}}}.tar",
            "--train-num-samples", str(sum(sizes.values())), "--dataset-type", "webdataset"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=TARGETS,
                   help="hf: a Hugging Face datasets folder; open_clip: print open_clip_train's "
                   "data flags for the shards")
    p.add_argument("dir", nargs="?", metavar="DIR", help="hf: the folder to write (new or empty)")


def main(args: argparse.Namespace) -> int:
    build = storage.location(getattr(args, "out", "wit-data"))
    if args.target == "open_clip":
        if args.dir:
            raise WitError(f"wit-build export open_clip takes no DIR ({args.dir}); it prints "
                           "flags for the shards already in --out")
        print(" ".join(open_clip_flags(build)))
        return 0
    if not args.dir:
        raise WitError("wit-build export hf DIR: give the folder to write")
    out = export_hf(build, args.dir)
    print(f"wrote {out}: train/ ({len(list(out.glob('train/*.tar')))} shards) and README.md; "
          f"load it with datasets.load_dataset({str(out)!r})")
    return 0
