"""The run's JSONL log and its PNG plot."""

import json
from pathlib import Path


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_log(path: str | Path, step: int) -> None:
    """Drop records past `step`: a resumed run writes them again."""
    path = Path(path)
    if path.is_file():
        kept = [r for r in read_log(path) if r.get("step", 0) <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def append_log(path: str | Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def plot(log_path: str | Path, png_path: str | Path) -> Path | None:
    """Loss and in-batch accuracy, learning rate, logit scale, throughput and data wait vs step."""
    records = read_log(log_path)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    (ax_loss, ax_lr), (ax_scale, ax_speed) = axes
    ax_loss.plot(steps, [r["loss"] for r in records], label="loss")
    ax_loss.set_ylabel("contrastive loss")
    ax_acc = ax_loss.twinx()
    ax_acc.plot(steps, [r["accuracy"] for r in records], color="tab:orange", label="in-batch accuracy")
    ax_acc.set_ylabel("in-batch image->text accuracy")
    ax_acc.set_ylim(0, 1)
    ax_lr.plot(steps, [r["lr"] for r in records])
    ax_lr.set_ylabel("learning rate")
    ax_scale.plot(steps, [r["logit_scale"] for r in records])
    ax_scale.set_ylabel("logit scale (1/temperature)")
    ax_speed.plot(steps, [r["samples_per_s"] for r in records])
    ax_speed.set_ylabel("samples/s")
    ax_wait = ax_speed.twinx()
    ax_wait.plot(steps, [r["data_wait"] for r in records], color="tab:red")
    ax_wait.set_ylabel("share of time waiting for data")
    ax_wait.set_ylim(0, 1)
    for ax in (ax_scale, ax_speed):
        ax.set_xlabel("step")
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return png_path
