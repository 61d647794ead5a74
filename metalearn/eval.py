"""`metalearn-eval run=PATH`: few-shot evaluation of a finished run on fixed episodes.

    metalearn-eval run=outputs/train/<date>/<run>                    # the run's own task, 600 test episodes
    metalearn-eval run=... ways=20 shots=1 episodes=1000 checkpoint=last
    metalearn-eval run=... test_batch_norm=support  # other test-time batch-norm statistics (embedding methods)
    metalearn-eval run=... inner_steps=10          # other test-time adaptation steps (MAML family, meta_lstm)
    metalearn-eval run=... ways=20 within=alphabet disjoint_drawers=true   # Lake et al.'s one-shot protocol
    metalearn-eval run=... tta.copies=8           # each image's code averaged over 8 augmented copies (embedding methods)
    metalearn-eval run=... tta.copies=96 readout=chamfer   # copies matched to copies (cosine heads: meta_baseline)
    metalearn-eval run=... readout=tim            # TIM's transductive inference on the run's codes (embedding methods)
    metalearn-eval run=RUN_A 'ensemble=[RUN_B,RUN_C]'   # the three runs as one ensemble (averaged class probabilities)
    metalearn-eval run=... tta.copies=32 paired=true  # also without the copies, on the same episodes: the paired gain
    metalearn-eval run=<a mini_imagenet run> dataset=cub   # cross-domain: CUB's test split at the run's input size
    metalearn-eval run=... variable=true          # Meta-Dataset's variable episodes: 5-50 ways, imbalanced shots

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

    from metalearn.config import EvalConfig
    from metalearn.data.store import ImageStore
    from metalearn.engine.evaluate import EvalResult
    from metalearn.engine.rundir import RunFolder
    from metalearn.methods.base import Method
    from metalearn.readouts import Readout

register()


def run(cfg: DictConfig) -> dict:
    from metalearn.config import EvalConfig, check_values
    from metalearn.engine.evaluate import mean_over_sources, per_source
    from metalearn.engine.rundir import RunFolder
    from metalearn.errors import MetalearnError
    from metalearn.hardware import setup_device
    from metalearn.readouts import build_readout

    if cfg.run is None:
        raise MetalearnError("metalearn-eval needs run=PATH, a run folder such as outputs/train/<date>/<time>_protonet_...")
    check_values(cfg, EvalConfig)
    protocol: EvalConfig = OmegaConf.to_object(cfg)
    readout = build_readout(protocol.readout, protocol)  # an unknown readout is refused before any run is read
    folders = [run_folder(cfg.run, "run"), *(run_folder(r, "ensemble") for r in cfg.ensemble)]
    check_distinct(folders)
    RunFolder(folders[0], read_only=True).refuse_if_held()  # a run still training there: named before any work
    device = setup_device(cfg.hardware)
    members = [restore_member(protocol, f, device) for f in folders]
    store = members[0][1]
    for f, (_, other, _) in zip(folders[1:], members[1:], strict=True):
        if not other.same_images(store):
            raise MetalearnError(f"ensemble member {f} reads other images than run={folders[0]} (its dataset "
                                 f"configuration lists other classes, splits or drawers); an ensemble is scored on "
                                 f"one dataset's episodes, so give runs trained on the same dataset")
    parts = per_source(store, cfg.split) if cfg.test_dataset is None else [(None, store)]
    if parts[0][0] is None:
        return score_one(cfg, protocol, readout, folders, members, device)
    results = {}
    for name, _ in parts:  # a multi-source run: each source alone (never an episode of two), then their mean
        views = [(m, s.source_view(name), c) for m, s, c in members]
        results[name] = score_one(cfg, protocol, readout, folders, views, device, name)
    mean = mean_over_sources(results)
    print(f"mean over {len(results)} sources ({', '.join(results)}): {100 * mean['accuracy']:.2f} ± "
          f"{100 * mean['ci95']:.2f}%")
    return mean


def score_one(cfg: DictConfig, protocol: EvalConfig, readout: Readout | None, folders: list[Path], members: list,
              device: torch.device, source: str | None = None) -> dict:
    """The run (or ensemble) scored on one dataset, or on one source of a multi-source run; printed and saved."""
    from dataclasses import replace

    from metalearn.config import TTAConfig
    from metalearn.engine.evaluate import resolve, task_spec
    from metalearn.engine.rundir import RunFolder
    from metalearn.hardware import autocast
    from metalearn.stats import paired_difference

    store, saved = members[0][1], members[0][2]["config"]
    if cfg.variable:
        return run_variable(protocol, folders, members, device, cfg.hardware.amp, source)
    protocol = resolve(protocol, saved["ways"], saved["shots"], saved["queries"])
    spec = task_spec(protocol)
    for m, _, _ in members:
        m.check_task(spec)
    amp = autocast(device, cfg.hardware.amp)
    folder = RunFolder(folders[0], read_only=True)
    folder.hold()  # one writer: a run still training there is named and refused before anything is scored
    try:
        r, alone, path = score(protocol, readout, folders, members, device, cfg.batch, amp, folder, source)
        plain = None
        if cfg.paired and (protocol.tta.copies > 1 or readout is not None):  # the same episodes without the options
            plain = score(replace(protocol, tta=TTAConfig(), readout=None), None, folders, members, device, cfg.batch,
                          amp, folder, source)
    finally:
        folder.release()
    setting = (f"{protocol.split} {spec.ways}-way {spec.shots}-shot{f' within one {spec.within}' if spec.within else ''}"
               f"{', drawer-disjoint' if spec.disjoint_drawers else ''}")
    ensemble = member_rows(folders, members, alone)
    for e in ensemble:
        print(f"  member {e['run']} ({e['method']}, {e['checkpoint']}): {100 * e['accuracy']:.2f} ± "
              f"{100 * e['ci95']:.2f}%")
    what = f"ensemble of {len(members)} runs" if ensemble else saved["method"]["name"]
    crossed = store.meta.get("cross_domain")
    print(f"{what} on {scored_on(saved, crossed, source)} {setting}: "
          f"{100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}% (95% CI, {len(r.per_episode)} episodes, "
          f"episodes {r.plans.digest()}{'' if r.batch_norm is None else ', batch norm: ' + r.batch_norm}"
          f"{protocol.describe(readout)}{', transductive' if r.transductive else ''}) -> {path}")
    if ensemble:
        best = max(alone, key=lambda a: a.accuracy)
        d = paired_difference(r.per_episode, best.per_episode)
        print(f"  over its best member on these episodes: {100 * d.mean:+.2f} ± {100 * d.half_width:.2f} (paired)")
    if plain is not None:
        d = paired_difference(r.per_episode, plain[0].per_episode)
        print(f"  over the same {'ensemble' if ensemble else 'run'} without copies or readout ({100 * plain[0].accuracy:.2f}"
              f" ± {100 * plain[0].ci95:.2f}%, -> {plain[2].name}): {100 * d.mean:+.2f} ± {100 * d.half_width:.2f} (paired)")
    return r.summary() | ({"ensemble": ensemble} if ensemble else {}) | ({"cross_domain": crossed} if crossed else {})


def scored_on(saved: dict, crossed: dict | None, source: str | None = None) -> str:
    """The dataset a printed result names: the run's own (one source of it), or the other one, marked cross-domain."""
    if source:
        return f"{source} (a source of {'+'.join(saved['dataset']['sources'])})"
    if crossed:
        return f"{crossed['tested_on']} (cross-domain: trained on {crossed['trained_on']})"
    return saved["dataset"]["name"]


