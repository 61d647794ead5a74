"""What variable episodes cost against fixed ones, measured in one run on one trained run's method and data.

    python scripts/bench_variable.py RUN [episodes=600] [steps=50] [threads=1]

Evaluation: `episodes` variable episodes of the test split (metalearn-eval variable=true) against as many
fixed 20-way 1-shot and 5-way 1-shot episodes (15 queries), each timed whole (plans, images, forward passes).
Training: `steps` train steps on variable training episodes against as many on fixed 5-way 1-shot ones, on a
copy of the run's method. Prints seconds, episodes per second and the ratios; the issue's goal is variable
evaluation within 3x of fixed 20-way 1-shot.
"""

from __future__ import annotations

import copy
import sys
import time

import torch


def main(argv: list[str]) -> None:
    from omegaconf import DictConfig

    from metalearn.data import build_store
    from metalearn.engine.evaluate import evaluate, evaluate_variable, protocol_for
    from metalearn.engine.restore import restore_method
    from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, gather
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

    rows = []
    t_var, r = timed(lambda: evaluate_variable(method, store, "test", episodes, 2, cpu))
    rows.append(("evaluation, variable", t_var, episodes, f"{100 * r.accuracy:.2f}%, ways {r.ways.mean():.1f}, "
                                                        f"support {r.support_sizes.mean():.0f} images on average"))
    for ways in (20, 5):
        spec = TaskSpec(ways, 1, 15)
        t, r = timed(lambda spec=spec: evaluate(method, store, protocol_for("test", spec, episodes, 2), cpu))
        rows.append((f"evaluation, fixed {ways}-way 1-shot", t, episodes, f"{100 * r.accuracy:.2f}%"))
    learner = copy.deepcopy(method).train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    variable = VariableSampler(store, "train", 0)
    t, _ = timed(lambda: [learner.train_step(gather_one(store, variable.episode(s)), optimizer) for s in range(steps)])
    rows.append(("training, variable", t, steps, "one episode a step"))
    fixed = EpisodeSampler(store, "train", TaskSpec(5, 1, 15), 0)
    t, _ = timed(lambda: [learner.train_step(gather(store, fixed.plans(s, 1)), optimizer) for s in range(steps)])
    rows.append(("training, fixed 5-way 1-shot", t, steps, "one episode a step"))
    print(f"{'':<36}{'seconds':>9}{'episodes/s':>12}")
    for name, seconds, n, note in rows:
        print(f"{name:<36}{seconds:>9.1f}{n / seconds:>12.1f}  {note}")
    print(f"variable / fixed 20-way 1-shot evaluation: {rows[0][1] / rows[1][1]:.2f}x (goal: within 3x)")
    print(f"variable / fixed 5-way 1-shot evaluation: {rows[0][1] / rows[2][1]:.2f}x")
    print(f"variable / fixed 5-way 1-shot training step: {rows[3][1] / rows[4][1]:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
