"""MetaOptNet (Lee et al. 2019, "Meta-Learning with Differentiable Convex Optimization").

Each task's classifier is the solution of a convex problem on the support embeddings, and the encoder
is meta-trained through that solution. Two heads (`method.head`):

- ``ridge`` (R2-D2, Bertinetto et al. 2019): multi-output ridge regression onto one-hot labels, in its
  dual (Woodbury) form because a task has far fewer support examples N than feature dimensions D:
  W = X^T (X X^T + lambda I)^-1 Y, one N x N solve per task.
- ``svm``: the Crammer-Singer multi-class SVM in MetaOptNet's dual form,

      max_A  -1/2 tr(A^T K A) + sum_n A[n, y_n]   s.t.  A[n] <= C e_{y_n},  sum_k A[n, k] = 0,

  with K = X X^T and class weights W = X^T A. Substituting B[n] = C e_{y_n} - A[n] turns each row's
  constraints into the simplex {B[n] >= 0, sum B[n] = C}. Solved exactly, as the authors' qpth does:
  primal-dual active-set rounds guess which entries of B are zero, each round one linear solve of the
  KKT conditions on that guess, until the guess repeats (4 to 20 rounds measured, from 20-way 1-shot to
  20-way 5-shot); the last solve is differentiated by autograd, which is the implicit derivative of the
  optimum (OptNet's), with no unrolled iterations. Where the rounds do not settle (seen only with
  several times more support images than code dimensions), those tasks take `method.svm_iterations`
  (100; `svm_iterations_eval`, 300, at test) steps of projected gradient ascent (FISTA with restarts),
  unrolled, and a warning says how many.
  Why not unrolled FISTA alone (this head's first version): its step is 1/||K||, and Conv-4's Omniglot codes
  share a large common direction (||K|| ~ 3e4), so it needs ~200 steps to converge; trained through 100
  it scored 86.0% at 5-way. Why not qpth itself: its release pins numpy<2 and cvxpy, which this project's
  environment cannot take. Tests: the optimum against scipy's SLSQP and 20,000 FISTA steps, and the
  gradient against finite differences (gradcheck) and against many unrolled FISTA steps.

Logits are the head's scores times a learned scale (`method.scale`, 1 as in the authors' code), learned as
log(scale) in a parameter group of its own at `method.scale_lr_multiplier` times the encoder's learning
rate (methods/log_scale.py says why). Start it where the logits are sharp enough for the codes at hand: on
Conv-4's 64-d Omniglot codes a raw scale from 1 rose only to 1.6 in 2,000 Adam steps, and the encoder
inflated its codes instead (training accuracy 91% -> 72%); the Omniglot preset starts it at 10.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from metalearn.methods.base import BuildContext, EmbeddingMethod, on_load
from metalearn.methods.log_scale import groups_with_scale, log_parameter, raw_scale_loader
from metalearn.registry import METHODS


def ridge_weights(xs: torch.Tensor, ys: torch.Tensor, lam: float) -> torch.Tensor:
    """Support codes [T, N, D], one-hot labels [T, N, K] -> W [T, D, K] = X^T (X X^T + lam I)^-1 Y."""
    n = xs.shape[1]
    kernel = xs @ xs.transpose(1, 2) + lam * torch.eye(n, dtype=xs.dtype, device=xs.device)
    return xs.transpose(1, 2) @ torch.linalg.solve(kernel, ys)


def project_simplex(v: torch.Tensor, total: float) -> torch.Tensor:
    """Euclidean projection of each row of v [..., K] onto {b >= 0, sum b = total} (Duchi et al. 2008)."""
    k = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - total
    ind = torch.arange(1, k + 1, device=v.device, dtype=v.dtype)
    rho = ((u - css / ind) > 0).to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where it holds
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def dual_objective(kernel: torch.Tensor, a: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """-1/2 tr(A^T K A) + sum_n A[n, y_n] of each task [T]."""
    return -0.5 * (a * (kernel @ a)).sum((1, 2)) + (a * ys).sum((1, 2))


RIDGE = 1e-6  # of K's mean diagonal, added to K: see svm_dual
ACTIVE_SET_ROUNDS = 30

log = logging.getLogger("metalearn")
_fallbacks_said = False  # the fallback is logged once per process: at test it recurs every few batches


def fista(kernel: torch.Tensor, ys: torch.Tensor, c: float, iterations: int) -> torch.Tensor:
    """B = C Y - A [T, N, K] after `iterations` steps of accelerated projected gradient on the dual, its momentum
    restarted per task whenever it points against the projected gradient step (O'Donoghue & Candes 2015;
    plain FISTA is not monotone). Differentiable by unrolling; the fallback of `svm_dual`."""
    step = 1.0 / torch.linalg.matrix_norm(kernel, ord=2).clamp_min(1e-6)[:, None, None]
    b = project_simplex(torch.full_like(ys, c / ys.shape[-1]), c)
    z, t = b, torch.ones(ys.shape[0], 1, 1, dtype=ys.dtype, device=ys.device)
    for _ in range(iterations):
        a = c * ys - z
        gradient_b = kernel @ a - ys  # the ascent direction in A is -K A + Y, so in B = C Y - A it is K A - Y
        b_next = project_simplex(z + step * gradient_b, c)
        restart = ((b_next - z) * (b_next - b)).sum((1, 2), keepdim=True) < 0
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        momentum = torch.where(restart, torch.zeros_like(t), (t - 1) / t_next)
        z = b_next + momentum * (b_next - b)
        b, t = b_next, torch.where(restart, torch.ones_like(t), t_next)
    return b


def kkt_solve(kernel: torch.Tensor, ys: torch.Tensor, c: float, free: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The dual's optimum if `free` [T, N, K] (bool) is where B > 0, from its KKT conditions

        (K B)[n, k] + mu[n] = R[n, k] = (C K Y - Y)[n, k]  where free,   B[n, k] = 0  elsewhere,   sum_k B[n, k] = C.

    Column k alone gives B[F_k, k] = K_FkFk^-1 (R[F_k, k] - mu[F_k]) on its free rows F_k; the row sums then
    give an N x N system for mu (its Schur complement). So a task costs K solves of size N and one more,
    not one of size N K. Returns B and the bound's multipliers lam = K B - R + mu (zero where free; the set
    is the optimum's when B >= 0 and lam >= 0)."""
    n = ys.shape[1]
    f = free.transpose(1, 2)  # [T, K, N]: class k's free rows
    eye = torch.eye(n, dtype=kernel.dtype, device=kernel.device)
    pair = f[..., :, None] & f[..., None, :]
    blocks = torch.where(pair, kernel[:, None], torch.zeros_like(kernel[:, None])) + torch.diag_embed((~f).to(kernel.dtype))
    residual = c * kernel @ ys - ys  # R [T, N, K]
    rhs = torch.cat([(f * residual.transpose(1, 2))[..., None], eye * f[..., None, :]], dim=-1)
    solved = torch.linalg.solve(blocks, rhs)  # [T, K, N, 1 + N]: K_FF^-1 R_F, and K_FF^-1 on F's columns
    p, q = solved[..., 0], solved[..., 1:]
    mu = torch.linalg.solve(q.sum(1), p.sum(1) - c)  # sum_k B[n, k] = C for every n
    b = (p - (q @ mu[:, None, :, None]).squeeze(-1)).transpose(1, 2)
    lam = kernel @ b - residual + mu[:, :, None]
    return b, lam


