"""MANN on a toy binding task: can the memory learn to bind an example to its late label?

Each sequence holds 5 classes x 6 instances in random order; a class is a random 64-d vector, an
instance that vector plus Gaussian noise (sd 0.5), so the features already separate the classes and
only the memory mechanism is under test. Prints the accuracy by instance number (instance 1 can
only be guessed; instance 2 needs one retrieval).

    python experiments/mann_toy.py --write add
    python experiments/mann_toy.py --write key   # the paper's rule

Measured (2026-11-22, this script, defaults, 1 thread, about 5 minutes each): at step 3000
--write add gives 95% on the 2nd instance (loss 0.354), --write key 26% (loss 1.430: label
counts only).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from metalearn.methods.mann import MANN


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", choices=["add", "key"], default="add")
    p.add_argument("--key-strength", type=int, choices=[0, 1], default=1)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ways, instances, dim = 5, 6, 64
    m = MANN(nn.Identity(), dim, ways, key_strength=bool(a.key_strength), normalize_input=True, write=a.write)
    opt = torch.optim.Adam(m.parameters(), a.lr)
    start = time.time()
    for step in range(1, a.steps + 1):
        classes = torch.randn(a.batch, ways, dim)
        y = torch.arange(ways).repeat(instances)[None].expand(a.batch, -1)
        y = y.gather(1, torch.rand(a.batch, ways * instances).argsort(1))
        x = classes.gather(1, y[..., None].expand(-1, -1, dim)) + 0.5 * torch.randn(a.batch, ways * instances, dim)
        onehot = nn.functional.one_hot(y, ways).float()
        logits, _ = m.run_sequence(m.encode(x), onehot)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            instance = (onehot.cumsum(1) * onehot).sum(-1)  # 1 for a class's first appearance, 2 for its second...
            correct = (logits.argmax(-1) == y).float()
            by = " ".join(f"inst{k} {correct[instance == k].mean():.2f}" for k in (1, 2, 3, 6))
            print(f"step {step} loss {loss.item():.3f} {by} {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
