"""What the feature cache saves (metalearn-eval feature_cache=true), measured in one run on one trained run.

    python scripts/bench_feature_cache.py RUN [episodes=600] [trials=30] [trial_episodes=100] [threads=1]
    python scripts/bench_feature_cache.py train OVERRIDES...    # metalearn-train feature_cache=true (frozen encoder)

1. `episodes` test episodes (the run's own ways, shots and queries), three times: without the cache, with a cold
   cache (encoding the split into it), with a warm one (reading it); the per-episode results must agree.
2. A search of `trials` settings of readout=finetune (finetune_steps x finetune_lr, a grid) on `trial_episodes`
   validation episodes each, without and with the (warm) cache: the encoder runs once instead of once a trial.
3. `train`: the whole command `metalearn-train OVERRIDES` three times, alone, with OMP_NUM_THREADS=1: without the
   cache, with a cold one (each split encoded once, then read) and a warm one (a second run on the same encoder and
   data); the three runs' test results must agree.
The cache goes to a temporary folder, removed at the end. Prints seconds and the ratios.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str]) -> None:
    from omegaconf import DictConfig

    from metalearn.config import EvalProtocol
    from metalearn.data import build_store
    from metalearn.engine.evaluate import evaluate
    from metalearn.engine.feature_cache import FeatureCache
    from metalearn.engine.restore import restore_method

    run, keys = argv[0], dict(a.split("=", 1) for a in argv[1:])
    episodes, trials = int(keys.get("episodes", 600)), int(keys.get("trials", 30))
    trial_episodes = int(keys.get("trial_episodes", 100))
    torch.set_num_threads(int(keys.get("threads", 1)))
    method, ckpt = restore_method(run, "last")
    saved = ckpt["config"]
    store = build_store(DictConfig(saved["dataset"]))
    cpu = torch.device("cpu")
    test = EvalProtocol(split="test", ways=saved["ways"], shots=saved["shots"], queries=saved["queries"],
                        episodes=episodes)
    print(f"{saved['method']['name']} ({saved['method']['backbone']['name']}) from {run}; {store.describe()}; "
          f"{torch.get_num_threads()} thread(s)")

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out

    with tempfile.TemporaryDirectory() as root:
        t_plain, plain = timed(lambda: evaluate(method, store, test, cpu))
        t_cold, cold = timed(lambda: evaluate(method, store, test, cpu, cache=FeatureCache(Path(root), method, store,
                                                                                           "test")))
        t_warm, warm = timed(lambda: evaluate(method, store, test, cpu, cache=FeatureCache(Path(root), method, store,
                                                                                           "test")))
        same = np.array_equal(plain.per_episode, cold.per_episode) and np.array_equal(plain.per_episode,
                                                                                     warm.per_episode)
        print(f"{episodes} test episodes: no cache {t_plain:.2f} s; cold cache {t_cold:.2f} s; warm cache {t_warm:.2f} s "
              f"({t_plain / t_warm:.1f}x faster); same per-episode results: {same}; "
              f"{100 * plain.accuracy:.2f}%")
        grid = list(itertools.product((25, 50, 100), (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)))[:trials]

        def search(cache_root: str | None) -> dict:
            scores = {}
            for steps, lr in grid:
                trial = EvalProtocol(split="val", ways=saved["ways"], shots=saved["shots"], queries=saved["queries"],
                                     episodes=trial_episodes, readout="finetune", finetune_steps=steps, finetune_lr=lr)
                cache = None if cache_root is None else FeatureCache(Path(cache_root), method, store, "val")
                scores[(steps, lr)] = evaluate(method, store, trial, cpu, cache=cache).accuracy
            return scores

        t_search, plain_scores = timed(lambda: search(None))
        t_cached, cached_scores = timed(lambda: search(root))
        best = max(plain_scores, key=plain_scores.get)
        print(f"a {len(grid)}-trial search of readout=finetune (steps x lr) on {trial_episodes} validation episodes "
              f"each: no cache {t_search:.1f} s; cache {t_cached:.1f} s (the first trial encodes the split) "
              f"({t_search / t_cached:.1f}x faster); same scores: {plain_scores == cached_scores}; best steps={best[0]} "
              f"lr={best[1]:g}: {100 * plain_scores[best]:.2f}%")


def train(overrides: list[str]) -> None:
    import json
    import os
    import subprocess

    with tempfile.TemporaryDirectory() as root:
        seconds, tests = {}, {}
        for name, cached in (("no cache", "false"), ("cold cache", "true"), ("warm cache", "true")):
            folder = Path(root) / name.replace(" ", "_")
            env = {**os.environ, "OMP_NUM_THREADS": "1", "METALEARN_CACHE": str(Path(root) / "cache")}
            start = time.perf_counter()
            subprocess.run(["metalearn-train", *overrides, f"feature_cache={cached}", f"run_dir={folder}"], env=env,
                           check=True, capture_output=True)
            seconds[name] = time.perf_counter() - start
            tests[name] = json.loads((folder / "summary.json").read_text())["test"]
        same = tests["no cache"] == tests["cold cache"] == tests["warm cache"]
        base = seconds["no cache"]
        print(f"metalearn-train {' '.join(overrides)}, 1 thread:")
        for name, s in seconds.items():
            print(f"  {name}: {s:.1f} s" + ("" if name == "no cache" else f" ({base / s:.1f}x faster)"))
        print(f"  the same test results: {same}; {json.dumps({k: v.get('accuracy') for k, v in tests['no cache'].items()})}")


if __name__ == "__main__":
    train(sys.argv[2:]) if sys.argv[1:2] == ["train"] else main(sys.argv[1:])
