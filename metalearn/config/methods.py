"""The embedding methods' typed configs (each method's module in metalearn/methods/ builds it from these), and
the parts every method shares: its name and its backbone."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from metalearn.config.schema import option, schema

POSITIVE = 1e-12  # the lowest value of a key that must be > 0


@dataclass
class BackboneConfig:
    name: str = option("conv4", "conv4 | conv4_relation | resnet12 | wrn28_10 | resnet18 | timm (metalearn/backbones/)")
    width: int = option(64, "conv4's channels; the ResNets' channels scale with width/64 (64: the papers' networks)",
                        low=1, high=4096)
    pool: str = option("max", "conv4's downsampling: max (Snell et al.) | stride (Finn et al.)", choices=("max", "stride"))
    # With a stem Conv-4 reads images twice the size it was made for (56-px Omniglot): the extra block halves them
    # before the usual four (1.75x the training step)
    stem: int = option(0, "conv4: channels of an extra first block (0: none)", low=0, high=4096)
    drop_rate: float = option(0.1, "resnet12: dropout after blocks 1-2, DropBlock after blocks 3-4 (MetaOptNet's 0.1)",
                              low=0, high=0.99)
    block_size: int = option(5, "resnet12: DropBlock's block size", low=1)
    global_pool: bool = option(True, "resnet12: average the last map (640-d); false: flatten it (MetaOptNet's 16,000-d)")
    model: str | None = option(None, "timm: the timm model's name (resnet50, vit_small_patch16_224, ...)")
    weights: str | None = option(None, "timm: a local .safetensors or .pth file of its weights; cache: timm's offline "
                                       "cache; null: random weights")
    freeze: str = option("none", "timm: all | none | N (its stem and first N blocks) kept frozen")


@dataclass
class MethodConfig:
    name: str = MISSING
    backbone: BackboneConfig = option(help="the encoder", factory=BackboneConfig)


TEST_BATCH_NORMS = ("running", "support", "transductive")


@dataclass
class EmbeddingMethodConfig(MethodConfig):
    """Methods that embed each image and compare codes (see metalearn.methods.base.EmbeddingMethod)."""

    # see metalearn.methods.task_norm
    test_batch_norm: str = option("running", "test-time batch-norm statistics: running (tracked in training) | support "
                                  "(each task's support set's, MetaBN) | transductive (support and queries together)",
                                  choices=TEST_BATCH_NORMS)


@schema("method", "protonet_schema", "protonet")
@dataclass
class ProtoNetConfig(EmbeddingMethodConfig):
    name: str = "protonet"
    distance: str = option("sqeuclidean", "to the prototypes", choices=("sqeuclidean", "cosine"))


@schema("method", "matching_schema", "matching")
@dataclass
class MatchingConfig(EmbeddingMethodConfig):
    name: str = "matching"
    fce: bool = option(False, "full-context embeddings: a BiLSTM over the support set, an attention LSTM per query")
    fce_steps: int = option(5, "processing steps of the query's attention LSTM", low=1)
    scale: float = option(10.0, "multiplies the cosine before the softmax (the paper: 1)", low=POSITIVE)


@schema("method", "relation_schema", "relation")
@dataclass
class RelationConfig(EmbeddingMethodConfig):
    name: str = "relation"
    loss: str = option("mse", "mse (the paper: sigmoid scores regressed onto one-hot labels) | ce", choices=("mse", "ce"))
    hidden: int = option(8, "width of the relation module's hidden linear layer", low=1)


@schema("method", "siamese_schema", "siamese")
@dataclass
class SiameseConfig(EmbeddingMethodConfig):
    name: str = "siamese"
    pairs: int = option(128, "verification pairs per training step, half same-class, half different")
    rule: str = option("max", "max (the paper: the best-matching support example) | kernel (sum_i k(x, x_i) y_i)",
                       choices=("max", "kernel"))
    embedding: int = option(0, "> 0: the paper's fully connected sigmoid layer of this width on the conv features", low=0)
    hard_negatives: float = option(0.0, "fraction of different-class pairs from one group (Omniglot: one alphabet)",
                                   low=0, high=1)


@schema("method", "baseline_schema", "baseline", "baselinepp")
@dataclass
class BaselineConfig(EmbeddingMethodConfig):
    """baseline (linear head) and baselinepp (cosine head): supervised pre-training, then a new head per task."""

    name: str = "baseline"
    batch_size: int = option(128, "pre-training minibatch, drawn from all training classes", low=1)
    finetune_steps: int = option(100, "full-batch steps fitting the new head on a task's support set", low=1)
    finetune_lr: float = option(0.1, "the new head's learning rate, > 0", low=POSITIVE)
    teacher: str | None = option(None, "a trained baseline run folder: distil its logits while pre-training (born-again)")
    distill_weight: float = option(0.5, "the distillation term's share of the loss (RFS: 0.5)")
    distill_temperature: float = option(4.0, "the softmax temperature of both sides (RFS: 4)")
    margin: float = option(0.0, "taken from the true class's training logit (Liu et al. 2020: negative transfers better)")


@schema("method", "meta_baseline_schema", "meta_baseline")
@dataclass
class MetaBaselineConfig(EmbeddingMethodConfig):
    """Cosine similarity to class centroids times a learned temperature (the episodic stage of Meta-Baseline)."""

    name: str = "meta_baseline"
    temperature: float = option(10.0, "tau's start (the paper's code: 10), > 0", low=POSITIVE)
    learn_temperature: bool = option(True, "learn tau")
    temperature_lr_multiplier: float = option(100.0, "Meta-Baseline's temperature learning-rate multiplier over the "
                                              "encoder's (methods/meta_baseline.py)", low=0)


@schema("method", "simpleshot_schema", "simpleshot")
@dataclass
class SimpleShotConfig(EmbeddingMethodConfig):
    """Nearest centroid on transformed features of a pre-trained classifier (its preset's first stage)."""

    name: str = "simpleshot"
    norm: str = option("cl2n", "cl2n (centre on the base mean, then L2) | l2n | un", choices=("cl2n", "l2n", "un"))
    batch_size: int = option(1024, "training images encoded per step to measure the base mean", low=1)


@schema("method", "metaoptnet_schema", "metaoptnet")
@dataclass
class MetaOptNetConfig(EmbeddingMethodConfig):
    """A convex classifier solved on each task's support embeddings, differentiated through (Lee et al. 2019)."""

    name: str = "metaoptnet"
    head: str = option("svm", "svm (Crammer-Singer) | ridge (R2-D2's closed form)", choices=("svm", "ridge"))
    ridge_lambda: float = option(50.0, "the ridge head's regulariser, > 0 (the authors' code: 50)", low=POSITIVE)
    svm_c: float = option(0.1, "the SVM head's C, > 0 (the authors' code: 0.1)", low=POSITIVE)
    svm_iterations: int = option(100, "the SVM's fallback solver steps in training", low=1)
    svm_iterations_eval: int = option(300, "the SVM's fallback solver steps at test", low=1)
    scale: float = option(1.0, "the learned logit scale: MetaOptNet's start (the authors' code: 1.0); > 0", low=POSITIVE)
    scale_lr_multiplier: float = option(100.0, "MetaOptNet's logit-scale learning-rate multiplier over the encoder's "
                                        "(methods/log_scale.py)", low=0)


@schema("method", "tim_schema", "tim")
@dataclass
class TIMConfig(EmbeddingMethodConfig):
    """Transductive information maximisation at test time on a classifier's features (Boudiaf et al. 2020)."""

    name: str = "tim"
    batch_size: int = option(128, "the classifier's training minibatch, as baseline's", low=1)
    iterations: int = option(1000, "TIM's test-time Adam steps on each task's class weights (TIM-GD)", low=1)
    tim_lr: float = option(1e-4, "TIM's test-time learning rate, > 0", low=POSITIVE)
    temperature: float = option(15.0, "TIM's logit temperature, > 0", low=POSITIVE)
    loss_weights: list[float] = option(help="CE, marginal entropy, conditional entropy", factory=lambda: [0.1, 1.0, 0.1])


@schema("method", "feat_schema", "feat")
@dataclass
class FEATConfig(EmbeddingMethodConfig):
    """Prototypes adapted to the task by a set-to-set Transformer (Ye et al. 2020), as the authors' code trains it.
    temperature, temperature2 and balance left null take the authors' command for the backbone and the training
    shots (methods/feat.py: Conv-4 1-shot 64 / 16 / 1, 5-shot 32 / 64 / 0.1; ResNets 64 / 64 / 0.01, 64 / 32 / 0.1)."""

    name: str = "feat"
    temperature: float | None = option(None, "query logits: -distance / temperature; > 0 (null: the authors' per shot)",
                                       low=POSITIVE)
    temperature2: float | None = option(None, "the regulariser's temperature; > 0 (null: the authors' per shot)",
                                        low=POSITIVE)
    balance: float | None = option(None, "the regulariser's weight, 0: none (null: the authors' per shot)", low=0)
    dropout: float = option(0.5, "dropout on the Transformer block's output (the authors' 0.5)", low=0, high=0.99)
    attention_dropout: float = option(0.1, "dropout on the attention weights in training (the authors' 0.1)", low=0,
                                      high=0.99)
    lr_multiplier: float = option(10.0, "FEAT's Transformer learning-rate multiplier over the encoder's, > 0", low=POSITIVE)


@schema("method", "pixel_nn_schema", "pixel_nn")
@dataclass
class PixelNNConfig(MethodConfig):
    name: str = "pixel_nn"