def cross_named(name: str, crossed: dict | None, source: str | None = None) -> str:
    """A result file's name, prefixed cross-<dataset>_ when scored on another dataset (never the run's own file), and
    suffixed @<source> for one source of a multi-source run."""
    return f"cross-{crossed['tested_on']}_{name}" if crossed else name if source is None else f"{name}@{source}"


def run_variable(cfg: EvalConfig, folders: list[Path], members: list, device: torch.device, amp_setting,
                 source: str | None = None) -> dict:
    """variable=true: the run scored on Meta-Dataset's variable episodes (metalearn.tasks.variable), saved in its
    eval/ as <split>_variable_e<episodes>_seed<seed>_<checkpoint>.json with each episode's ways and support size."""
    from metalearn.engine.evaluate import evaluate_variable
    from metalearn.engine.rundir import RunFolder
    from metalearn.errors import MetalearnError
    from metalearn.hardware import autocast

    fixed = [k for k, v in (("ways", cfg.ways), ("shots", cfg.shots), ("queries", cfg.queries), ("within", cfg.within),
                            ("readout", cfg.readout), ("ensemble", cfg.ensemble)) if v]
    fixed += ["disjoint_drawers"] if cfg.disjoint_drawers else []
    fixed += ["tta.copies"] if cfg.tta.copies > 1 else []
    fixed += ["paired"] if cfg.paired else []
    if fixed:
        raise MetalearnError(f"variable=true draws each episode's ways, shots and queries by Meta-Dataset's rules; "
                             f"{', '.join(fixed)} {'does' if len(fixed) == 1 else 'do'} not apply to it: drop "
                             f"{'it' if len(fixed) == 1 else 'them'}")
    method, store, ckpt = members[0]
    saved = ckpt["config"]
    folder = RunFolder(folders[0], read_only=True)
    folder.hold()
    try:
        r = evaluate_variable(method, store, cfg.split, cfg.episodes, cfg.seed, device, autocast(device, amp_setting),
                              cache=feature_cache(cfg, members, None))
        crossed = store.meta.get("cross_domain")
        name = cross_named(f"{cfg.split}_variable_e{cfg.episodes}_seed{cfg.seed}_{ckpt['checkpoint_name']}", crossed,
                           source)
        path = r.save(folder.eval_dir, name, {"cross_domain": crossed} if crossed else None)
    finally:
        folder.release()
    s = r.summary()
    print(f"{saved['method']['name']} on {scored_on(saved, crossed, source)} {cfg.split}, variable episodes ("
          f"{s['ways_range'][0]}-"
          f"{s['ways_range'][1]} ways, mean {s['ways_mean']:.1f}; support {s['support_range'][0]}-"
          f"{s['support_range'][1]} images, mean {s['support_mean']:.0f}): {100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}% "
          f"(95% CI, {len(r.per_episode)} episodes, episodes {s['episodes_digest']}"
          f"{', transductive' if r.transductive else ''}) -> {path}")
    return s | ({"cross_domain": crossed} if crossed else {})


