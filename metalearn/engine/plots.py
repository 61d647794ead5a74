"""The learning-curve PNG of a run, drawn from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from metalearn.engine.rundir import read_metrics
from metalearn.files import atomic_open


def plot_learning_curve(metrics_path: Path, out: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for r in read_metrics(metrics_path):
        (val if r.get("kind") == "val" else train).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue")
        ax2.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train (query)", color="tab:blue", alpha=0.6)
    if val:
        s, a, c = ([r[k] for r in val] for k in ("step", "accuracy", "ci95"))
        ax2.errorbar(s, a, yerr=c, label="validation", color="tab:orange", marker="o", ms=3, capsize=2)
    ax1.set(xlabel="step", ylabel="training loss", title="loss")
    ax2.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    ax2.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(out) as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
