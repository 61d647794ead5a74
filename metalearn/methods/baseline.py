"""The transfer-learning baselines of Chen et al. 2019, "A Closer Look at Few-shot Classification".

- Training: ordinary supervised learning of backbone + head over all training classes at once,
  from labelled minibatches (``metalearn.tasks.sources.LabelledSource``); no episodes.
- Test: the backbone is frozen; a new head for the task's N classes is fitted on the support
  embeddings, then classifies the queries.

``baseline`` uses linear heads; ``baselinepp`` (Baseline++) cosine heads, whose logits are
scale * cos(feature, class weight), with the scale of the paper's code: 2 for up to 200
classes, 10 above. The test-time head starts from the same seeded initialisation in every
episode and is trained full-batch with the paper's SGD settings (momentum 0.9, dampening 0.9,
weight decay 1e-3), all episodes of an evaluation batch in parallel. The paper's learning rate,
0.01, is for 100 epochs of minibatches of 4 on 1600-d features; with full-batch steps on
Conv-4's 64-d Omniglot features it leaves the support set unfitted (measured), so the default
here is 0.1 for 100 steps (``method.finetune_lr``, ``method.finetune_steps``).

With ``method.teacher`` (a trained baseline run) pre-training is born-again distillation (Furlanello et al.
2018; Tian et al. 2020's RFS for few-shot): the loss is (1 - w) x cross-entropy + w x T^2 x KL(teacher's
softmax at temperature T || the student's), RFS's w = 0.5 and T = 4 by default (``method.distill_weight``,
``method.distill_temperature``). The teacher sees the same augmented images, frozen and in eval mode.

``method.margin`` m is subtracted from the true class's logit in pre-training's cross-entropy (for baselinepp
from its cosine, before the scale), as Liu et al. 2020 ("Negative Margin Matters") do: a positive margin
separates the training classes more, a negative one less, which they found transfers better to new classes.
Their softmax setting for miniImageNet, -0.3 on logits scaled by 5, is -1.5 here, where logits are unscaled.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metalearn import optimizers
from metalearn.errors import MetalearnError
from metalearn.methods.base import BuildContext, EmbeddingMethod, TrainingContext, accuracy, fp32
from metalearn.registry import METHODS
from metalearn.tasks.sources import LabelledBatch, LabelledSource


def cosine_scale(classes: int) -> float:
    return 2.0 if classes <= 200 else 10.0


def head_logits(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cosine: bool) -> torch.Tensor:
    """z [..., N, D], weight [..., ways, D] -> logits [..., N, ways]."""
    if cosine:
        scale = cosine_scale(weight.shape[-2])
        return scale * nn.functional.normalize(z, dim=-1) @ nn.functional.normalize(weight, dim=-1).transpose(-1, -2)
    return z @ weight.transpose(-1, -2) + bias[..., None, :]


class Baseline(EmbeddingMethod):
    train_data = "labelled"
    adapts_at_test = True

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, cosine: bool = False,
                 finetune_steps: int = 100, finetune_lr: float = 0.1, margin: float = 0.0):
        super().__init__()
        self.margin = margin
        self.name = "baselinepp" if cosine else "baseline"
        self.backbone, self.cosine = backbone, cosine
        self.finetune_steps, self.finetune_lr = finetune_steps, finetune_lr
        self.weight = nn.Parameter(torch.empty(num_classes, feature_dim))
        self.bias = None if cosine else nn.Parameter(torch.zeros(num_classes))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation
        self._teacher: list[Baseline] = []  # a list, so the teacher is no submodule: never in this run's checkpoints
        self.batch_size = 128  # pre-training minibatch (build sets the config's)
        self.teacher_run: str | None = None  # method.teacher: a run folder whose logits prepare() distils
        self.distill_weight, self.distill_temperature = 0.5, 4.0

    def training_source(self, ctx: TrainingContext) -> LabelledSource:
        return LabelledSource(ctx.store, ctx.seed, self.batch_size)

    def prepare(self, ctx: TrainingContext) -> None:
        if self.teacher_run:
            from metalearn.methods.teacher import load_teacher

            self.set_teacher(load_teacher(self.teacher_run, ctx, self.weight.shape[0], Baseline), self.distill_weight,
                             self.distill_temperature)

    def set_teacher(self, teacher: Baseline, weight: float, temperature: float) -> None:
        if not 0.0 < weight <= 1.0 or temperature <= 0:
            raise MetalearnError(f"method.distill_weight={weight} must lie in (0, 1] and method.distill_temperature="
                                 f"{temperature} above 0 (RFS: 0.5 and 4)")
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher = [teacher.eval()]
        self.distill_weight, self.distill_temperature = weight, temperature

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits over the training classes (pre-training's head)."""
        return head_logits(fp32(self.backbone(images)), self.weight, self.bias, self.cosine)

    def with_margin(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training logits with the margin taken from each image's own class (in cosine units for baselinepp)."""
        if not self.margin:
            return logits
        step = self.margin * (cosine_scale(logits.shape[-1]) if self.cosine else 1.0)
        return logits - step * nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)

    def train_step(self, batch: LabelledBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        logits = head_logits(self.stored_codes(batch.images, batch.index), self.weight, self.bias, self.cosine)
        loss = nn.functional.cross_entropy(self.with_margin(logits, batch.labels), batch.labels)
        stats = {}
        if self._teacher:
            with torch.no_grad():
                target = self._teacher[0].class_logits(batch.images)
            t, w = self.distill_temperature, self.distill_weight
            kd = nn.functional.kl_div(nn.functional.log_softmax(logits / t, -1), nn.functional.log_softmax(target / t, -1),
                                      log_target=True, reduction="batchmean") * t * t
            stats = {"cross_entropy": float(loss.detach()), "distillation": float(kd.detach())}
            loss = (1 - w) * loss + w * kd
        if torch.isfinite(loss):
            loss.backward()
            optimizer.step()
        return {"loss": float(loss.detach()), "accuracy": float(accuracy(logits, batch.labels)), **stats}

    def fit_heads(self, zs: torch.Tensor, labels: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """New heads for T tasks at once: zs [T, S, D] frozen support embeddings -> weight [T, ways, D], bias."""
        t, _, d = zs.shape
        g = torch.Generator().manual_seed(0)  # the same start in every episode, whatever its batch
        bound = 1.0 / math.sqrt(d)
        weight = ((torch.rand(ways, d, generator=g) * 2 - 1) * bound).to(zs).expand(t, -1, -1).clone().requires_grad_()
        bias = None if self.cosine else torch.zeros(t, ways, dtype=zs.dtype, device=zs.device, requires_grad=True)
        params = [weight] + ([] if bias is None else [bias])
        opt = optimizers.SGD(params, lr=self.finetune_lr, momentum=0.9, dampening=0.9, weight_decay=1e-3)
        for _ in range(self.finetune_steps):
            logits = head_logits(zs, weight, bias, self.cosine)
            # summed over tasks, so each task's head follows the gradient of its own mean loss
            loss = nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return weight.detach(), None if bias is None else bias.detach()

    def encode(self, x):
        with torch.no_grad():  # the backbone is frozen at test time; only the new head learns
            return self.backbone(x)

    def head(self, zs, support_labels, zq, ways):
        with torch.enable_grad():
            weight, bias = self.fit_heads(zs, support_labels, ways)
        return head_logits(zq, weight, bias, self.cosine)


@METHODS.register("baseline", "baselinepp")
def build(cfg, ctx: BuildContext) -> Baseline:
    if ctx.train_classes is None:
        raise MetalearnError(f"{cfg.name} needs the number of training classes to size its pre-training head")
    from metalearn.config import BaselineConfig
    from metalearn.methods.teacher import check_distillation_settings

    check_distillation_settings(cfg, BaselineConfig)
    backbone = ctx.backbone(cfg)
    method = Baseline(backbone, ctx.feature_dim(backbone), ctx.train_classes, cfg.name == "baselinepp",
                      cfg.finetune_steps, cfg.finetune_lr, cfg.margin)
    method.batch_size, method.teacher_run = cfg.batch_size, cfg.teacher
    method.distill_weight, method.distill_temperature = cfg.distill_weight, cfg.distill_temperature
    return method
