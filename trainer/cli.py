"""wit-train: parse, call, print the summary. `wit-train --data ...` is short for `wit-train train --data ...`."""

import argparse
import json
import sys
import traceback
from pathlib import Path

from wit_builder.errors import WitError, output_closed

COMMANDS = ("train", "eval", "export", "sizes", "plot")


def build_parser() -> argparse.ArgumentParser:
    from .config import add_flags

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="wit-train", parents=[common],
        description="Train and evaluate CLIP models on WebDataset shards (wit builds, img2dataset output, ...).",
        epilog="`wit-train --data BUILD_DIR` is short for `wit-train train --data BUILD_DIR`. "
               "Several processes: torchrun --nproc_per_node N -m trainer.cli train ...")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")

    p = sub.add_parser("train", parents=[common], help="contrastive training on shards",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_flags(p)

    p = sub.add_parser("eval", parents=[common], help="zero-shot classification and/or retrieval recall@k")
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by wit-train")
    p.add_argument("--images", help="image_dir/<class>/<image> for zero-shot classification")
    p.add_argument("--classnames", help="class names, one a line in sorted folder order (default: folder names)")
    p.add_argument("--templates", help="clip80 (CLIP's 80 ImageNet templates), or a file of prompt "
                   "templates with '{}', one a line (default: an 18-prompt ensemble)")
    p.add_argument("--shards", nargs="+", help="held-out shards for image<->text retrieval recall@1/5/10")
    p.add_argument("--retrieval-images", metavar="DIR", help="images with a caption beside each "
                   "(NAME.jpg + NAME.txt, any folder layout) for retrieval recall@1/5/10")
    p.add_argument("--output", metavar="TEMPLATE", help="also write CLIP_benchmark's JSON, one file "
                   "per task: a path with {dataset}, {model}, {task} (default: "
                   "CHECKPOINT_DIR/benchmark_{dataset}_{task}.json)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("export", parents=[common], help="write a checkpoint in another library's "
                       "format (open_clip: config JSON + safetensors, loadable with local-dir:OUT)")
    p.add_argument("checkpoint", help="a checkpoint.pt written by wit-train")
    p.add_argument("out", help="the folder to write (new or empty)")
    p.add_argument("--format", default="open_clip", choices=("open_clip",))

    sub.add_parser("sizes", parents=[common], help="list the named model sizes")
    p = sub.add_parser("plot", parents=[common], help="redraw RUN_DIR/curves.png from RUN_DIR/log.jsonl")
    p.add_argument("run_dir")
    return parser


def train_command(args: argparse.Namespace) -> int:
    from .config import TrainConfig, config_from_args
    from .train import train

    if getattr(args, "resume", None):  # a resumed run starts from the settings it was started with
        out = getattr(args, "out", None) or TrainConfig.out
        from wit_builder import storage
        saved = (storage.location(out, "--out") if args.resume == "auto"
                 else Path(args.resume).parent) / "config.json"
        if saved.exists() and not getattr(args, "config", None):
            try:
                settings = json.loads(saved.read_text())
                if not isinstance(settings, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as e:
                raise WitError(f"{saved}: the run's settings are not readable ({e}); restore the "
                               "file, or delete it and pass every setting again with --resume") from None
            base = argparse.Namespace(**settings)
            base.__dict__.update(vars(args))
            args = base
    summary = train(config_from_args(args))
    print(json.dumps(summary, indent=2))
    return 130 if summary["interrupted"] else 0


def eval_command(args: argparse.Namespace) -> int:
    from .benchmark import clip_benchmark_records, folder_retrieval, write_records
    from .evaluate import load, pick_device, retrieval, zero_shot

    if not args.images and not args.shards and not args.retrieval_images:
        raise WitError("wit-train eval: give --images DIR (zero-shot), --shards ... and/or "
                       "--retrieval-images DIR (retrieval)")
    result, names = {}, {}
    if args.images:
        result["zero_shot"] = zero_shot(args.checkpoint, args.images, args.classnames, args.templates,
                                        batch_size=args.batch_size, device=args.device)
        names["zero_shot"] = Path(args.images).resolve().name
    if args.shards:
        result["retrieval"] = retrieval(args.checkpoint, args.shards, batch_size=args.batch_size,
                                        device=args.device)
        names["retrieval"] = "wds_" + Path(args.shards[0]).resolve().parent.name
    if args.retrieval_images:
        device = pick_device(args.device)
        model, tokenizer = load(args.checkpoint, device)
        result["folder_retrieval"] = folder_retrieval(model, tokenizer, args.retrieval_images,
                                                      args.batch_size, device)
        names["folder_retrieval"] = Path(args.retrieval_images).resolve().name
    out = Path(args.checkpoint).parent / "eval.json"  # where `wit-build report` looks for it
    out.write_text(json.dumps(result, indent=2, default=str))
    from .checkpoint import load_checkpoint
    model_name = load_checkpoint(args.checkpoint)["model_config"]["name"]
    template = args.output or str(Path(args.checkpoint).parent / "benchmark_{dataset}_{task}.json")
    write_records(clip_benchmark_records(result, model_name, args.checkpoint, names), template)
    print(json.dumps(result, indent=2))
    return 0


def export_command(args: argparse.Namespace) -> int:
    from .export import export

    out = export(args.checkpoint, args.out, args.format)
    print(f"wrote {out}: open_clip.create_model_and_transforms('local-dir:{out}')")
    return 0


def sizes_command(args: argparse.Namespace) -> int:
    import torch

    from .model import CLIP, MODEL_SIZES

    print(f"{'size':10} {'image':>5} {'tower':>6} {'embed':>5} {'text':>10} {'params (49408 vocab)':>21}")
    for name, cfg in MODEL_SIZES.items():
        with torch.device("meta"):
            n = CLIP(cfg).num_params()
        print(f"{name:10} {cfg.image_size:5} {cfg.vision:>6} {cfg.embed_dim:5} "
              f"{f'{cfg.text_layers}x{cfg.text_width}':>10} {n / 1e6:19.1f} M")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from .curves import plot

    run = Path(args.run_dir)
    png = plot(run / "log.jsonl", run / "curves.png")
    if png is None:
        raise WitError(f"{run / 'log.jsonl'}: no log records to plot")
    print(png)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "train")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = verbose
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"train": train_command, "eval": eval_command, "export": export_command, "sizes": sizes_command,
                "plot": plot_command}[args.command](args)
    except WitError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return output_closed()


if __name__ == "__main__":
    sys.exit(main())
