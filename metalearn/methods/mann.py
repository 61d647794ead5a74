"""Memory-Augmented Neural Network (Santoro et al. 2016).

An episode is a sequence. At step t the controller (an LSTM) sees example t together with the
label of example t-1 (the label arrives one step late), so it must bind an example to its label
in an external memory and retrieve it when the class reappears. Memory access is
least-recently-used (LRU): each read head reads by cosine similarity to a key; its write weights
interpolate between the previous step's read weights and the least-used slot,

    w^w_t = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1},
    w^u_t = gamma w^u_{t-1} + sum_heads (w^r_t + w^w_t),

and the least-used slot is erased before writing.

Two departures from the paper's equations, each a switch (``write: key``, ``key_strength: false``
restore it): a separate add vector a_t is written instead of the read key k_t, and each read is
sharpened by a learned key strength beta >= 1 (the NTM's). Why, measured on a toy (5 classes x 6
instances, random class vectors plus noise, meta-batch 16, Adam 1e-3): with a_t the 2nd-instance
accuracy reaches 95% after 3,000 steps; writing k_t, the read that follows the write keeps
finding the slot just written (its own key), and the model stays on label counts.

Meta-training (``loss_on: sequence``, the paper's): all of an episode's examples, support and
query, form one sequence in a random order per task, labels one step late, and the loss is the
cross-entropy at every step. Classes recur in that sequence, so from the first step there is a
signal for binding an example to its label and retrieving it (the query-only loss of a 1-shot
episode gives none, measured: a run stuck at chance, loss ln 5, for 875 steps).
``loss_on: queries`` trains on the test-time protocol instead. Prediction, in both cases: the
support examples are fed in a fixed order, labels one step late; then every query is classified
from the state after the support sequence, in parallel, with the last support label as its label
input, so queries never see each other. Inputs are flattened pixels (the paper) or, with
``encoder: conv``, Conv-4 embeddings.

``aux_weight > 0`` adds a prototypical loss on the encoder's codes of each training episode (a
jointly trained encoder). Why: on Omniglot the sequence loss alone never left the label-count
plateau (the encoder's codes did not separate classes, and with random codes the memory has
nothing to bind); on the toy, whose inputs separate classes from the start, it learns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metalearn.errors import MetalearnError
from metalearn.methods.base import BuildContext, EmbeddingMethod, embed, fp32
from metalearn.methods.protonet import prototype_logits
from metalearn.registry import METHODS
from metalearn.tasks.episodes import EpisodeBatch, TaskSpec


@dataclass
class MemoryState:
    memory: torch.Tensor  # [B, slots, width]
    usage: torch.Tensor  # [B, slots]
    read_weights: torch.Tensor  # [B, heads, slots]
    reads: torch.Tensor  # [B, heads, width]
    h: torch.Tensor  # controller state [B, hidden]
    c: torch.Tensor

    def expand(self, repeats: int) -> MemoryState:
        """Each batch entry repeated `repeats` times (entry b -> rows b*repeats .. b*repeats+repeats-1)."""
        return MemoryState(*(x.repeat_interleave(repeats, 0) for x in
                             (self.memory, self.usage, self.read_weights, self.reads, self.h, self.c)))


def least_used(usage: torch.Tensor, heads: int) -> torch.Tensor:
    """usage [B, slots] -> w^lu [B, heads, slots]: head k's one-hot at the k-th least used slot."""
    idx = usage.topk(heads, dim=-1, largest=False).indices  # [B, heads]
    return nn.functional.one_hot(idx, usage.shape[-1]).to(usage.dtype)