def member_rows(folders: list[Path], members: list, alone: list[EvalResult], per_episode: bool = False) -> list[dict]:
    """An ensemble's members, each scored alone on the same episodes (empty for one run): the result file keeps their
    per-episode accuracies, the printed summary not."""
    if not alone:
        return []
    return [{"run": str(f), "checkpoint": c["checkpoint_name"], "method": c["config"]["method"]["name"],
             "accuracy": a.accuracy, "ci95": a.ci95, **({"per_episode": a.per_episode.tolist()} if per_episode else {})}
            for f, (_, _, c), a in zip(folders, members, alone, strict=True)]


def score(protocol: EvalConfig, readout: Readout | None, folders: list[Path], members: list, device: torch.device,
          batch: int, amp, folder: RunFolder, source: str | None = None) -> tuple[EvalResult, list[EvalResult], Path]:
    """The run (or the ensemble of the runs) scored under `protocol`, its result saved in the first run's eval/:
    the result, each member's alone (an ensemble), and the result file."""
    from metalearn.engine.evaluate import evaluate, evaluate_ensemble, task_spec

    spec = task_spec(protocol)
    if len(members) == 1:
        cache = feature_cache(protocol, members, readout)
        r, alone = evaluate(members[0][0], members[0][1], protocol, device, batch, amp, cache=cache), []
    else:
        r, alone = evaluate_ensemble([(m, s) for m, s, _ in members], protocol, device, batch, amp)
    ensemble = member_rows(folders, members, alone, per_episode=True)
    runs = [(str(f.resolve()), c["checkpoint_name"]) for f, (_, _, c) in zip(folders, members, strict=True)]
    name = protocol.file_name(spec.tag, spec.queries, members[0][2]["checkpoint_name"], readout,
                              f"_ensemble-{len(runs)}-{members_digest(runs)}" if len(runs) > 1 else "")
    crossed = members[0][1].meta.get("cross_domain")
    name = cross_named(name, crossed, source)
    extra = ({"ensemble": ensemble} if ensemble else {}) | ({"cross_domain": crossed} if crossed else {})
    return r, alone, r.save(folder.eval_dir, name, extra or None)