def active_set(kernel: torch.Tensor, ys: torch.Tensor, c: float, rounds: int = ACTIVE_SET_ROUNDS
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Primal-dual active-set rounds (Hintermueller, Ito & Kunisch 2003): start with every entry free, solve
    the KKT system, then keep a free entry free where its B > 0 and free a bound one where its multiplier
    lam < 0, until the set repeats: then B >= 0 and lam >= 0, the optimum's. Returns the set [T, N, K] and
    which tasks settled [T]. Each row keeps its largest entry free, so that sum_k B = C can hold."""
    free = torch.ones_like(ys, dtype=torch.bool)
    settled = torch.zeros(ys.shape[0], dtype=torch.bool, device=ys.device)
    for _ in range(rounds):
        b, lam = kkt_solve(kernel, ys, c, free)
        nxt = torch.where(free, b > 0, lam < 0) | (b == b.amax(-1, keepdim=True))
        settled = (nxt == free).flatten(1).all(1)
        if settled.all():
            break
        free = torch.where(settled[:, None, None], free, nxt)
    return free, settled


def svm_dual(xs: torch.Tensor, ys: torch.Tensor, c: float, iterations: int) -> torch.Tensor:
    """The Crammer-Singer dual's A [T, N, K] (see the module docstring): the active set found without
    gradients, then one KKT solve on it, differentiated. Tasks whose set did not settle take `iterations`
    unrolled FISTA steps instead. In float64 (the systems are small; the sign tests need the precision),
    and with a ridge of 1e-6 of K's mean diagonal: with more support images than code dimensions (20-way
    5-shot on Conv-4's 64) K is singular, the optimum not unique and the KKT blocks not invertible."""
    work = torch.float64
    kernel = (xs @ xs.transpose(1, 2)).to(work)
    kernel = kernel + RIDGE * kernel.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(
        kernel.shape[1], dtype=work, device=kernel.device)
    ys = ys.to(work)
    try:
        with torch.no_grad():
            free, settled = active_set(kernel, ys, c, ACTIVE_SET_ROUNDS)
        # an unsettled task solves with every entry free (a well-posed system) and is then replaced, so that
        # its unused solve puts no inf or nan into the gradient
        b, _ = kkt_solve(kernel, ys, c, free | ~settled[:, None, None])
    except RuntimeError:  # a KKT block singular even with the ridge (all-zero or degenerate codes, e.g. an
        # untrained encoder's): every task of the batch takes the projected-gradient steps, which need no inverse
        settled = torch.zeros(ys.shape[0], dtype=torch.bool, device=ys.device)
        b = torch.zeros_like(ys)
    if not bool(settled.all()):
        global _fallbacks_said
        (log.debug if _fallbacks_said else log.warning)(
            "MetaOptNet's SVM: the active set did not settle in %d rounds for %d of %d tasks; they used %d "
            "projected-gradient steps instead%s", ACTIVE_SET_ROUNDS, int((~settled).sum()), len(settled), iterations,
            "" if _fallbacks_said else " (said once; later ones at debug level)")
        _fallbacks_said = True
        b = torch.where(settled[:, None, None], b, fista(kernel, ys, c, iterations))
    return (c * ys - b).to(xs.dtype)


class MetaOptNet(EmbeddingMethod):
    name = "metaoptnet"

    def __init__(self, backbone: nn.Module, head: str = "svm", ridge_lambda: float = 50.0, svm_c: float = 0.1,
                 svm_iterations: int = 100, svm_iterations_eval: int = 300, scale: float = 1.0,
                 scale_lr_multiplier: float = 100.0):
        super().__init__()
        self.backbone, self.head_kind = backbone, head
        self.ridge_lambda, self.svm_c = ridge_lambda, svm_c
        self.svm_iterations, self.svm_iterations_eval = svm_iterations, svm_iterations_eval
        self.log_scale = log_parameter(scale)
        self.scale_lr_multiplier = scale_lr_multiplier
        on_load(self, raw_scale_loader("scale", "log_scale"))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def parameter_groups(self, lr: float) -> list[dict]:
        return groups_with_scale(self.backbone.parameters(), self.log_scale, lr, self.scale_lr_multiplier)

    def head(self, zs, support_labels, zq, ways):
        xs, xq = zs.flatten(2), zq.flatten(2)
        ys = nn.functional.one_hot(support_labels, ways).to(xs.dtype)
        if self.head_kind == "ridge":
            scores = xq @ ridge_weights(xs, ys, self.ridge_lambda)
        else:
            iterations = self.svm_iterations if self.training else self.svm_iterations_eval
            scores = (xq @ xs.transpose(1, 2)) @ svm_dual(xs, ys, self.svm_c, iterations)
        return self.scale * scores


@METHODS.register("metaoptnet")
def build(cfg, ctx: BuildContext) -> MetaOptNet:
    return MetaOptNet(ctx.backbone(cfg), cfg.head, cfg.ridge_lambda, cfg.svm_c, cfg.svm_iterations,
                      cfg.svm_iterations_eval, cfg.scale, cfg.scale_lr_multiplier)
