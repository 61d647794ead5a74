"""`metalearn-eval run=PATH`: few-shot evaluation of a finished run on fixed episodes.

    metalearn-eval run=outputs/train/<date>/<run>                    # the run's own task, 600 test episodes
    metalearn-eval run=... ways=20 shots=1 episodes=1000 checkpoint=last
    metalearn-eval run=... test_batch_norm=support  # other test-time batch-norm statistics (embedding methods)
    metalearn-eval run=... inner_steps=10          # other test-time adaptation steps (MAML family, meta_lstm)
    metalearn-eval run=... ways=20 within=alphabet disjoint_drawers=true   # Lake et al.'s one-shot protocol
    metalearn-eval run=... tta.copies=8           # each image's code averaged over 8 augmented copies (embedding methods)
    metalearn-eval run=... tta.copies=96 tta.match=chamfer   # copies matched to copies (cosine heads: meta_baseline)
    metalearn-eval run=... head=tim               # TIM's transductive inference on the run's codes (embedding methods)
    metalearn-eval run=RUN_A 'ensemble=[RUN_B,RUN_C]'   # the three runs as one ensemble (averaged class probabilities)

The episodes are drawn from `seed` on the run's test split, so every method
trained on the same dataset config is scored on identical episodes; the
per-episode accuracies and the episode list go to <run>/eval/. An ensemble (seeds of one preset, or
any runs on the same images) averages each query's class probabilities over its members; its result,
beside each member's own on the same episodes, goes to the first run's eval/.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from metalearn.cli import console_script
from metalearn.config import config_dir, register
from metalearn.help import answer_help

if TYPE_CHECKING:
    import torch

    from metalearn.data.store import ImageStore
    from metalearn.methods.base import Method

register()


def run(cfg: DictConfig) -> dict:
    from metalearn.engine.evaluate import check_head, evaluate, evaluate_ensemble
    from metalearn.errors import MetalearnError
    from metalearn.hardware import autocast, setup_device
    from metalearn.stats import paired_difference
    from metalearn.tasks.episodes import TaskSpec

    if cfg.run is None:
        raise MetalearnError("metalearn-eval needs run=PATH, a run folder such as outputs/train/<date>/<time>_protonet_...")
    folders = [run_folder(cfg.run, "run"), *(run_folder(r, "ensemble") for r in cfg.ensemble)]
    check_distinct(folders)
    check_head(cfg.head)
    check_options(cfg)
    device = setup_device(cfg.hardware)
    members = [restore_member(cfg, f, device) for f in folders]
    (method, store, ckpt), saved = members[0], members[0][2]["config"]
    for f, (_, other, _) in zip(folders[1:], members[1:], strict=True):
        if not other.same_images(store):
            raise MetalearnError(f"ensemble member {f} reads other images than run={folders[0]} (its dataset "
                                 f"configuration lists other classes, splits or drawers); an ensemble is scored on "
                                 f"one dataset's episodes, so give runs trained on the same dataset")
    tta = OmegaConf.to_object(cfg.tta) if cfg.tta.copies > 1 else None
    spec = TaskSpec(*(saved[k] if cfg[k] is None else cfg[k] for k in ("ways", "shots", "queries")),
                    cfg.within, bool(cfg.disjoint_drawers))
    for m, _, _ in members:
        m.check_task(spec)
    amp = autocast(device, cfg.hardware.amp)
    if len(members) == 1:
        r = evaluate(method, store, cfg.split, spec, cfg.episodes, cfg.seed, device, cfg.batch, amp, tta=tta,
                     head=cfg.head)
        ensemble = None
    else:
        r, alone = evaluate_ensemble([(m, s) for m, s, _ in members], cfg.split, spec, cfg.episodes, cfg.seed,
                                     device, cfg.batch, amp, tta=tta, head=cfg.head)
        ensemble = [{"run": str(f), "checkpoint": c["checkpoint_name"], "method": c["config"]["method"]["name"],
                     "accuracy": a.accuracy, "ci95": a.ci95, "per_episode": a.per_episode.tolist()}
                    for f, (_, _, c), a in zip(folders, members, alone, strict=True)]
    name = result_name(cfg, spec, ckpt["checkpoint_name"], [(str(f.resolve()), c["checkpoint_name"])
                                                            for f, (_, _, c) in zip(folders, members, strict=True)])
    path = r.save(folders[0] / "eval", name, {"ensemble": ensemble} if ensemble else None)
    setting = (f"{cfg.split} {spec.ways}-way {spec.shots}-shot{f' within one {spec.within}' if spec.within else ''}"
               f"{', drawer-disjoint' if spec.disjoint_drawers else ''}")
    for e in ensemble or []:
        print(f"  member {e['run']} ({e['method']}, {e['checkpoint']}): {100 * e['accuracy']:.2f} ± "
              f"{100 * e['ci95']:.2f}%")
    what = (f"ensemble of {len(members)} runs" if ensemble else saved["method"]["name"])
    print(f"{what} on {saved['dataset']['name']} {setting}: "
          f"{100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}% (95% CI, {len(r.per_episode)} episodes, "
          f"episodes {r.plans.digest()}{'' if r.batch_norm is None else ', batch norm: ' + r.batch_norm}"
          f"{'' if cfg.inner_steps is None else f', {cfg.inner_steps} inner steps'}"
          f"{'' if tta is None else f', test-time augmentation: {tta.copies} copies'}"
          f"{'' if tta is None or tta.match == 'mean' else f' matched by {tta.match}'}"
          f"{'' if cfg.head is None else f', head: {cfg.head}'}{', transductive' if r.transductive else ''}) -> {path}")
    if ensemble:
        best = max(alone, key=lambda a: a.accuracy)
        d = paired_difference(r.per_episode, best.per_episode)
        print(f"  over its best member on these episodes: {100 * d.mean:+.2f} ± {100 * d.half_width:.2f} (paired)")
    return r.summary() | ({"ensemble": [{k: v for k, v in e.items() if k != "per_episode"} for e in ensemble]}
                          if ensemble else {})


def run_folder(path: str, key: str) -> Path:
    """A run folder given on the command line, or a clear error naming the key that gave it."""
    from metalearn.errors import MetalearnError

    folder = Path(path)
    if not folder.exists():
        raise MetalearnError(f"{key}={folder}: run folder {folder} does not exist; give a run folder such as "
                             f"outputs/train/<date>/<run>")
    if not folder.is_dir():
        raise MetalearnError(f"{key}={folder} is a file, not a run folder; give the folder that holds its config.yaml")
    return folder


def check_distinct(folders: list[Path]) -> None:
    """A run listed twice would weigh double in the ensemble's average: refused."""
    from metalearn.errors import MetalearnError

    seen: set[Path] = set()
    for f in folders:
        if f.resolve() in seen:
            raise MetalearnError(f"ensemble: the run folder {f.resolve()} is given twice (run= and ensemble= together "
                                 f"list each member once; one given twice would weigh double in the average)")
        seen.add(f.resolve())


