"""readout=chamfer: two images compared by their sets of test-time copies, not by the mean of the copies' codes.

Why: the mean code blurs each image over the same random distortions, so a query drawn by another hand is
still compared with one fixed view of the support image. Matching copies to copies asks instead whether
*some* distortion of the one looks like *some* distortion of the other, as Simard et al.'s tangent distance
does for handwriting, with random copies in place of tangent planes: each copy of one image takes its nearest
copy (cosine) of the other, averaged over the copies, both ways (a symmetric Chamfer similarity). It is
inductive: a query is scored against the support images alone, never against the other queries.
Measured on Omniglot's held-out alphabet in docs/results.md (issue 39).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metalearn.errors import MetalearnError
from metalearn.readouts import READOUTS, Readout


def chamfer_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [A, K, D], b [B, K, D] (unit-length copies' codes) -> [A, B]: half of (the mean over a's copies of the best
    cosine among b's copies + the same from b's side), so 1 for identical sets, like a cosine."""
    sims = torch.einsum("akd,bjd->abkj", a, b)
    return 0.5 * (sims.amax(3).mean(2) + sims.amax(2).mean(2))


def chamfer_logits(zs: torch.Tensor, support_labels: torch.Tensor, zq: torch.Tensor, ways: int,
                   scale: float) -> torch.Tensor:
    """Support copies' codes [T, S, K, ...], labels [T, S], query copies' codes [T, Q, K, ...] -> logits
    [T, Q, ways]: `scale` times each class's mean Chamfer similarity over its support images (the cosine head's
    temperature, so that an ensemble averages probabilities as sharp as the members' own). One episode at a
    time: a 20-way episode with 96 copies compares 300 x 20 x 96 x 96 pairs of codes."""
    zs, zq = F.normalize(zs.flatten(3), dim=-1), F.normalize(zq.flatten(3), dim=-1)
    onehot = F.one_hot(support_labels, ways).to(zs.dtype)  # [T, S, ways]
    per_class = onehot / onehot.sum(1, keepdim=True)
    out = [chamfer_similarity(q, s) @ w for q, s, w in zip(zq, zs, per_class, strict=True)]
    return scale * torch.stack(out)


@READOUTS.register("chamfer")
class ChamferReadout(Readout):
    """Stands in for a cosine head (meta_baseline's), so it takes that head's temperature: an ensemble then averages
    probabilities as sharp as the members' own. Other heads are refused before any image is encoded."""

    keeps_copies = True

    def check(self, method, copies):
        super().check(method, copies)
        if method.cosine_temperature() is None:
            raise MetalearnError(f"readout=chamfer compares copies by cosine in place of a cosine head (meta_baseline's), "
                                 f"and {type(method).__name__}'s head is not one; drop readout= or evaluate a "
                                 f"meta_baseline run")

    def logits(self, method, zs, support_labels, zq, ways):
        return chamfer_logits(zs, support_labels, zq, ways, method.cosine_temperature())
