"""`metalearn-eval run=PATH`: few-shot evaluation of a finished run on fixed episodes.

    metalearn-eval run=outputs/train/<date>/<run>                    # the run's own task, 600 test episodes
    metalearn-eval run=... ways=20 shots=1 episodes=1000 checkpoint=last
    metalearn-eval run=... batch_norm=support      # other test-time batch-norm statistics (embedding methods)

The episodes are drawn from `seed` on the run's test split, so every method
trained on the same dataset config is scored on identical episodes; the
per-episode accuracies and the episode list go to <run>/eval/.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from metalearn.config import config_dir, register
from metalearn.help import answer_help

register()


def run(cfg: DictConfig) -> dict:
    from metalearn.api import restore_method
    from metalearn.data import build_store
    from metalearn.engine.evaluate import evaluate
    from metalearn.engine.hardware import autocast, setup_device
    from metalearn.episodes import TaskSpec
    from metalearn.errors import MetalearnError

    if cfg.run is None:
        raise MetalearnError("metalearn-eval needs run=PATH, a run folder such as outputs/train/<date>/<time>_protonet_...")
    folder = Path(cfg.run)
    if not folder.is_dir():
        raise MetalearnError(f"run folder {folder} does not exist")
    device = setup_device(cfg.hardware)
    method, ckpt = restore_method(folder, cfg.checkpoint, device)
    saved = ckpt["config"]
    if cfg.batch_norm is not None:
        set_policy(method, saved["method"]["name"], cfg.batch_norm)
    dataset = dict(saved["dataset"])
    if cfg.dataset_root is not None:
        dataset["root"] = cfg.dataset_root
    store = build_store(DictConfig(dataset))
    spec = TaskSpec(cfg.ways or saved["ways"], cfg.shots or saved["shots"], cfg.queries or saved["queries"])
    method.check_task(spec)
    r = evaluate(method, store, cfg.split, spec, cfg.episodes, cfg.seed, device, cfg.batch,
                 autocast(device, cfg.hardware.amp))
    bn = "" if cfg.batch_norm is None else f"_bn-{cfg.batch_norm}"
    path = r.save(folder / "eval", f"{cfg.split}_{spec.tag}_q{spec.queries}_seed{cfg.seed}_{ckpt['checkpoint_name']}{bn}")
    print(f"{saved['method']['name']} on {saved['dataset']['name']} {cfg.split} {spec.ways}-way {spec.shots}-shot: "
          f"{100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}% (95% CI, {len(r.per_episode)} episodes, "
          f"episodes {r.plans.digest()}{'' if r.batch_norm is None else ', batch norm: ' + r.batch_norm}) -> {path}")
    return r.summary()


def set_policy(method, name: str, policy: str) -> None:
    """batch_norm=...: score a trained embedding method with other test-time batch-norm statistics."""
    from metalearn.errors import MetalearnError
    from metalearn.methods import set_test_batch_norm
    from metalearn.methods.base import EmbeddingMethod

    if not isinstance(method, EmbeddingMethod):
        raise MetalearnError(f"batch_norm={policy} sets an embedding method's test-time batch-norm statistics; {name} "
                             f"fixes its policy in training (method.batch_norm there); drop batch_norm=")
    set_test_batch_norm(method, policy, key="batch_norm")


@hydra.main(version_base=None, config_path=config_dir(), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    from metalearn.cli import report_errors, setup_logging

    setup_logging()
    report_errors(lambda: run(cfg))


def main() -> None:
    """The console script: --help answered fast (metalearn.help), everything else by Hydra."""
    if not answer_help("metalearn-eval", "eval", __doc__ or ""):
        _hydra_main()


if __name__ == "__main__":
    main()
