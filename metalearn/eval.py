"""`metalearn-eval run=PATH`: few-shot evaluation of a finished run on fixed episodes.

    metalearn-eval run=outputs/train/<date>/<run>                    # the run's own task, 600 test episodes
    metalearn-eval run=... ways=20 shots=1 episodes=1000 checkpoint=last
    metalearn-eval run=... test_batch_norm=support  # other test-time batch-norm statistics (embedding methods)
    metalearn-eval run=... inner_steps=10          # other test-time adaptation steps (MAML family, meta_lstm)
    metalearn-eval run=... ways=20 within=alphabet disjoint_drawers=true   # Lake et al.'s one-shot protocol
    metalearn-eval run=... tta.copies=8           # each image's code averaged over 8 augmented copies (embedding methods)
    metalearn-eval run=... head=tim               # TIM's transductive inference on the run's codes (embedding methods)

The episodes are drawn from `seed` on the run's test split, so every method
trained on the same dataset config is scored on identical episodes; the
per-episode accuracies and the episode list go to <run>/eval/.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from metalearn.cli import console_script
from metalearn.config import config_dir, register
from metalearn.help import answer_help

register()


def run(cfg: DictConfig) -> dict:
    from metalearn.api import restore_method
    from metalearn.data import build_store
    from metalearn.engine.evaluate import check_head, evaluate
    from metalearn.errors import MetalearnError
    from metalearn.hardware import autocast, setup_device
    from metalearn.tasks.episodes import TaskSpec

    if cfg.run is None:
        raise MetalearnError("metalearn-eval needs run=PATH, a run folder such as outputs/train/<date>/<time>_protonet_...")
    folder = Path(cfg.run)
    if not folder.exists():
        raise MetalearnError(f"run folder {folder} does not exist; give a run folder such as outputs/train/<date>/<run>")
    if not folder.is_dir():
        raise MetalearnError(f"run={folder} is a file, not a run folder; give the folder that holds its config.yaml")
    check_head(cfg.head)
    device = setup_device(cfg.hardware)
    method, ckpt = restore_method(folder, cfg.checkpoint, device)
    saved = ckpt["config"]
    if cfg.test_batch_norm is not None:
        set_policy(method, saved["method"]["name"], cfg.test_batch_norm)
    if cfg.inner_steps is not None:
        set_inner_steps(method, saved["method"]["name"], cfg.inner_steps)
    dataset = dict(saved["dataset"])
    if cfg.dataset_root is not None:
        dataset["root"] = cfg.dataset_root
    store = build_store(DictConfig(dataset))
    for key in ("ways", "shots", "queries", "episodes", "batch"):
        value = cfg[key]
        if value is not None and value < 1:
            own = " (or leave it out for the run's own)" if key in ("ways", "shots", "queries") else ""
            raise MetalearnError(f"{key}={value}: it must be a whole number >= 1{own}")
    if cfg.seed < 0:
        raise MetalearnError(f"seed={cfg.seed}: episode seeds are whole numbers >= 0")
    if cfg.tta.copies < 1:
        raise MetalearnError(f"tta.copies={cfg.tta.copies}: the copies of each image whose codes are averaged, >= 1 "
                             f"(1: no test-time augmentation)")
    if cfg.tta.elastic_alpha < 0 or cfg.tta.elastic_sigma <= 0:
        raise MetalearnError(f"tta.elastic_alpha={cfg.tta.elastic_alpha} tta.elastic_sigma={cfg.tta.elastic_sigma}: "
                             f"the copies' elastic distortion needs alpha >= 0 (0: off) and sigma > 0, in pixels")
    tta = OmegaConf.to_object(cfg.tta) if cfg.tta.copies > 1 else None
    spec = TaskSpec(*(saved[k] if cfg[k] is None else cfg[k] for k in ("ways", "shots", "queries")),
                    cfg.within, bool(cfg.disjoint_drawers))
    method.check_task(spec)
    r = evaluate(method, store, cfg.split, spec, cfg.episodes, cfg.seed, device, cfg.batch,
                 autocast(device, cfg.hardware.amp), tta=tta, head=cfg.head)
    path = r.save(folder / "eval", result_name(cfg, spec, ckpt["checkpoint_name"]))
    print(f"{saved['method']['name']} on {saved['dataset']['name']} {cfg.split} {spec.ways}-way {spec.shots}-shot"
          f"{f' within one {spec.within}' if spec.within else ''}{', drawer-disjoint' if spec.disjoint_drawers else ''}: "
          f"{100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}% (95% CI, {len(r.per_episode)} episodes, "
          f"episodes {r.plans.digest()}{'' if r.batch_norm is None else ', batch norm: ' + r.batch_norm}"
          f"{'' if cfg.inner_steps is None else f', {cfg.inner_steps} inner steps'}"
          f"{'' if tta is None else f', test-time augmentation: {tta.copies} copies'}"
          f"{'' if cfg.head is None else f', head: {cfg.head}'}{', transductive' if r.transductive else ''}) -> {path}")
    return r.summary()


def result_name(cfg: DictConfig, spec, checkpoint: str) -> str:
    """A result's file name holds everything that decides which episodes are scored and how, so two protocols
    never share a file and the same protocol always writes the same one (batch only groups episodes)."""
    bn = "" if cfg.test_batch_norm is None else f"_bn-{cfg.test_batch_norm}"
    steps = "" if cfg.inner_steps is None else f"_steps-{cfg.inner_steps}"
    t = cfg.tta
    elastic = f"-e{t.elastic_alpha:g}-{t.elastic_sigma:g}" if t.elastic_alpha > 0 else ""
    tta = "" if t.copies <= 1 else f"_tta-{t.copies}-r{t.rotate:g}-s{t.scale:g}-t{t.shift:g}{elastic}-seed{t.seed}"
    head = "" if cfg.head is None else f"_head-{cfg.head}"
    return f"{cfg.split}_{spec.tag}_q{spec.queries}_e{cfg.episodes}_seed{cfg.seed}_{checkpoint}{bn}{steps}{tta}{head}"


def set_policy(method, name: str, policy: str) -> None:
    """test_batch_norm=...: score a trained embedding method with other test-time batch-norm statistics."""
    from metalearn.errors import MetalearnError
    from metalearn.methods import set_test_batch_norm
    from metalearn.methods.base import EmbeddingMethod

    if not isinstance(method, EmbeddingMethod):
        raise MetalearnError(f"test_batch_norm={policy} sets an embedding method's test-time batch-norm statistics; "
                             f"{name} fixes its policy in training (method.batch_norm there); drop test_batch_norm=")
    set_test_batch_norm(method, policy, key="test_batch_norm")


def set_inner_steps(method, name: str, steps: int) -> None:
    """inner_steps=N: adapt each test task with N steps instead of the run's method.inner_steps_eval (papers often
    adapt longer at test than in meta-training; this scores one checkpoint under several step counts)."""
    from metalearn.errors import MetalearnError

    if not hasattr(method, "inner_steps_eval"):
        raise MetalearnError(f"inner_steps={steps} sets the test-time adaptation steps of maml, fomaml, anil, metasgd, "
                             f"reptile and meta_lstm; {name} does not adapt by inner steps; drop inner_steps=")
    if steps < 1:
        raise MetalearnError(f"inner_steps must be >= 1, got {steps}")
    limit = method.eval_steps_limit() if hasattr(method, "eval_steps_limit") else None
    if limit is not None and steps > limit:
        raise MetalearnError(f"inner_steps={steps}: this {name} run learned per-step learning rates or batch norms "
                             f"(method.plus) for {limit} steps only; use inner_steps<={limit}")
    method.inner_steps_eval = steps


@hydra.main(version_base=None, config_path=config_dir(), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    from metalearn.cli import report_errors, setup_logging
    from metalearn.preflight import task_started

    task_started()
    setup_logging()
    report_errors(lambda: run(cfg))


@console_script
def main() -> None:
    """The console script: --help answered fast (metalearn.help), everything else by Hydra."""
    if not answer_help("metalearn-eval", "eval", __doc__ or ""):
        import sys

        from metalearn.preflight import run_checked

        run_checked(sys.argv[1:], "eval", _hydra_main)


if __name__ == "__main__":
    main()