class LRUMemory(nn.Module):
    def __init__(self, hidden: int, slots: int = 128, width: int = 40, heads: int = 4, gamma: float = 0.95,
                 key_strength: bool = True, write: str = "add"):
        super().__init__()
        self.slots, self.width, self.heads, self.gamma = slots, width, heads, gamma
        self.key = nn.Linear(hidden, heads * width)
        # what is written: "key", the paper's read key k_t (then the read that follows the write finds
        # the slot just written, itself), or "add", a separate add vector a_t as in the NTM
        self.add = nn.Linear(hidden, heads * width) if write == "add" else None
        self.alpha = nn.Linear(hidden, heads)  # sigmoid(alpha): write to the last-read slot vs the least used
        # the NTM's key strength beta >= 1 sharpening each read (the paper's softmax over raw cosines has none)
        self.strength = nn.Linear(hidden, heads) if key_strength else None

    def step(self, h: torch.Tensor, s: MemoryState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One write-then-read step from controller output h [B, hidden]: new memory, usage, read weights, reads."""
        b = h.shape[0]
        keys = torch.tanh(self.key(h)).view(b, self.heads, self.width)
        adds = keys if self.add is None else torch.tanh(self.add(h)).view(b, self.heads, self.width)
        gate = torch.sigmoid(self.alpha(h))[..., None]  # [B, heads, 1]
        lu = least_used(s.usage, self.heads)  # from the previous usage
        write = gate * s.read_weights + (1 - gate) * lu  # [B, heads, slots]
        erase = lu.amax(1)  # the least-used slots are zeroed before writing
        memory = s.memory * (1 - erase)[..., None] + write.transpose(1, 2) @ adds
        similarity = nn.functional.normalize(keys, dim=-1) @ nn.functional.normalize(memory, dim=-1).transpose(1, 2)
        if self.strength is not None:
            similarity = similarity * (1 + nn.functional.softplus(self.strength(h)))[..., None]
        read = torch.softmax(similarity, dim=-1)  # [B, heads, slots]
        usage = self.gamma * s.usage + read.sum(1) + write.sum(1)
        return memory, usage, read, read @ memory


class MANN(EmbeddingMethod):
    name = "mann"
    encodes_with_backbone = False  # its codes pass through the input map it learns

    def __init__(self, encoder: nn.Module, input_dim: int, ways: int, hidden: int = 200, slots: int = 128,
                 width: int = 40, heads: int = 4, gamma: float = 0.95, loss_on: str = "sequence",
                 key_strength: bool = True, normalize_input: bool = False, write: str = "add",
                 aux_weight: float = 0.0, project: int = 0, input_noise: float = 0.0):
        super().__init__()
        if input_noise < 0:
            raise MetalearnError(f"method.input_noise is a standard deviation, >= 0; got {input_noise}")
        self.encoder, self.ways, self.loss_on, self.aux_weight = encoder, ways, loss_on, aux_weight
        self.input_noise = input_noise
        # a parameter-free LayerNorm on the encoder output: a conv encoder cannot collapse to zero
        # output (measured without it: all-zero embeddings, the controller on label counts alone)
        norm = nn.LayerNorm(input_dim, elementwise_affine=False) if normalize_input else nn.Identity()
        # optionally a learned linear map to `project` features: the controller's input is the example
        # and its 5-wide label side by side, and 1,600 unit-variance features drown the label
        self.input_map = nn.Sequential(norm, nn.Linear(input_dim, project)) if project > 0 else norm
        input_dim = project if project > 0 else input_dim
        self.controller = nn.LSTMCell(input_dim + ways + heads * width, hidden)
        self.memory = LRUMemory(hidden, slots, width, heads, gamma, key_strength, write)
        self.out = nn.Linear(hidden + heads * width, ways)
        self.hidden = hidden

    def initial_state(self, batch: int, like: torch.Tensor) -> MemoryState:
        m = self.memory
        z = lambda *shape: torch.zeros(*shape, dtype=like.dtype, device=like.device)  # noqa: E731
        read = torch.full((batch, m.heads, m.slots), 1.0 / m.slots, dtype=like.dtype, device=like.device)
        return MemoryState(z(batch, m.slots, m.width) + 1e-6, z(batch, m.slots), read, z(batch, m.heads, m.width),
                           z(batch, self.hidden), z(batch, self.hidden))

    def step(self, x: torch.Tensor, label_in: torch.Tensor, s: MemoryState) -> tuple[torch.Tensor, MemoryState]:
        """x [B, D] and the previous example's one-hot label [B, ways] -> logits [B, ways], next state."""
        h, c = self.controller(torch.cat([x, label_in, s.reads.flatten(1)], 1), (s.h, s.c))
        memory, usage, read, reads = self.memory.step(h, s)
        logits = self.out(torch.cat([h, reads.flatten(1)], 1))
        return logits, MemoryState(memory, usage, read, reads, h, c)

    def sequence_order(self, s: int, device: torch.device) -> torch.Tensor:
        """The order support examples are presented in: random in training, fixed at test."""
        if self.training:
            return torch.randperm(s, device="cpu").to(device)
        return torch.randperm(s, generator=torch.Generator().manual_seed(0)).to(device)

    def check_task(self, spec: TaskSpec) -> None:
        if spec.ways > self.ways:
            raise MetalearnError(f"mann's label input and output have {self.ways} classes (sampler.train_ways or "
                                 f"method.label_slots), so it can be evaluated up to {self.ways}-way, not "
                                 f"{spec.ways}-way; train with sampler.train_ways={spec.ways} or "
                                 f"method.label_slots={spec.ways} for that.")

    def run_sequence(self, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, MemoryState]:
        """Examples xs [B, S, D] with one-hot labels ys [B, S, ways], each label given one step late ->
        the prediction at every step [B, S, ways] and the state after the last step."""
        b, s = xs.shape[:2]
        state = self.initial_state(b, xs)
        label_in = torch.zeros(b, self.ways, dtype=xs.dtype, device=xs.device)
        outputs = []
        for k in range(s):  # example k with the label of example k-1
            logits, state = self.step(xs[:, k], label_in, state)
            outputs.append(logits)
            label_in = ys[:, k]
        return torch.stack(outputs, 1), state

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's sequence loss (see the module docstring); returns the query positions' logits."""
        codes_s, codes_q = embed(self.encoder, batch.support, batch.query)
        zs, zq = self.noisy(self.input_map(codes_s)), self.noisy(self.input_map(codes_q))
        if self.loss_on == "queries":
            logits = self.head(zs, batch.support_labels, zq, batch.ways)
            loss = nn.functional.cross_entropy(fp32(logits.flatten(0, 1)), batch.query_labels.flatten())
            return loss + self.aux_loss(codes_s, codes_q, batch), logits
        z = torch.cat([zs, zq], 1)
        y = torch.cat([batch.support_labels, batch.query_labels], 1)
        order = torch.rand(y.shape, device="cpu").argsort(1).to(y.device)  # a random order per task
        slots = self.label_slots_for(y.shape[0], batch.ways, y.device)  # class k of task t is label slots[t, k]
        z = z.gather(1, order.view(*order.shape, *[1] * (z.dim() - 2)).expand_as(z))
        y = slots.gather(1, y.gather(1, order))
        logits, _ = self.run_sequence(z, nn.functional.one_hot(y, self.ways).to(z.dtype))
        loss = nn.functional.cross_entropy(fp32(logits.flatten(0, 1)), y.flatten()) + self.aux_loss(codes_s, codes_q, batch)
        at = order.argsort(1)[:, zs.shape[1]:]  # where each query sits in its sequence
        q_logits = logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1]))
        return loss, q_logits.gather(2, slots[:, None].expand(-1, at.shape[1], -1))  # columns back in class order

    def noisy(self, z: torch.Tensor) -> torch.Tensor:
        """z plus N(0, input_noise^2) in training. Why: the codes of the training classes form tight clusters
        (prototype accuracy 99.3% on them vs 95.3% on the test classes, measured), so the controller's reads
        fit them: 90.5% under the test protocol on training classes, 73% on test classes."""
        if not self.training or self.input_noise == 0:
            return z
        return z + self.input_noise * torch.randn_like(z)

    def label_slots_for(self, tasks: int, ways: int, device: torch.device) -> torch.Tensor:
        """[tasks, ways]: the label each task's class k is given. Classes 0..ways-1 keep their labels when the
        label width equals the task's ways; a wider label layer (``label_slots``) gets `ways` random distinct
        labels per task, so every label is trained while the episodes stay small (why: at 20 ways the sequence
        loss never left chance; 5-way episodes learn to bind)."""
        if ways == self.ways:
            return torch.arange(ways, device=device).expand(tasks, -1)
        return torch.rand(tasks, self.ways, device="cpu").argsort(1)[:, :ways].to(device)

    def aux_loss(self, codes_s: torch.Tensor, codes_q: torch.Tensor, batch: EpisodeBatch) -> torch.Tensor:
        """`aux_weight` times the prototypical loss of the episode's queries on the encoder's raw codes."""
        if self.aux_weight == 0:
            return codes_s.new_zeros(())
        logits = prototype_logits(codes_s.flatten(2), batch.support_labels, codes_q.flatten(2), batch.ways)
        return self.aux_weight * nn.functional.cross_entropy(fp32(logits.flatten(0, 1)), batch.query_labels.flatten())

    def encode(self, x):
        return self.input_map(self.encoder(x))

    def head(self, zs, support_labels, zq, ways):
        t, s, q = zs.shape[0], zs.shape[1], zq.shape[1]
        order = self.sequence_order(s, zs.device)
        zs, ys = zs[:, order], nn.functional.one_hot(support_labels[:, order], self.ways).to(zs.dtype)
        _, state = self.run_sequence(zs, ys)
        logits, _ = self.step(zq.reshape(t * q, -1), ys[:, -1].repeat_interleave(q, 0), state.expand(q))
        return logits.reshape(t, q, self.ways)[..., :ways]


@METHODS.register("mann")
def build(cfg, ctx: BuildContext) -> MANN:
    ways = ctx.ways
    if cfg.aux_weight > 0 and cfg.encoder == "pixels":
        raise MetalearnError("method.aux_weight trains the encoder, and method.encoder=pixels has none; "
                             "use method.encoder=conv or method.aux_weight=0")
    if cfg.label_slots and cfg.label_slots < ways:
        raise MetalearnError(f"method.label_slots={cfg.label_slots} is narrower than the {ways}-way training tasks "
                             f"(sampler.train_ways); use 0 (as wide as the tasks) or >= {ways}")
    if cfg.label_slots > ways and cfg.loss_on == "queries":
        raise MetalearnError("method.label_slots wider than sampler.train_ways needs method.loss_on=sequence")
    encoder = nn.Flatten() if cfg.encoder == "pixels" else ctx.backbone(cfg)
    c, h, w = ctx.image_shape
    dim = c * h * w if cfg.encoder == "pixels" else ctx.feature_dim(encoder)
    return MANN(encoder, dim, cfg.label_slots or ways, cfg.hidden, cfg.slots, cfg.width, cfg.heads, cfg.gamma,
                cfg.loss_on, cfg.key_strength, cfg.normalize_input, cfg.write, cfg.aux_weight, cfg.project,
                cfg.input_noise)