def check_options(cfg: DictConfig) -> None:
    from metalearn.engine.copy_match import check_match
    from metalearn.errors import MetalearnError

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
    if not (0 <= cfg.tta.shear <= 1 and 0 <= cfg.tta.aspect < 1):
        raise MetalearnError(f"tta.shear={cfg.tta.shear} tta.aspect={cfg.tta.aspect}: the copies' largest slant "
                             f"(x += shear * y) lies in [0, 1] and their largest change of width in [0, 1)")
    check_match(cfg.tta.match)
    if cfg.tta.match != "mean" and cfg.tta.copies < 2:
        raise MetalearnError(f"tta.match={cfg.tta.match} matches each image's test-time copies, and tta.copies="
                             f"{cfg.tta.copies} makes none; add tta.copies=96 (or drop tta.match)")
    if cfg.tta.elastic_alpha < 0 or cfg.tta.elastic_sigma <= 0:
        raise MetalearnError(f"tta.elastic_alpha={cfg.tta.elastic_alpha} tta.elastic_sigma={cfg.tta.elastic_sigma}: "
                             f"the copies' elastic distortion needs alpha >= 0 (0: off) and sigma > 0, in pixels")


def restore_member(cfg: DictConfig, folder: Path, device: torch.device) -> tuple[Method, ImageStore, dict]:
    """One run's trained method with the test-time options applied, its image store and its checkpoint."""
    from metalearn.data import build_store
    from metalearn.engine.restore import restore_method

    method, ckpt = restore_method(folder, cfg.checkpoint, device)
    saved = ckpt["config"]
    if cfg.test_batch_norm is not None:
        set_policy(method, saved["method"]["name"], cfg.test_batch_norm)
    if cfg.inner_steps is not None:
        set_inner_steps(method, saved["method"]["name"], cfg.inner_steps)
    dataset = dict(saved["dataset"])
    if cfg.dataset_root is not None:
        dataset["root"] = cfg.dataset_root
    return method, build_store(DictConfig(dataset)), ckpt


def result_name(cfg: DictConfig, spec, checkpoint: str, members: list[tuple[str, str]] | None = None) -> str:
    """A result's file name holds everything that decides which episodes are scored and how, so two protocols
    never share a file and the same protocol always writes the same one (batch only groups episodes)."""
    bn = "" if cfg.test_batch_norm is None else f"_bn-{cfg.test_batch_norm}"
    steps = "" if cfg.inner_steps is None else f"_steps-{cfg.inner_steps}"
    t = cfg.tta
    elastic = f"-e{t.elastic_alpha:g}-{t.elastic_sigma:g}" if t.elastic_alpha > 0 else ""
    hand = f"-h{t.shear:g}-{t.aspect:g}" if t.shear or t.aspect else ""
    match = "" if t.match == "mean" else f"-{t.match}"
    tta = ("" if t.copies <= 1 else
           f"_tta-{t.copies}-r{t.rotate:g}-s{t.scale:g}-t{t.shift:g}{hand}{elastic}-seed{t.seed}{match}")
    head = "" if cfg.head is None else f"_head-{cfg.head}"
    ensemble = "" if not members or len(members) < 2 else f"_ensemble-{len(members)}-{members_digest(members)}"
    return (f"{cfg.split}_{spec.tag}_q{spec.queries}_e{cfg.episodes}_seed{cfg.seed}_{checkpoint}{bn}{steps}{tta}{head}"
            f"{ensemble}")


def members_digest(members: list[tuple[str, str]]) -> str:
    """Which runs (resolved folders, in order) at which checkpoints make an ensemble, in 8 hex digits: the JSON
    lists them in full."""
    import hashlib

    return hashlib.sha256("\n".join(f"{run}@{ckpt}" for run, ckpt in members).encode()).hexdigest()[:8]


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
    from metalearn.cli import report_errors
    from metalearn.console import setup_logging
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
