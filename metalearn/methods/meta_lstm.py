"""Meta-Learner LSTM (Ravi & Larochelle 2017): a learned optimiser.

The learner (Conv-4 + linear head) has its parameters flattened into one vector theta, which is
the cell state of an LSTM applied to every coordinate with shared weights:

    f_t = sigmoid(W_F [h_t, theta_{t-1}, f_{t-1}] + b_F)      forget gate
    i_t = sigmoid(W_I [h_t, theta_{t-1}, i_{t-1}] + b_I)      input gate (a learning rate)
    theta_t = f_t * theta_{t-1} - i_t * grad_t

h_t comes from an ordinary LSTM (shared across coordinates) that reads the preprocessed gradient
and loss (Andrychowicz et al.'s log-magnitude and sign). With f = 1 and i = lr this is gradient
descent. theta_0 is meta-learned too. As in the paper, the gradient and loss inputs are treated
as constants (no second derivatives); the meta-gradient flows through the gates and the cell
state. Batch-norm uses the batch's own statistics at training and test time (the paper's
learner collects none of its own across tasks).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metalearn.methods.base import AdaptingMethod, BuildContext, accuracy, fp32
from metalearn.methods.inner_loop import call
from metalearn.registry import METHODS
from metalearn.tasks.episodes import EpisodeBatch


def preprocess(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """x [...] -> [..., 2]: (log|x| / p, sign x) where |x| >= e^-p, else (-1, e^p x)."""
    big = x.abs() >= math.exp(-p)
    magnitude = torch.where(big, x.abs().clamp_min(1e-30).log() / p, torch.full_like(x, -1.0))
    direction = torch.where(big, x.sign(), x * math.exp(p))
    return torch.stack([magnitude, direction], -1)


class MetaLSTMCell(nn.Module):
    """The gate layer whose cell state is the learner's parameter vector."""

    def __init__(self, hidden: int):
        super().__init__()
        self.w_forget = nn.Parameter(torch.empty(hidden + 2).uniform_(-0.01, 0.01))
        self.w_input = nn.Parameter(torch.empty(hidden + 2).uniform_(-0.01, 0.01))
        self.b_forget = nn.Parameter(torch.empty(1).uniform_(4.0, 6.0))  # start near f = 1: keep the weights
        self.b_input = nn.Parameter(torch.empty(1).uniform_(-5.0, -4.0))  # start with small steps

    def forward(self, h: torch.Tensor, theta: torch.Tensor, grad: torch.Tensor, f_prev: torch.Tensor,
                i_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [P, H], theta/grad/f_prev/i_prev [P] -> new theta, f, i."""
        f = torch.sigmoid(torch.cat([h, theta[:, None], f_prev[:, None]], 1) @ self.w_forget + self.b_forget)
        i = torch.sigmoid(torch.cat([h, theta[:, None], i_prev[:, None]], 1) @ self.w_input + self.b_input)
        return f * theta - i * grad, f, i


class MetaLSTM(AdaptingMethod):
    name = "meta_lstm"

    def __init__(self, backbone: nn.Module, feature_dim: int, ways: int, inner_steps: int = 5,
                 inner_steps_eval: int = 10, hidden: int = 20):
        super().__init__()
        self.learner = nn.Sequential(backbone, nn.Linear(feature_dim, ways))
        self.ways, self.inner_steps, self.inner_steps_eval = ways, inner_steps, inner_steps_eval
        self.names = [n for n, _ in self.learner.named_parameters()]
        self.shapes = [p.shape for _, p in self.learner.named_parameters()]
        # theta_0, meta-learned; the learner module only supplies structure (and its initialisation)
        self.theta0 = nn.Parameter(torch.cat([p.detach().flatten() for p in self.learner.parameters()]))
        for p in self.learner.parameters():
            p.requires_grad_(False)
        self.input_lstm = nn.LSTMCell(4, hidden)
        self.cell = MetaLSTMCell(hidden)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for n, shape in zip(self.names, self.shapes, strict=True):
            size = math.prod(shape)
            out[n] = theta[start: start + size].view(shape)
            start += size
        return out

    def learner_logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return call(self.learner, self.unflatten(theta), x)

    def adapt(self, support: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.Tensor:
        """theta after `steps` meta-learner updates on the support set (differentiable in the meta-parameters)."""
        theta = self.theta0
        p = theta.shape[0]
        state = None
        f = torch.zeros(p, dtype=theta.dtype, device=theta.device)
        i = torch.zeros_like(f)
        for _ in range(steps):
            with torch.enable_grad():  # the gradient is an input, not a path for the meta-gradient
                current = theta.detach().requires_grad_()
                loss = nn.functional.cross_entropy(fp32(self.learner_logits(current, support)), labels)
                (grad,) = torch.autograd.grad(loss, current)
            x = torch.cat([preprocess(grad), preprocess(loss.detach()).expand(p, 2)], 1)
            state = self.input_lstm(x, state)
            theta, f, i = self.cell(state[0], theta, grad, f, i)
        return theta

    def train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        losses, accs = [], []
        for t in range(batch.tasks):
            theta = self.adapt(batch.support[t], batch.support_labels[t], self.inner_steps)
            logits = self.learner_logits(theta, batch.query[t])
            loss = nn.functional.cross_entropy(fp32(logits), batch.query_labels[t])
            if torch.isfinite(loss):
                (loss / batch.tasks).backward()
            losses.append(loss.detach())
            accs.append(accuracy(logits, batch.query_labels[t]))
        loss = torch.stack(losses).mean()
        if torch.isfinite(loss):
            nn.utils.clip_grad_norm_(self.parameters(), 0.25)  # the paper clips the meta-gradient
            optimizer.step()
        return {"loss": float(loss), "accuracy": float(torch.stack(accs).mean())}

    def predict_task(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            theta = self.adapt(support, labels, self.inner_steps_eval)
            return self.learner_logits(theta, query)


@METHODS.register("meta_lstm")
def build(cfg, ctx: BuildContext) -> MetaLSTM:
    backbone = ctx.backbone(cfg, bn_running_stats=False)
    return MetaLSTM(backbone, ctx.feature_dim(backbone), ctx.ways, cfg.inner_steps, cfg.inner_steps_eval, cfg.hidden)
