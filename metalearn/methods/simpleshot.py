"""SimpleShot (Wang et al. 2019, "SimpleShot: Revisiting Nearest-Neighbor Classification for Few-Shot Learning").

No meta-training at all: the features of a network pre-trained as an ordinary classifier over the
training classes, transformed, then nearest centroid:

    CL2N:  x -> (x - mean_base) / ||x - mean_base||,   logits[q, c] = -||x_q - centroid_c||^2

where mean_base is the mean feature of the training (base) images, and centroid_c the mean of class c's
transformed support features. `method.norm` also gives the paper's UN (no transformation) and L2N (no
centring). The finding: with centring and L2 normalisation this matches many meta-learners.

Here the pre-training is the `baseline` method (a linear classifier), run as the first stage of the
preset (pretrain.experiment), and this method's own "training" takes no gradient step: it measures
mean_base by encoding minibatches of training images with the final network in eval mode (the running
average over all images drawn), and reports the pre-trained classifier's loss and accuracy on them.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.methods.base import BuildContext, EmbeddingMethod, TrainingContext, accuracy, class_centroids
from metalearn.methods.baseline import head_logits
from metalearn.registry import METHODS
from metalearn.tasks.sources import LabelledBatch, LabelledSource


def transform(z: torch.Tensor, norm: str, base_mean: torch.Tensor) -> torch.Tensor:
    """UN (as is), L2N (unit length) or CL2N (centred on the base mean, then unit length)."""
    if norm == "cl2n":
        z = z - base_mean
    return z if norm == "un" else nn.functional.normalize(z, dim=-1)


def nearest_centroid_logits(zs: torch.Tensor, support_labels: torch.Tensor, zq: torch.Tensor,
                            ways: int) -> torch.Tensor:
    """Negative squared Euclidean distance from each query [T, Q, D] to each class centroid -> [T, Q, ways]."""
    centroids = class_centroids(zs, support_labels, ways)
    return -(zq[:, :, None] - centroids[:, None]).pow(2).sum(-1)


class SimpleShot(EmbeddingMethod):
    name = "simpleshot"
    class_logits_independent = True  # a class's logit reads its own support codes only (support_index.top_k)
    train_data = "labelled"
    steps_optimizer = False

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, norm: str = "cl2n",
                 batch_size: int = 1024):
        super().__init__()
        self.backbone, self.norm, self.batch_size = backbone, norm, batch_size
        # the pre-trained classifier (Baseline's names, so init.run takes it whole); only reported, never trained
        self.weight = nn.Parameter(torch.zeros(num_classes, feature_dim), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(num_classes), requires_grad=False)
        self.register_buffer("feature_sum", torch.zeros(feature_dim, dtype=torch.float64))
        self.register_buffer("feature_count", torch.zeros((), dtype=torch.float64))
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def training_source(self, ctx: TrainingContext) -> LabelledSource:
        return LabelledSource(ctx.store, ctx.seed, self.batch_size)

    def learns(self) -> bool:
        return True  # no gradient, but its steps measure the base mean

    @property
    def base_mean(self) -> torch.Tensor:
        return (self.feature_sum / self.feature_count.clamp_min(1)).to(self.weight.dtype)

    def frozen_codes_reason(self) -> str | None:
        return None  # its steps encode in eval mode with a backbone it never trains: a feature cache can serve them

    def train_step(self, batch: LabelledBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        was = self.training
        self.eval()  # the features a test task will see: running batch-norm statistics, no dropout
        with torch.no_grad():
            z = self.stored_codes(batch.images, batch.index)
            self.feature_sum += z.sum(0).double()
            self.feature_count += z.shape[0]
            logits = head_logits(z, self.weight, self.bias, cosine=False)
            loss = nn.functional.cross_entropy(logits, batch.labels)
        self.train(was)
        return {"loss": float(loss), "accuracy": float(accuracy(logits, batch.labels))}

    def head(self, zs, support_labels, zq, ways):
        mean = self.base_mean
        return nearest_centroid_logits(transform(zs, self.norm, mean), support_labels, transform(zq, self.norm, mean),
                                       ways)


@METHODS.register("simpleshot")
def build(cfg, ctx: BuildContext) -> SimpleShot:
    from metalearn.errors import MetalearnError

    if ctx.train_classes is None:
        raise MetalearnError("simpleshot needs the number of training classes to hold its pre-trained classifier")
    backbone = ctx.backbone(cfg)
    return SimpleShot(backbone, ctx.feature_dim(backbone), ctx.train_classes, cfg.norm, cfg.batch_size)