def feature_cache(cfg: EvalConfig, members: list, readout: Readout | None):
    """feature_cache=true: the run's codes of the split, from disk after the first time (engine/feature_cache.py);
    refused, with the reason, where an image's code is not fixed (so a cache would change the result)."""
    if not cfg.feature_cache:
        return None
    from metalearn.engine.feature_cache import FeatureCache, cache_root
    from metalearn.errors import MetalearnError
    from metalearn.methods.base import EmbeddingMethod

    method, store, ckpt = members[0]
    why = None
    if len(members) > 1:
        why = "an ensemble's members each have their own codes; score them one by one"
    elif not isinstance(method, EmbeddingMethod) or getattr(method, "adapts_at_test", False):
        why = f"{method.name} adapts to each task, so an image has no code of its own"
    elif cfg.tta.copies > 1:
        why = "test-time copies are drawn afresh for each evaluation"
    elif readout is not None and readout.needs_images:
        why = f"readout={readout.name} with finetune_backbone=true fine-tunes the encoder on each task"
    else:
        was = method.training
        method.eval()
        if not method.encodes_each_image_alone():
            why = "its batch norms use each task's statistics (test_batch_norm), so a code depends on the task"
        method.train(was)
    if why:
        raise MetalearnError(f"feature_cache=true keeps one code per image, and {why}; drop feature_cache=true")
    cache = FeatureCache(cache_root(ckpt["config"].get("dataset")), method, store, cfg.split, cfg.feature_cache_dtype)
    print(f"feature cache: {'reading' if cache.hit else 'encoding the split into'} {cache.path}")
    return cache


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


def restore_member(cfg: EvalConfig, folder: Path, device: torch.device) -> tuple[Method, ImageStore, dict]:
    """One run's trained method with the test-time options applied, its image store and its checkpoint."""
    from metalearn.data import build_store
    from metalearn.engine.restore import restore_method
    from metalearn.errors import MetalearnError

    method, ckpt = restore_method(folder, cfg.checkpoint, device)
    saved = ckpt["config"]
    if cfg.test_batch_norm is not None:
        set_policy(method, saved["method"]["name"], cfg.test_batch_norm)
    if cfg.inner_steps is not None:
        set_inner_steps(method, saved["method"]["name"], cfg.inner_steps)
    if cfg.test_dataset is not None:  # cross-domain: another dataset's test split, as the run's input
        from metalearn.data.cross_domain import as_run_input, dataset_label, target_config

        pre = ckpt["preprocess"]
        target = target_config(cfg.test_dataset, cfg.dataset_root, int(pre["image_size"]), held_out=True)
        try:
            store = build_store(target)
        except MetalearnError as e:
            raise MetalearnError(in_eval_terms(str(e), None)) from None
        tested_on = dataset_label({"name": cfg.test_dataset, "root": target.get("root")})
        return method, as_run_input(store, pre, dataset_label(saved["dataset"]), tested_on), ckpt
    dataset = dict(saved["dataset"])
    if cfg.dataset_root is not None:
        dataset["root"] = cfg.dataset_root
    try:
        store = build_store(DictConfig(dataset))
    except MetalearnError as e:
        raise MetalearnError(in_eval_terms(str(e), saved["dataset"].get("root"))) from None
    return method, store, ckpt


def in_eval_terms(message: str, trained_root: str | None) -> str:
    """A dataset builder's message speaks metalearn-train's keys; metalearn-eval's are dataset_root= (and no
    download: the run's data is what it was trained on)."""
    import re

    message = re.sub(r",? or set dataset\.download=true[^.;]*", "", message)
    message = re.sub(r"dataset\.root=?", "dataset_root=", message)
    if trained_root is None:  # dataset=: another dataset, read from dataset_root= or its default root
        return message
    return f"{message} (metalearn-eval reads the run's dataset from dataset_root=, by default where it was trained: " \
           f"{trained_root})"


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

        sys.argv[1:] = [spelled(a) for a in sys.argv[1:]]
        run_checked(sys.argv[1:], "eval", _hydra_main)


def spelled(arg: str) -> str:
    """`dataset=cub` is how a user asks for a cross-domain test; in Hydra's eyes `dataset` is train's config group,
    so the key is test_dataset and this spelling is its alias."""
    return "test_dataset=" + arg.split("=", 1)[1] if arg.startswith("dataset=") else arg


if __name__ == "__main__":
    main()
