"""The typed configs of the methods that adapt at test time (the MAML family, Reptile, the Meta-Learner LSTM)
and of MANN, whose memory adapts within each episode."""

from __future__ import annotations

from dataclasses import dataclass

from metalearn.config.methods import EmbeddingMethodConfig, MethodConfig
from metalearn.config.schema import option, schema

BATCH_NORM = ("transductive", "running")
BATCH_NORM_HELP = "transductive (batch statistics, as the reference code) | running"


@dataclass
class MAMLPlusPlusConfig:
    """MAML++ (Antoniou et al. 2019) switches; all off is plain MAML."""

    per_layer_per_step_lr: bool = option(False, "LSLR: a learned inner learning rate per layer and per step")
    multi_step_loss: bool = option(False, "MSL: query loss after every inner step, weights annealed to the last")
    msl_anneal_steps: int = option(1000, "MAML++ multi-step-loss annealing steps (then MSL stops)", low=1)
    per_step_bn: bool = option(False, "BNWB + BNRS: batch-norm weights, biases and statistics per inner step")
    first_order_until: int = option(0, "MAML++ first-order steps: derivative-order annealing", low=0)


@schema("method", "maml_schema", "maml", "fomaml", "anil", "metasgd", "mamlpp")
@dataclass
class MAMLConfig(MethodConfig):
    """maml, fomaml, anil and metasgd: one schema, the method is the name plus its switches."""

    name: str = "maml"
    inner_lr: float = option(0.4, "the inner-loop learning rate", low=0)
    inner_steps: int = option(1, "inner steps in meta-training", low=1)
    inner_steps_eval: int = option(3, "inner steps at validation and test", low=1)
    first_order: bool = option(False, "drop the second-order terms (FOMAML)")
    adapt: str = option("all", "all | head (ANIL)", choices=("all", "head"))
    learn_inner_lr: bool = option(False, "Meta-SGD: a learned learning rate per parameter entry")
    batch_norm: str = option("transductive", BATCH_NORM_HELP, choices=BATCH_NORM)
    plus: MAMLPlusPlusConfig = option(help="MAML++'s switches", factory=MAMLPlusPlusConfig)
    task_batching: str = option("auto", "loop (task by task) | vmap (torch.func.vmap over the meta-batch) | split | "
                                "auto (timed)", choices=("auto", "loop", "vmap", "split"))
    task_chunk: int | None = option(None, "tasks run at once by the vmap and split paths (null: the CPU's bound, all on "
                                    "a GPU)", low=1)


@schema("method", "reptile_schema", "reptile")
@dataclass
class ReptileConfig(MethodConfig):
    name: str = "reptile"
    inner_lr: float = option(0.001, "the inner-loop learning rate", low=0)
    inner_steps: int = option(5, "inner steps in meta-training", low=1)
    inner_steps_eval: int = option(50, "inner steps at validation and test", low=1)
    inner_batch: int = option(10, "Reptile's inner minibatch", low=1)
    inner_optimizer: str = option("adam", "adam | sgd", choices=("adam", "sgd"))
    inner_state: str = option("persistent", "persistent (the reference code: Adam's state carries over tasks) | fresh",
                              choices=("persistent", "fresh"))
    batch_norm: str = option("transductive", BATCH_NORM_HELP, choices=BATCH_NORM)


@schema("method", "meta_lstm_schema", "meta_lstm")
@dataclass
class MetaLSTMConfig(MethodConfig):
    name: str = "meta_lstm"
    inner_steps: int = option(5, "learner updates by the meta-learner during meta-training", low=1)
    inner_steps_eval: int = option(10, "learner updates at validation and test", low=1)
    hidden: int = option(20, "the coordinate-wise input LSTM's width", low=1)


@schema("method", "mann_schema", "mann")
@dataclass
class MANNConfig(EmbeddingMethodConfig):
    name: str = "mann"
    encoder: str = option("pixels", "pixels (the paper: flattened images) | conv (the backbone's embedding)",
                          choices=("pixels", "conv"))
    hidden: int = option(200, "the LSTM controller's width", low=1)
    slots: int = option(128, "memory rows", low=1)
    width: int = option(40, "memory columns", low=1)
    heads: int = option(4, "read heads (each with its write weights)", low=1)
    gamma: float = option(0.95, "the usage decay", low=0, high=1)
    loss_on: str = option("sequence", "sequence (the paper: support and query in one shuffled sequence, loss at every "
                          "step) | queries (the test protocol: query loss after the support sequence)",
                          choices=("sequence", "queries"))
    key_strength: bool = option(True, "the NTM's learned sharpening of each read (the paper: raw cosine softmax)")
    normalize_input: bool = option(True, "parameter-free LayerNorm on the encoder output (stops conv collapse)")
    write: str = option("add", "what is written: add (a separate add vector, as the NTM) | key (the paper: k_t)",
                        choices=("add", "key"))
    # trains an encoder whose codes separate classes, which the memory can then bind
    aux_weight: float = option(0.0, "the auxiliary prototypical loss's weight on the encoder's codes (0: the paper's "
                               "MANN)", low=0)
    # wider, each training episode's classes get random distinct labels of it, and the model can be tested up to
    # that many ways
    label_slots: int = option(0, "width of the label input and output (0: sampler.train_ways)", low=0)
    # a wide embedding (e.g. conv4_relation's 1,600) otherwise swamps the 5-wide label input
    project: int = option(0, "> 0: a learned linear map of the encoder output to this many features (0: none)", low=0)
    # a regulariser: the controller otherwise fits the tight code clusters of the training classes
    input_noise: float = option(0.0, "Gaussian noise's standard deviation on the controller's input codes in "
                                "meta-training", low=0)


@schema("method", "proto_maml_schema", "proto_maml")
@dataclass
class ProtoMAMLConfig(MethodConfig):
    """Proto-MAML (Triantafillou et al. 2020): MAML whose output layer starts each task at the prototypes."""

    name: str = "proto_maml"
    inner_lr: float = option(0.01, "the inner-loop learning rate", low=0)
    inner_steps: int = option(5, "inner steps in meta-training", low=1)
    inner_steps_eval: int = option(5, "inner steps at validation and test", low=1)
    first_order: bool = option(True, "fo-Proto-MAML (the paper's): the inner gradients treated as constants")
    batch_norm: str = option("transductive", BATCH_NORM_HELP, choices=BATCH_NORM)
