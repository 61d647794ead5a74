"""What variable episodes cost against fixed ones, measured in one run on one trained run's method and data.

    python scripts/bench_variable.py RUN [episodes=600] [steps=50] [threads=1]

Evaluation: `episodes` variable episodes of the test split (metalearn-eval variable=true) against as many
fixed 20-way 1-shot and 5-way 1-shot episodes (15 queries), each timed whole (plans, images, forward passes).
Training: `steps` train steps on variable training episodes against as many on fixed 5-way 1-shot ones, on a
copy of the run's method. Prints seconds, episodes per second and the ratios; the issue's goal is variable
evaluation within 3x of fixed 20-way 1-shot. A multi-source run (dataset=multi) is evaluated source by source, as
its test is, and trained on episodes drawn one source at a time.
"""

from __future__ import annotations

import copy
import sys
import time

import torch


def main(argv: list[str]) -> None:
    from omegaconf import DictConfig

    from metalearn.data import build_store
    from metalearn.engine.evaluate import evaluate, evaluate_variable, per_source, protocol_for
    from metalearn.engine.restore import restore_method
    from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, gather
    from metalearn.tasks.multi_source import MixedEpisodeSampler, MixedVariableSampler
    from metalearn.tasks.variable import VariableSampler, gather_one

    run, keys = argv[0], dict(a.split("=", 1) for a in argv[1:])
    episodes, steps = int(keys.get("episodes", 600)), int(keys.get("steps", 50))
    torch.set_num_threads(int(keys.get("threads", 1)))
    method, ckpt = restore_method(run, "last")
    store = build_store(DictConfig(ckpt["config"]["dataset"]))
    cpu = torch.device("cpu")
    print(f"{ckpt['config']['method']['name']} from {run}; {store.describe()}; {torch.get_num_threads()} thread(s)")

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out

    rows, ratios = [], []
    for name, part in per_source(store, "test"):
        at = f" ({name})" if name else ""
        t_var, r = timed(lambda part=part: evaluate_variable(method, part, "test", episodes, 2, cpu))
        rows.append((f"evaluation{at}, variable", t_var, episodes, f"{100 * r.accuracy:.2f}%, ways "
                     f"{r.ways.mean():.1f}, support {r.support_sizes.mean():.0f} images on average"))
        fixed_times = []
        for ways in (20, 5):
            spec = TaskSpec(ways, 1, 15)
            t, r = timed(lambda spec=spec, part=part: evaluate(method, part, protocol_for("test", spec, episodes, 2), cpu))
            rows.append((f"evaluation{at}, fixed {ways}-way 1-shot", t, episodes, f"{100 * r.accuracy:.2f}%"))
            fixed_times.append(t)
        ratios += [(f"variable / fixed 20-way 1-shot evaluation{at}", t_var / fixed_times[0], " (goal: within 3x)"),
                   (f"variable / fixed 5-way 1-shot evaluation{at}", t_var / fixed_times[1], "")]
    learner = copy.deepcopy(method).train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    variable = MixedVariableSampler(store, "train", 0) if store.sources else VariableSampler(store, "train", 0)
    t_train, _ = timed(lambda: [learner.train_step(gather_one(store, variable.episode(s)), optimizer)
                                for s in range(steps)])
    rows.append(("training, variable", t_train, steps, "one episode a step"))
    spec = TaskSpec(5, 1, 15)
    fixed = MixedEpisodeSampler(store, "train", spec, 0) if store.sources else EpisodeSampler(store, "train", spec, 0)
    t, _ = timed(lambda: [learner.train_step(gather(store, fixed.plans(s, 1)), optimizer) for s in range(steps)])
    rows.append(("training, fixed 5-way 1-shot", t, steps, "one episode a step"))
    ratios.append(("variable / fixed 5-way 1-shot training step", t_train / t, ""))
    print(f"{'':<52}{'seconds':>9}{'episodes/s':>12}")
    for name, seconds, n, note in rows:
        print(f"{name:<52}{seconds:>9.1f}{n / seconds:>12.1f}  {note}")
    for name, ratio, goal in ratios:
        print(f"{name}: {ratio:.2f}x{goal}")

if __name__ == "__main__":
    main(sys.argv[1:])
