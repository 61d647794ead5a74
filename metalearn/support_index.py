"""A saved support set: its codes and class names, so that queries are classified without encoding it again.

    metalearn-predict run=RUN support=big_support save_index=support.npz      # encode once, save
    metalearn-predict run=RUN index=support.npz query=photos/                 # classify against it

The file is an .npz of plain arrays (read with allow_pickle=False: data only, nothing runs): the codes [S, D] as
float32, each code's class [S], the class names, and what made it (the method, the run, a digest of the
method's weights), so an index is refused by a run whose encoder would give other codes.

Many classes (10,000 and more) stay fast for methods whose class logits each depend on that class's own support
codes only (a nearest-centroid head: ProtoNet, Meta-Baseline, SimpleShot; `class_logits_independent`): the
classes are scored in chunks, keeping a running top-k and a running log-sum-exp, so the probabilities are the
softmax over every class without a [queries, classes] matrix in memory. Other heads score all classes at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metalearn.errors import MetalearnError

CHUNK = 2048  # classes scored at once
FORMAT = 1


def weights_digest(method: torch.nn.Module) -> str:
    """A fingerprint of the method's weights and buffers (names, shapes and values), 16 hex digits."""
    h = hashlib.sha256()
    for name, value in sorted(method.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(value.shape)).encode())
        wide = torch.float64 if value.is_floating_point() else torch.int64  # any dtype and layout, as numbers
        h.update(value.detach().cpu().to(wide).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class SupportIndex:
    codes: torch.Tensor  # [S, D]
    labels: torch.Tensor  # [S], 0..C-1
    classes: list[str]
    made_by: dict  # method, run, checkpoint, weights digest

    def save(self, path: Path) -> None:
        from metalearn.files import atomic_open

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:
            np.savez(f, codes=self.codes.float().cpu().numpy(), labels=self.labels.cpu().numpy().astype(np.int64),
                     classes=np.array(self.classes, dtype=str), made_by=np.array(json.dumps(self.made_by)))

    @classmethod
    def load(cls, path: Path) -> SupportIndex:
        if not path.is_file():
            raise MetalearnError(f"index={path} does not exist; make one with metalearn-predict run=... support=... "
                                 f"save_index={path}")
        try:
            with np.load(path, allow_pickle=False) as f:
                made_by = json.loads(str(f["made_by"]))
                index = cls(torch.from_numpy(f["codes"]), torch.from_numpy(f["labels"]), f["classes"].tolist(), made_by)
        except (OSError, ValueError, KeyError) as e:
            raise MetalearnError(f"index={path} is not a support index this tool wrote ({type(e).__name__}: {e})") from None
        if made_by.get("format") != FORMAT:
            raise MetalearnError(f"index={path} has format {made_by.get('format')}; this version reads {FORMAT}")
        return index

    def check_fits(self, method_name: str, digest: str, path: Path) -> None:
        if self.made_by.get("weights") != digest:
            raise MetalearnError(f"index={path} was made by {self.made_by.get('method')} from {self.made_by.get('run')} "
                                 f"({self.made_by.get('checkpoint')} checkpoint); this {method_name} run's weights differ, "
                                 f"so its codes would not match: make the index again with this run's save_index=")


def top_k(method, index: SupportIndex, zq: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most probable classes of each query code [Q, D] against the index, and their probabilities (softmax
    over all classes): scored CHUNK classes at a time where the method's class logits are independent."""
    n = len(index.classes)
    chunk = CHUNK if getattr(method, "class_logits_independent", False) else n
    best_logit = torch.full((zq.shape[0], 0), -torch.inf)
    best_class = torch.zeros((zq.shape[0], 0), dtype=torch.long)
    total = torch.full((zq.shape[0],), -torch.inf)
    order = torch.argsort(index.labels, stable=True)
    codes, labels = index.codes[order], index.labels[order]
    bounds = torch.searchsorted(labels, torch.arange(0, n + 1, chunk).clamp(max=n)).tolist() + [len(labels)]
    for c, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=False)):
        first = c * chunk
        ways = min(chunk, n - first)
        if ways <= 0:
            break
        logits = method.head(codes[lo:hi][None].to(zq.device), (labels[lo:hi] - first)[None].to(zq.device), zq[None],
                             ways)[0].float().cpu()
        total = torch.logaddexp(total, torch.logsumexp(logits, 1))
        merged = torch.cat([best_logit, logits], 1)
        ids = torch.cat([best_class, torch.arange(first, first + ways).expand(zq.shape[0], -1)], 1)
        keep = torch.topk(merged, min(k, merged.shape[1]), dim=1)
        best_logit, best_class = keep.values, ids.gather(1, keep.indices)
    return best_class, torch.exp(best_logit - total[:, None])
