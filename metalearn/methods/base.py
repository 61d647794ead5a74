"""The one interface every method answers, whatever its family.

- ``train_step(batch, optimizer)``: one meta-training step on a batch of episodes.
- ``predict(support, support_labels, query, ways)``: logits for the queries of
  one or more tasks, given their support sets.

The evaluation code calls only ``predict``; it never asks which kind of method
it holds. Methods that learn by an ordinary loss implement ``loss``; Reptile and
the transfer baselines override ``train_step``. A method whose step is a loss's
gradient computed without a host sync says so (``graph_supported``,
``graph_loss``), and the trainer may then replay that gradient as a CUDA graph.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from metalearn.backbones import build_backbone, feature_dim
from metalearn.errors import MetalearnError
from metalearn.methods.task_norm import batch_norm_layers, embed_with_task_statistics
from metalearn.tasks.episodes import EpisodeBatch, TaskSpec
from metalearn.tasks.sources import EpisodeSource, TrainingSource, VariableEpisodeSource

if TYPE_CHECKING:
    from metalearn.data.store import ImageStore


@dataclass(frozen=True)
class BuildContext:
    """What a method's builder needs besides its config: only the run knows these."""

    image_shape: tuple[int, int, int]  # (C, H, W) of the dataset's images
    ways: int  # the training episodes' way count (the size of a classifier head, for methods that have one)
    channels_last: bool = False
    train_classes: int | None = None  # the training split's class count (the transfer baselines' head)
    shots: int | None = None  # the training episodes' shot count (FEAT's per-shot settings)

    def backbone(self, cfg: Any, bn_running_stats: bool = True) -> nn.Module:
        return build_backbone(cfg.backbone, self.image_shape[0], self.channels_last, bn_running_stats)

    def feature_dim(self, backbone: nn.Module) -> int:
        return feature_dim(backbone, self.image_shape)


@dataclass(frozen=True)
class TrainingContext:
    """What a method needs from its run to set up meta-training: the data, the seed, the training episodes, and a
    way to read another finished run (a teacher), handed in by the engine so that a method never imports it."""

    store: ImageStore
    seed: int
    spec: TaskSpec  # the training episodes' shape
    meta_batch: int
    device: torch.device
    channels_last: bool
    dataset: dict = field(default_factory=dict)  # the run's dataset config (resolved)
    # a finished run folder -> its trained method (last checkpoint, eval mode) and its checkpoint dict
    restore: Callable[[Path], tuple[Method, dict]] | None = None
    variable: bool = False  # sampler=variable: Meta-Dataset's variable episodes (metalearn.tasks.variable)


def on_load(module: nn.Module, hook: Callable) -> None:
    """Run `hook(module, state_dict, prefix, ...)` before `module` reads a state dict (to read checkpoints of
    older versions). torch >= 2.5 names it register_load_state_dict_pre_hook; 2.3 and 2.4, the lowest this
    project supports, have only the private spelling with the same call (with_module=True)."""
    if hasattr(module, "register_load_state_dict_pre_hook"):
        module.register_load_state_dict_pre_hook(hook)
    else:  # pragma: no cover - torch 2.3 / 2.4 (.ci/lowest)
        module._register_load_state_dict_pre_hook(hook, with_module=True)


def fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed at least in float32: bf16/fp16 logits (autocast) are upcast, float64 kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def accuracy(logits: torch.Tensor, labels: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The share of argmax predictions equal to the labels: over everything, or along `dim` (per task)."""
    hits = (logits.argmax(-1) == labels).float()
    return hits.mean() if dim is None else hits.mean(dim)


def class_centroids(z: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Each class's mean code: z [T, S, D], labels [T, S] -> [T, ways, D]. One matrix product (one-hot^T z over
    the counts), so every task of a batch and any number of shots per class are averaged at once."""
    onehot = nn.functional.one_hot(labels, ways).to(z.dtype)  # [T, S, ways]
    return onehot.transpose(1, 2) @ z / onehot.sum(1)[:, :, None]


def one_or_many_tasks(predict: Callable) -> Callable:
    """Let predict(support, labels, query, ways) written for task batches [T, ...] also take one task."""

    @functools.wraps(predict)
    def wrapper(self, support, support_labels, query, ways):
        if support.dim() == 4:
            return predict(self, support[None], support_labels[None], query[None], ways)[0]
        return predict(self, support, support_labels, query, ways)

    return wrapper


def embed(backbone: Callable[[torch.Tensor], torch.Tensor], support: torch.Tensor,
          query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Support [T, S, ...] and query [T, Q, ...] through the backbone in one pass -> [T, S, D], [T, Q, D]
    (one pass, so batch-norm sees the whole episode, as the papers' implementations do)."""
    t, s, q = support.shape[0], support.shape[1], query.shape[1]
    z = fp32(backbone(torch.cat([support.flatten(0, 1), query.flatten(0, 1)])))
    return z[: t * s].reshape(t, s, *z.shape[1:]), z[t * s:].reshape(t, q, *z.shape[1:])


class Method(nn.Module):
    name = "method"
    adapts_at_test = False  # True: predict() takes gradient steps, so evaluation runs with autograd on
    train_data = "episodes"  # what train_step takes: episodes | pairs | labelled (see metalearn.tasks.sources)
    steps_optimizer = True  # False: its steps measure without an optimiser step (SimpleShot), so no schedule advances

    def check_task(self, spec: TaskSpec) -> None:
        """Raise a MetalearnError when this method cannot be evaluated on `spec` (checked before training)."""

    def check_variable(self, max_ways: int) -> None:
        """Raise a MetalearnError, with the reason, when this method cannot score variable episodes (Meta-Dataset's:
        5 to `max_ways` ways, a different number of shots for each class). A method whose head fixes its class
        count (the MAML family's, MANN's label slots) refuses through check_task."""
        try:
            self.check_task(TaskSpec(max_ways, 1, 1))
        except MetalearnError as e:
            reason = str(e).split(";")[0]
            raise MetalearnError(f"variable episodes have 5 to {max_ways} ways, and {reason}") from None

    def training_source(self, ctx: TrainingContext) -> TrainingSource:
        """What train_step takes, step by step: meta-batches of the training episodes (the Siamese network's pairs
        and the transfer baselines' labelled minibatches override this)."""
        if ctx.variable:
            return VariableEpisodeSource(ctx.store, ctx.seed)
        return EpisodeSource(ctx.store, ctx.spec, ctx.seed, ctx.meta_batch)

    variable_training: str | None = None  # why train_step cannot take variable episodes (None: it can)

    def prepare(self, ctx: TrainingContext) -> None:
        """Set up what meta-training needs beyond the weights (a distillation teacher); not called for evaluation."""

    transductive = False  # True: a query's prediction uses the task's other queries (TIM)
    # True: a class's logit depends on its own support codes alone (a nearest-centroid head), so a support index
    # of many classes may be scored a chunk of classes at a time (metalearn.support_index)
    class_logits_independent = False

    def is_transductive(self) -> bool:
        """Whether, as set up now, a query's prediction depends on the task's other queries: by the method
        (TIM) or by batch-norm layers normalising with the queries' statistics (the MAML family's reference
        setting, an embedding method's test_batch_norm=transductive). Results say so wherever they appear."""
        from metalearn.backbones import BatchStatNorm2d

        if self.transductive or any(isinstance(m, BatchStatNorm2d) for m in self.modules()):
            return True
        return getattr(self, "batch_norm", None) == "transductive" and bool(batch_norm_layers(self))

    def parameter_groups(self, lr: float) -> list[dict]:
        """The optimiser's parameter groups at outer learning rate `lr` (FEAT: its Transformer faster)."""
        return [{"params": list(self.parameters())}]

    def learns(self) -> bool:
        """Whether training steps change anything (pixel NN: no; the trainer then goes straight to the test)."""
        return any(p.requires_grad for p in self.parameters())

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean training loss over the batch's tasks, and query logits [T, Q, ways]."""
        logits = self.predict(batch.support, batch.support_labels, batch.query, batch.ways)
        loss = nn.functional.cross_entropy(fp32(logits.reshape(-1, batch.ways)), batch.query_labels.reshape(-1))
        return loss, logits

    # ------------------------------------------------------------ CUDA-graph capture (metalearn.engine.cuda_graph)
    graph_capturable = False  # True: graph_loss runs with no host sync, so a CUDA graph can capture the step

    def graph_supported(self, batch: EpisodeBatch) -> bool:
        """Whether this step, on batches like `batch`, is ``graph_loss`` then backward then the optimiser step."""
        return self.graph_capturable

    def graph_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss and the query accuracy as tensors, computed without a host sync."""
        loss, logits = self.loss(batch)
        return loss, accuracy(logits, batch.query_labels)

    def after_step(self) -> None:
        """Bookkeeping after each training step's optimiser step (MAML's meta-step counter)."""

    def train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        loss, logits = self.loss(batch)
        if torch.isfinite(loss):
            loss.backward()
            optimizer.step()
        acc = accuracy(logits, batch.query_labels)
        return {"loss": float(loss.detach()), "accuracy": float(acc)}

    def predict(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                ways: int) -> torch.Tensor:
        """support [T, S, C, H, W] (or [S, C, H, W] for one task) -> query logits [T, Q, ways] (or [Q, ways])."""
        raise NotImplementedError


class AdaptingMethod(Method):
    """Methods that adapt a copy of their weights to each test task's support set: the MAML family, Reptile
    and the Meta-Learner LSTM. Their head has `ways` outputs, fixed in meta-training, and a test task is
    classified by `predict_task` after `inner_steps_eval` adaptation steps (metalearn-eval inner_steps=
    changes those), with autograd on."""

    adapts_at_test = True
    ways: int
    inner_steps_eval: int

    def check_task(self, spec: TaskSpec) -> None:
        if spec.ways != self.ways:
            raise MetalearnError(f"{self.name}'s classifier head has {self.ways} outputs (sampler.train_ways), so it "
                                 f"can only be evaluated {self.ways}-way, not {spec.ways}-way; train with "
                                 f"sampler.train_ways={spec.ways} for that.")

    def eval_steps_limit(self) -> int | None:
        """The most inner steps a test task may take (None: any number)."""
        return None

    def predict_task(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Query logits [Q, ways] of one task, after adapting to its support set."""
        raise NotImplementedError

    @one_or_many_tasks
    def predict(self, support, support_labels, query, ways):
        return torch.stack([self.predict_task(support[t], support_labels[t], query[t]) for t in range(support.shape[0])])


class EmbeddingMethod(Method):
    """A method whose prediction is ``head(encode(support), encode(query))``, the encoder seeing
    each image on its own (ProtoNet, Matching, Relation, Siamese, the baselines, MANN, pixel NN).

    Why a class of its own: evaluation can then encode each distinct image of its fixed episodes
    once instead of once per episode (600 5-way episodes with 15 queries touch 48,000 images but
    only the few thousand a test split holds); see ``metalearn.engine.evaluate``.
    """

    batch_norm = "running"  # the test-time batch-norm statistics: see metalearn.methods.task_norm
    encodes_with_backbone = True  # encode(x) reads self.backbone alone (MANN's also learns an input map: False)
    # store indices -> codes of a frozen encoder, read from a feature cache (set by the trainer for feature_cache=true)
    codes_of: Callable[[Any], torch.Tensor] | None = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> codes [B, ...]."""
        return self.backbone(x)

    def frozen_codes_reason(self) -> str | None:
        """None when training can never change an image's code, so a feature cache may serve the training steps
        (a frozen timm encoder, method.backbone.freeze=all, under a Meta-Baseline or ProtoNet head); else why not.
        Called in training mode: every part of the encoder must then compute as in eval mode."""
        if not self.encodes_with_backbone or not isinstance(getattr(self, "backbone", None), nn.Module):
            return f"{self.name}'s codes are not its backbone's alone"
        if any(p.requires_grad for p in self.backbone.parameters()):
            return "its encoder learns (method.backbone.freeze=all freezes a timm encoder)"
        if any(m.training for m in self.backbone.modules() if m is not self.backbone):
            return "its encoder's layers run in training mode (batch statistics or dropout)"
        return None

    def episode_codes(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The support [T, S, ...] and query [T, Q, ...] codes of a training batch: read from the feature cache when
        the trainer set one up and the batch holds stored images (not augmented copies), else encoded."""
        if self.codes_of is not None and batch.index is not None:
            s = batch.support_labels.shape[1]
            z = self.codes_of(batch.index).to(batch.support.device)
            return z[:, :s], z[:, s:]
        return embed(self.encode, batch.support, batch.query)

    def stored_codes(self, images: torch.Tensor, index: Any) -> torch.Tensor:
        """The backbone's codes of a labelled batch (the transfer baselines' steps): read from the feature cache by
        the images' store indices when the trainer set one up and the images are the stored ones, else encoded."""
        if self.codes_of is not None and index is not None:
            return self.codes_of(index).to(images.device)
        return fp32(self.backbone(images))

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """As Method.loss: predict() in training mode is the head on the batch's codes (from the cache when set)."""
        zs, zq = self.episode_codes(batch)
        logits = self.head(zs, batch.support_labels, zq, batch.ways)
        loss = nn.functional.cross_entropy(fp32(logits.reshape(-1, batch.ways)), batch.query_labels.reshape(-1))
        return loss, logits

    def cosine_temperature(self) -> float | None:
        """The factor a cosine head multiplies its similarities by (readout=chamfer takes it), or None when the
        head does not compare codes by cosine."""
        return None

    def head(self, zs: torch.Tensor, support_labels: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        """Support codes [T, S, ...], labels [T, S], query codes [T, Q, ...] -> query logits [T, Q, ways]."""
        raise NotImplementedError

    @one_or_many_tasks
    def predict(self, support, support_labels, query, ways):
        if self.training or self.batch_norm == "running" or not batch_norm_layers(self):
            zs, zq = embed(self.encode, support, query)
        else:
            zs, zq = embed_with_task_statistics(lambda x: fp32(self.encode(x)), self, self.batch_norm, support, query)
        return self.head(zs, support_labels, zq, ways)

    def encodes_each_image_alone(self) -> bool:
        """True when, in the current train/eval mode, an image's code does not depend on the other
        images of its batch: no batch-norm layer normalises by batch statistics."""
        if self.batch_norm != "running" and batch_norm_layers(self):
            return False
        return not any(m.training or not m.track_running_stats or m.running_mean is None  # incl. BatchStatNorm2d
                       for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
