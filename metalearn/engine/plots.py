"""The learning-curve PNG of a run, drawn from its metrics.jsonl, in the run's process or a detached one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from metalearn.console import in_console_script
from metalearn.engine.rundir import RunFolder, read_metrics
from metalearn.files import atomic_open


def draw(folder: RunFolder, cfg: DictConfig) -> None:
    """learning_curve.png from metrics.jsonl and summary.json, here or in a detached process (plots_detached)."""
    if folder.read_only or not (folder.metrics_path.exists() and folder.metrics_path.stat().st_size):
        return
    if not have_matplotlib():
        import logging

        logging.getLogger("metalearn").info("learning_curve.png not drawn: matplotlib is not installed "
                                            "(pip install -e \".[plots]\")")
        return
    title = f"{cfg.method.name} · {cfg.dataset.name} · {cfg.ways}-way {cfg.shots}-shot"
    if plots_detached(cfg):
        draw_detached(folder.path, title)
    else:
        draw_run(folder.path, title)


def have_matplotlib() -> bool:
    """Plotting is an extra (`.[plots]`): a core install trains, tests and records without it."""
    from metalearn.errors import installed

    return installed("matplotlib")


def plots_detached(cfg: DictConfig) -> bool:
    """Whether the learning curve is drawn after the command returns (`plots=`; auto: where that is safe).

    Drawing it takes ~0.6 s (importing matplotlib, rendering), a tenth of a smoke run, which nobody waits
    for at the prompt. It is not safe when a tracker uploads the run's files at the end (the PNG would miss
    the upload), under SLURM (the job's processes end with its script) or when a Python caller, not the
    console script, reads the folder next."""
    mode = cfg.get("plots") or "auto"
    if mode != "auto":
        return mode == "background"
    return in_console_script() and not cfg.get("logger") and "SLURM_JOB_ID" not in os.environ


def plot_learning_curve(metrics_path: Path, out: Path, title: str = "", best: dict | None = None,
                        test: dict | None = None) -> None:
    """Loss and accuracy against step. The accuracy axis spans the data (not 0-1), so the differences that
    matter show; the best validation checkpoint (`best`: step, accuracy) and the test result of each setting
    (`test`: tag -> accuracy, ci95) are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for r in read_metrics(metrics_path):
        (val if r.get("kind") == "val" else train).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    shown: list[float] = []
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue")
        ax2.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train (query)", color="tab:blue",
                 alpha=0.6)
        shown += [r["accuracy"] for r in train]
    if val:
        s, a, c = ([r[k] for r in val] for k in ("step", "accuracy", "ci95"))
        ax2.errorbar(s, a, yerr=c, label="validation (95% CI)", color="tab:orange", marker="o", ms=3, capsize=2)
        shown += [x - e for x, e in zip(a, c, strict=True)] + [x + e for x, e in zip(a, c, strict=True)]
    if best and best.get("step") is not None:
        ax2.axvline(best["step"], color="tab:orange", ls=":", lw=1)
        ax2.annotate(f"best checkpoint\nstep {best['step']}", (best["step"], best["accuracy"]), textcoords="offset points",
                     xytext=(-4, -26), fontsize=8, color="tab:orange", ha="right")
    last = max([r["step"] for r in train + val], default=0)
    for i, (tag, t) in enumerate((test or {}).items()):
        ax2.errorbar([last], [t["accuracy"]], yerr=[t["ci95"]], fmt="D", color=f"C{2 + i}", ms=5, capsize=3,
                     label=f"test {tag}: {100 * t['accuracy']:.2f} ± {100 * t['ci95']:.2f}%")
        shown += [t["accuracy"] - t["ci95"], t["accuracy"] + t["ci95"]]
    finite = [v for v in shown if v == v]
    if finite:
        low, high = min(finite), max(finite)
        pad = max(0.02, 0.08 * (high - low))
        ax2.set_ylim(max(0.0, low - pad), min(1.0, high + pad) + 0.005)
    ax1.set(xlabel="step", ylabel="training loss", title="loss")
    ax2.set(xlabel="step", ylabel="accuracy", title="accuracy")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(out) as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)


def draw_run(run: Path, title: str) -> None:
    """learning_curve.png of the run folder `run`, with its summary's best checkpoint and test results."""
    folder = RunFolder(run, read_only=True)
    s = folder.summary()
    plot_learning_curve(folder.metrics_path, folder.plot_file, title, best=s.get("best_val"), test=s.get("test"))


def draw_detached(run: Path, title: str) -> None:
    """draw_run in a process of its own that outlives this one: its own session (a Ctrl-C at the prompt does
    not reach it) and no inherited output, so a caller reading this process's output is not held open."""
    subprocess.Popen([sys.executable, "-m", "metalearn.engine.plots", str(run), title], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def main(argv: list[str]) -> int:
    """The detached process: draw, or record in the run's train.log why not."""
    run, title = Path(argv[0]), argv[1]
    try:
        draw_run(run, title)
    except Exception as e:  # noqa: BLE001 - nobody waits for this process; the run folder keeps the reason
        from metalearn.console import log, setup_logging

        if not run.is_dir():  # the folder was removed meanwhile: nothing to record in
            return 1

        setup_logging(RunFolder(run, read_only=True).log_file)
        log.error("learning_curve.png was not drawn: %s: %s", type(e).__name__, " ".join(str(e).split()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
