"""TIM (Boudiaf et al. 2020, "Information Maximization for Few-Shot Learning"), the gradient-descent version.

Transductive: a test task's queries are classified together. The feature extractor is an ordinary
classifier over the training classes (trained here exactly as the `baseline` method is); at test, on
L2-normalised features, class weights W start at the support centroids and take `method.iterations`
Adam steps on

    lambda_ce * CE(support)  -  ( lambda_marg * H(Y_Q)  -  lambda_cond * H(Y_Q | X_Q) )

where p(k | x) = softmax_k(-temperature / 2 * ||x - w_k||^2), H(Y_Q) is the entropy of the queries'
mean prediction (keeps the predicted classes balanced) and H(Y_Q | X_Q) the queries' mean prediction
entropy (makes each prediction confident). Defaults are the paper's TIM-GD: weights (0.1, 1, 0.1),
temperature 15, 1,000 steps at lr 1e-4.

Because the queries inform each other, TIM's results are marked transductive wherever they appear
(summary.json, metalearn-report), and never compared unmarked with inductive methods.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn import optimizers
from metalearn.methods.base import BuildContext, class_centroids
from metalearn.methods.baseline import Baseline
from metalearn.registry import METHODS


def distance_logits(z: torch.Tensor, w: torch.Tensor, temperature: float) -> torch.Tensor:
    """-temperature/2 * ||z - w_k||^2: z [T, N, D], w [T, K, D] -> [T, N, K], expanded as
    ||z||^2 - 2 z.w + ||w||^2 so that no [T, N, K, D] tensor is made: a 20-way test batch's 1,000 steps
    are matrix products (measured: the broadcast form took 15 min for 600 20-way episodes on 1 thread)."""
    squared = z.pow(2).sum(-1, keepdim=True) - 2 * z @ w.transpose(1, 2) + w.pow(2).sum(-1)[:, None]
    return -0.5 * temperature * squared


def tim_loss(zs: torch.Tensor, onehot: torch.Tensor, zq: torch.Tensor, w: torch.Tensor, temperature: float,
             weights: tuple[float, float, float]) -> torch.Tensor:
    """The TIM objective of each task [T] (to minimise)."""
    ce = -(onehot * distance_logits(zs, w, temperature).log_softmax(-1)).sum(-1).mean(-1)
    log_p = distance_logits(zq, w, temperature).log_softmax(-1)
    p = log_p.exp()
    conditional = -(p * log_p).sum(-1).mean(-1)
    marginal_p = p.mean(1)
    marginal = -(marginal_p * torch.log(marginal_p + 1e-12)).sum(-1)
    w_ce, w_marginal, w_conditional = weights
    return w_ce * ce - (w_marginal * marginal - w_conditional * conditional)


def tim_head(zs: torch.Tensor, support_labels: torch.Tensor, zq: torch.Tensor, ways: int, iterations: int = 1000,
             lr: float = 1e-4, temperature: float = 15.0,
             weights: tuple[float, float, float] = (0.1, 1.0, 0.1)) -> torch.Tensor:
    """TIM-GD's inference on any encoder's codes of a batch of tasks (zs [T, S, D], zq [T, Q, D]): the query
    logits [T, Q, ways]. A function of codes alone, so that it can also be measured on encoders trained
    otherwise (metalearn-eval readout=tim, metalearn/readouts/tim.py); the result is transductive whatever the encoder."""
    zs, zq = nn.functional.normalize(zs.detach(), dim=-1), nn.functional.normalize(zq.detach(), dim=-1)
    onehot = nn.functional.one_hot(support_labels, ways).to(zs.dtype)
    w = class_centroids(zs, support_labels, ways).clone().requires_grad_(True)
    optimizer = optimizers.Adam([w], lr=lr)
    with torch.enable_grad():
        for _ in range(iterations):
            # summed over tasks: each task's weights follow its own objective (Adam is elementwise)
            loss = tim_loss(zs, onehot, zq, w, temperature, weights).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return distance_logits(zq, w.detach(), temperature)


class TIM(Baseline):
    transductive = True

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, iterations: int = 1000,
                 lr: float = 1e-4, temperature: float = 15.0, weights: tuple[float, float, float] = (0.1, 1.0, 0.1)):
        super().__init__(backbone, feature_dim, num_classes, cosine=False)
        self.name = "tim"
        self.iterations, self.lr, self.temperature, self.weights = iterations, lr, temperature, tuple(weights)

    def head(self, zs, support_labels, zq, ways):
        return tim_head(zs, support_labels, zq, ways, self.iterations, self.lr, self.temperature, self.weights)


@METHODS.register("tim")
def build(cfg, ctx: BuildContext) -> TIM:
    from metalearn.errors import MetalearnError

    if ctx.train_classes is None:
        raise MetalearnError("tim needs the number of training classes to size its pre-training classifier")
    backbone = ctx.backbone(cfg)
    method = TIM(backbone, ctx.feature_dim(backbone), ctx.train_classes, cfg.iterations, cfg.tim_lr, cfg.temperature,
                 tuple(cfg.loss_weights))
    method.batch_size = cfg.batch_size
    return method
