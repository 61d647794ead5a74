"""Typed config schemas, registered in Hydra's ConfigStore.

Every YAML file in ``configs/`` extends one of these dataclasses (through its
defaults list), so a misspelled key or a value of the wrong type fails at
start-up with the key's full name. This module must not import torch: it is
loaded by ``metalearn-train --help``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


def config_dir() -> str:
    """The configs/ folder: inside the package in a wheel, at the repo root in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"metalearn configs not found next to {here}; reinstall the package")


# group -> part name -> its schema (a method's, a dataset's), and the ConfigStore nodes the YAML files extend
SCHEMAS: dict[str, dict[str, type]] = {"method": {}, "dataset": {}, "sampler": {}, "hardware": {}, "None": {}}
_NODES: list[tuple[str | None, str, type]] = []


def schema(group: str | None, node: str, *names: str):
    """Declare a dataclass the typed config of the parts `names` of `group`: the YAML files of the built-in
    parts extend `node` (`<name>_schema`); a part defined elsewhere (a test, a plugin) can name its node after
    itself and needs no YAML (`@schema("method", "mine", "mine")`, then `method=mine`)."""
    def declare(cls: type) -> type:
        SCHEMAS.setdefault(str(group), {}).update(dict.fromkeys(names, cls))
        _NODES.append((group, node, cls))
        ConfigStore.instance().store(group=group, name=node, node=cls)
        return cls

    return declare


# ---------------------------------------------------------------- datasets
@dataclass
class DatasetConfig:
    name: str = MISSING
    image_size: int = 28
    cache_dir: str = "~/.cache/metalearn"


def data_difference(own: dict, theirs: dict, may_differ: tuple[str, ...] = ()) -> str | None:
    """How two runs' dataset configs differ outside `may_differ`, as an error message's middle
    ("dataset.a, dataset.b differ (dataset.a: X here, Y there)"), or None when they read the same classes."""
    differ = sorted(k for k in set(own) | set(theirs) if k not in may_differ and own.get(k) != theirs.get(k))
    if not differ:
        return None
    k = differ[0]
    return (f"dataset.{', dataset.'.join(differ)} differ (dataset.{k}: {str(own.get(k))[:60]} here, "
            f"{str(theirs.get(k))[:60]} there)")


# dataset keys that say where the files are, not which classes: they may differ between runs that read the same data
WHERE_KEYS = ("root", "cache_dir", "download", "check_md5")


@schema("dataset", "synthetic_schema", "synthetic")
@dataclass
class SyntheticConfig(DatasetConfig):
    name: str = "synthetic"
    num_classes: int = 1200
    images_per_class: int = 20
    generator_seed: int = 0
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])


@dataclass
class AlphabetLists:
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)


@schema("dataset", "omniglot_schema", "omniglot")
@dataclass
class OmniglotConfig(DatasetConfig):
    name: str = "omniglot"
    root: str | None = None
    # archives (name.zip) or extracted folders under root, read in this order;
    # a character already read from an earlier archive is not read twice.
    archives: list[str] = field(default_factory=lambda: ["images_background", "images_evaluation"])
    download: bool = False
    # compare the original zips (images_background, images_evaluation, _small1, _small2) with their known MD5
    check_md5: bool = True
    # splits whose characters also appear rotated by 90/180/270 degrees as new classes
    rotations: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    # splits whose classes (rotated ones included) also appear mirrored as new classes
    reflections: list[str] = field(default_factory=list)
    split: str = "vinyals"  # vinyals | lake (standard, full archives) | character | alphabet (random, by seed)
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    split_seed: int = 0
    # explicit alphabet-level split; when any list is non-empty it replaces the random split
    alphabets: AlphabetLists = field(default_factory=AlphabetLists)


@schema("dataset", "mini_imagenet_schema", "mini_imagenet", "tiered_imagenet")
@dataclass
class MiniImageNetConfig(DatasetConfig):
    """mini_imagenet and tiered_imagenet: the standard splits, read from whichever released form is in root."""

    name: str = "mini_imagenet"
    root: str | None = None
    image_size: int = 84


@schema("dataset", "cifar_schema", "cifar_fs", "fc100")
@dataclass
class CifarConfig(DatasetConfig):
    """cifar_fs and fc100, both from CIFAR-100's python release."""

    name: str = "cifar_fs"
    root: str | None = None
    download: bool = False
    image_size: int = 32


@schema("dataset", "image_folder_schema", "image_folder")
@dataclass
class ImageFolderConfig(DatasetConfig):
    name: str = "image_folder"
    root: str | None = None
    image_size: int = 84
    channels: int = 3  # 1 (grey) | 3 (RGB)
    split_file: str | None = None  # JSON {"train": [class names], "val": [...], "test": [...]}; else fractions
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    split_seed: int = 0


# ---------------------------------------------------------------- the rest
@schema("sampler", "sampler_schema")
@dataclass
class SamplerConfig:
    """Training episodes may differ from evaluation episodes (ProtoNets trains 60-way)."""

    train_ways: int = MISSING
    train_shots: int = MISSING
    train_queries: int = MISSING
    meta_batch: int = 1
    # each training episode's classes from one group (alphabet | superclass | folder: what the dataset groups by;
    # hard negatives: similar classes in one episode); null: from all training classes
    within: str | None = None
    disjoint_drawers: bool = False  # support and query images by different drawers (Omniglot)


@dataclass
class BackboneConfig:
    name: str = "conv4"  # conv4 | conv4_relation | resnet12 | wrn28_10 | resnet18 (metalearn/backbones/)
    width: int = 64  # conv4's channels; the ResNets' channels scale with width/64 (64: the papers' networks)
    pool: str = "max"  # conv4: max (Snell et al.) | stride (Finn et al.)
    # conv4: channels of an extra first block (0: none). With it Conv-4 reads images twice the size it was
    # made for (56-px Omniglot): the extra block halves them before the usual four (1.75x the training step)
    stem: int = 0
    drop_rate: float = 0.1  # resnet12: dropout after blocks 1-2, DropBlock after blocks 3-4 (MetaOptNet's 0.1)
    block_size: int = 5  # resnet12: DropBlock's block size
    global_pool: bool = True  # resnet12: average the last map (640-d); false: flatten it (MetaOptNet's 16,000-d)


@dataclass
class MethodConfig:
    name: str = MISSING
    backbone: BackboneConfig = field(default_factory=BackboneConfig)


@dataclass
class EmbeddingMethodConfig(MethodConfig):
    """Methods that embed each image and compare codes (see metalearn.methods.base.EmbeddingMethod)."""

    # test-time batch-norm statistics: running (tracked in training) | support (each task's support set's,
    # MetaBN) | transductive (the task's support and queries together); see metalearn.methods.task_norm
    test_batch_norm: str = "running"


@schema("method", "protonet_schema", "protonet")
@dataclass
class ProtoNetConfig(EmbeddingMethodConfig):
    name: str = "protonet"
    distance: str = "sqeuclidean"  # sqeuclidean | cosine


@schema("method", "matching_schema", "matching")
@dataclass
class MatchingConfig(EmbeddingMethodConfig):
    name: str = "matching"
    fce: bool = False  # full-context embeddings: a BiLSTM over the support set, an attention LSTM per query
    fce_steps: int = 5  # processing steps of the query's attention LSTM
    scale: float = 10.0  # multiplies the cosine before the softmax (the paper: 1)


@schema("method", "relation_schema", "relation")
@dataclass
class RelationConfig(EmbeddingMethodConfig):
    name: str = "relation"
    loss: str = "mse"  # mse (the paper: sigmoid scores regressed onto one-hot labels) | ce
    hidden: int = 8  # width of the relation module's hidden linear layer


@schema("method", "siamese_schema", "siamese")
@dataclass
class SiameseConfig(EmbeddingMethodConfig):
    name: str = "siamese"
    pairs: int = 128  # verification pairs per training step, half same-class, half different
    rule: str = "max"  # max (the paper: the best-matching support example) | kernel (sum_i k(x, x_i) y_i)
    embedding: int = 0  # > 0: the paper's fully connected sigmoid layer of this width on the conv features
    hard_negatives: float = 0.0  # fraction of different-class pairs from one group (Omniglot: one alphabet)


@schema("method", "baseline_schema", "baseline", "baselinepp")
@dataclass
class BaselineConfig(EmbeddingMethodConfig):
    """baseline (linear head) and baselinepp (cosine head): supervised pre-training, then a new head per task."""

    name: str = "baseline"
    batch_size: int = 128  # pre-training minibatch, drawn from all training classes
    finetune_steps: int = 100  # full-batch steps fitting the new head on a task's support set
    finetune_lr: float = 0.1
    teacher: str | None = None  # a trained baseline run folder: distil its logits while pre-training (born-again)
    distill_weight: float = 0.5  # the distillation term's share of the loss (RFS: 0.5)
    distill_temperature: float = 4.0  # the softmax temperature of both sides (RFS: 4)
    margin: float = 0.0  # taken from the true class's training logit (Liu et al. 2020: negative transfers better)


@schema("method", "meta_baseline_schema", "meta_baseline")
@dataclass
class MetaBaselineConfig(EmbeddingMethodConfig):
    """Cosine similarity to class centroids times a learned temperature (the episodic stage of Meta-Baseline)."""

    name: str = "meta_baseline"
    temperature: float = 10.0  # tau's start (the paper's code: 10)
    learn_temperature: bool = True
    temperature_lr_multiplier: float = 100.0  # log(tau)'s learning rate over the encoder's (methods/meta_baseline.py)


@schema("method", "simpleshot_schema", "simpleshot")
@dataclass
class SimpleShotConfig(EmbeddingMethodConfig):
    """Nearest centroid on transformed features of a pre-trained classifier (its preset's first stage)."""

    name: str = "simpleshot"
    norm: str = "cl2n"  # cl2n (centre on the base mean, then L2) | l2n | un
    batch_size: int = 1024  # training images encoded per step to measure the base mean


@schema("method", "metaoptnet_schema", "metaoptnet")
@dataclass
class MetaOptNetConfig(EmbeddingMethodConfig):
    """A convex classifier solved on each task's support embeddings, differentiated through (Lee et al. 2019)."""

    name: str = "metaoptnet"
    head: str = "svm"  # svm (Crammer-Singer) | ridge (R2-D2's closed form)
    ridge_lambda: float = 50.0  # the authors' code
    svm_c: float = 0.1  # the authors' code
    svm_iterations: int = 100  # projected-gradient steps where the exact solver's active set does not settle
    svm_iterations_eval: int = 300  # the same at test
    scale: float = 1.0  # the learned logit scale's start (the authors' code: 1.0)
    scale_lr_multiplier: float = 100.0  # log(scale)'s learning rate over the encoder's (methods/log_scale.py)


@schema("method", "tim_schema", "tim")
@dataclass
class TIMConfig(EmbeddingMethodConfig):
    """Transductive information maximisation at test time on a classifier's features (Boudiaf et al. 2020)."""

    name: str = "tim"
    batch_size: int = 128  # the classifier's training minibatch, as baseline's
    iterations: int = 1000  # Adam steps on each test task's class weights (TIM-GD)
    tim_lr: float = 1e-4
    temperature: float = 15.0
    loss_weights: list[float] = field(default_factory=lambda: [0.1, 1.0, 0.1])  # CE, marginal H, conditional H


@schema("method", "feat_schema", "feat")
@dataclass
class FEATConfig(EmbeddingMethodConfig):
    """Prototypes adapted to the task by a set-to-set Transformer (Ye et al. 2020); defaults: the authors' Conv-4 runs."""

    name: str = "feat"
    temperature: float = 64.0  # query logits: -distance / temperature
    temperature2: float = 16.0  # the contrastive regulariser's
    balance: float = 1.0  # the regulariser's weight (0: none)
    dropout: float = 0.5
    lr_multiplier: float = 10.0  # the Transformer's learning rate over the encoder's


@schema("method", "meta_lstm_schema", "meta_lstm")
@dataclass
class MetaLSTMConfig(MethodConfig):
    name: str = "meta_lstm"
    inner_steps: int = 5  # learner updates by the meta-learner during meta-training
    inner_steps_eval: int = 10  # and at validation and test
    hidden: int = 20  # the coordinate-wise input LSTM's width


@schema("method", "mann_schema", "mann")
@dataclass
class MANNConfig(EmbeddingMethodConfig):
    name: str = "mann"
    encoder: str = "pixels"  # pixels (the paper: flattened images) | conv (the backbone's embedding)
    hidden: int = 200  # LSTM controller
    slots: int = 128  # memory rows
    width: int = 40  # memory columns
    heads: int = 4  # read heads (each with its write weights)
    gamma: float = 0.95  # usage decay
    # meta-training loss: sequence (the paper: support and query examples in one shuffled sequence,
    # loss at every step) | queries (the test-time protocol: query loss after the support sequence)
    loss_on: str = "sequence"
    key_strength: bool = True  # the NTM's learned sharpening of each read (the paper: raw cosine softmax)
    normalize_input: bool = True  # parameter-free LayerNorm on the encoder output (stops conv collapse)
    write: str = "add"  # what is written to memory: add (a separate add vector, as the NTM) | key (the paper: k_t)
    # weight of an auxiliary prototypical loss on the encoder's codes of each training episode (0: the
    # paper's MANN); trains an encoder whose codes separate classes, which the memory can then bind
    aux_weight: float = 0.0
    # width of the label input and output; 0: sampler.train_ways. Wider, each training episode's classes
    # get random distinct labels of it, and the model can be tested up to that many ways
    label_slots: int = 0
    # > 0: a learned linear map of the (normalised) encoder output to this many features before the
    # controller (a wide embedding, e.g. conv4_relation's 1,600, otherwise swamps the 5-wide label input)
    project: int = 0
    # > 0: Gaussian noise of this standard deviation on the controller's input codes in meta-training (a
    # regulariser: the controller otherwise fits the tight code clusters of the training classes)
    input_noise: float = 0.0


@dataclass
class MAMLPlusPlusConfig:
    """MAML++ (Antoniou et al. 2019) switches; all off is plain MAML."""

    per_layer_per_step_lr: bool = False
    multi_step_loss: bool = False
    msl_anneal_steps: int = 1000
    per_step_bn: bool = False
    first_order_until: int = 0


@schema("method", "maml_schema", "maml", "fomaml", "anil", "metasgd", "mamlpp")
@dataclass
class MAMLConfig(MethodConfig):
    """maml, fomaml, anil and metasgd: one schema, the method is the name plus its switches."""

    name: str = "maml"
    inner_lr: float = 0.4
    inner_steps: int = 1  # during meta-training
    inner_steps_eval: int = 3  # at validation and test
    first_order: bool = False
    adapt: str = "all"  # all | head (ANIL)
    learn_inner_lr: bool = False  # Meta-SGD: a learned learning rate per parameter entry
    batch_norm: str = "transductive"  # transductive (batch statistics, as the reference code) | running
    plus: MAMLPlusPlusConfig = field(default_factory=MAMLPlusPlusConfig)
    task_batching: str = "auto"  # loop (task by task) | vmap (torch.func.vmap over the meta-batch) | split | auto (timed)
    task_chunk: int | None = None  # tasks vmap and split run at once (memory grows with it); null: CPU bound, GPU all


@schema("method", "reptile_schema", "reptile")
@dataclass
class ReptileConfig(MethodConfig):
    name: str = "reptile"
    inner_lr: float = 0.001
    inner_steps: int = 5
    inner_steps_eval: int = 50
    inner_batch: int = 10
    inner_optimizer: str = "adam"  # adam | sgd
    inner_state: str = "persistent"  # persistent (the reference code: Adam's state carries over tasks) | fresh
    batch_norm: str = "transductive"


@schema("method", "pixel_nn_schema", "pixel_nn")
@dataclass
class PixelNNConfig(MethodConfig):
    name: str = "pixel_nn"


@schema("hardware", "hardware_schema")
@dataclass
class HardwareConfig:
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int | None = None  # CPU threads; null = torch's default
    amp: str = "none"  # none | bf16 (autocast)
    channels_last: bool = True
    keep_freed_memory: bool = True  # glibc: reuse freed activation memory instead of fresh pages (see hardware.py)
    cuda_graph: bool = False  # replay the training step's gradient as a CUDA graph (engine/cuda_graph.py)


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9


@dataclass
class ScheduleConfig:
    name: str = "step"  # none | step | cosine | linear (to zero at the last step: Reptile's meta-step annealing)
    step_size: int = 2000
    gamma: float = 0.5


@dataclass
class AugmentConfig:
    """Random affine per training image (support and query), applied on the batch."""

    enabled: bool = False
    rotate: float = 15.0  # max degrees either way
    scale: float = 0.15  # max relative change
    shift: float = 0.1  # max fraction of the image side
    # A hand's slant and proportions: a horizontal shear of up to `shear` (x += shear * y) and a width-to-height
    # change of up to `aspect` either way. 0: off (and no random numbers drawn for them).
    shear: float = 0.0
    aspect: float = 0.0
    # Elastic distortion (Simard et al. 2003): a uniform(-1, 1) displacement field per image, smoothed by a
    # Gaussian of elastic_sigma pixels and scaled by elastic_alpha pixels: strokes bend as another hand's
    # would, keeping their order and joins. 0: off (and no random numbers drawn for it).
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0


@dataclass
class ValConfig:
    every: int = 250  # validate every this many steps and at the last; 0: never (the last checkpoint is tested)
    episodes: int = 200
    seed: int = 1


@dataclass
class InitConfig:
    """Start from another run's weights (pre-training, a curriculum) instead of a fresh initialisation."""

    run: str | None = None  # a run folder or a checkpoint file (.pt); null: fresh weights
    checkpoint: str = "best"  # best | last, for a run folder
    only: list[str] = field(default_factory=list)  # name prefixes to take, e.g. [backbone]; empty: all shared
    rename: list[str] = field(default_factory=list)  # "source-prefix:this-prefix", e.g. [backbone:encoder]


@dataclass
class PretrainConfig:
    """A pre-training stage run first, in <run>/pretrain (metalearn.engine.stages): a preset of
    configs/experiment/ (e.g. baseline_omniglot_small), then this run starts from its weights (init.only)."""

    experiment: str | None = None
    overrides: list[str] = field(default_factory=list)  # further overrides for the stage, e.g. [steps=3000]


@dataclass
class TestSetting:
    """A further test setting beside test.ways x test.shots, e.g. Lake et al.'s one-shot protocol:
    {ways: 20, within: alphabet, disjoint_drawers: true}."""

    ways: int = MISSING
    shots: int | None = None  # null: each of test.shots (or shots)
    within: str | None = None  # alphabet | superclass | folder: each episode's classes from one such group
    disjoint_drawers: bool = False  # support and query images by different drawers (Omniglot)


@dataclass
class TestConfig:
    episodes: int = 600
    seed: int = 2
    ways: list[int] = field(default_factory=list)  # empty = [ways]
    shots: list[int] = field(default_factory=list)  # empty = [shots]
    batch: int = 50  # episodes per forward pass
    extra: list[TestSetting] = field(default_factory=list)  # further settings, scored on the same test split


@schema(None, "train_schema")
@dataclass
class TrainConfig:
    dataset: Any = MISSING
    sampler: SamplerConfig = MISSING
    method: Any = MISSING
    hardware: HardwareConfig = MISSING
    task: str = "train"
    seed: int = 0
    ways: int = 5
    shots: int = 1
    queries: int = 15
    steps: int = 2000
    log_every: int = 25
    checkpoint_every: int = 250
    resume: bool = False
    run_dir: str | None = None
    max_minutes: float | None = None  # stop training after this long (this process), checkpointed, exit 124
    tags: list[str] = field(default_factory=list)  # recorded in summary.json, the trackers and the report
    notes: str = ""
    plots: str = "auto"  # the learning-curve PNG: auto (drawn after exit where safe) | foreground | background
    logger: dict[str, Any] = field(default_factory=dict)  # tracker name -> its settings (configs/logger)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val: ValConfig = field(default_factory=ValConfig)
    test: TestConfig = field(default_factory=TestConfig)
    init: InitConfig = field(default_factory=InitConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


@dataclass
class TTAConfig:
    """Test-time augmentation (metalearn-eval tta.copies=8): each image's code averaged over `copies` random
    affine copies of it, the first the image itself. Inductive: no image's code depends on another's."""

    copies: int = 1  # 1: none
    rotate: float = 10.0  # max degrees either way
    scale: float = 0.1  # max relative change
    shift: float = 0.1  # max fraction of the image side
    shear: float = 0.0  # the copies' slant and proportions (AugmentConfig's), 0: off
    aspect: float = 0.0
    elastic_alpha: float = 0.0  # the copies' elastic distortion (AugmentConfig's), 0: affine only
    elastic_sigma: float = 4.0
    seed: int = 0  # the copies' random affine transforms
    match: str = "mean"  # mean: each image's code is its copies' mean; chamfer: copies matched to copies


@schema(None, "eval_schema")
@dataclass
class EvalConfig:
    run: str | None = None  # a finished run's folder
    ensemble: list[str] = field(default_factory=list)  # further run folders: score run and these as one ensemble
    checkpoint: str = "best"  # best | last
    split: str = "test"
    episodes: int = 600
    seed: int = 2
    ways: int | None = None  # null = the run's own
    shots: int | None = None
    queries: int | None = None
    within: str | None = None  # alphabet | superclass | folder: each episode's classes from one group
    disjoint_drawers: bool = False  # support and query images by different drawers (Omniglot)
    batch: int = 50
    dataset_root: str | None = None  # when the data moved since training
    test_batch_norm: str | None = None  # an embedding method's test-time batch-norm statistics; null = the run's own
    inner_steps: int | None = None  # test-time adaptation steps (MAML family, meta_lstm); null = the run's own
    tta: TTAConfig = field(default_factory=TTAConfig)  # test-time augmentation of an embedding method's codes
    head: str | None = None  # tim: TIM's transductive inference on an embedding method's codes; null = its own head
    hardware: HardwareConfig = field(default_factory=HardwareConfig)


# The numeric ranges of the keys above, declared once beside their types and checked before anything is built
# (check_values): key -> (lowest, highest, what the key is), None for no bound; a key a config lacks (another
# method's, another dataset's) is skipped. Exclusive bounds are written as the nearest valid value.
BOUNDS: dict[str, tuple[float | None, float | None, str]] = {
    "seed": (0, None, "the run's random seed"),
    "steps": (1, None, "meta-training steps"),
    "log_every": (1, None, "steps between training log records"),
    "checkpoint_every": (1, None, "steps between checkpoints"),
    "max_minutes": (0, None, "minutes of training before a checkpointed stop (null: no limit)"),
    "sampler.meta_batch": (1, 100_000, "tasks per meta-training step"),
    "optimizer.lr": (1e-12, None, "the outer learning rate, > 0"),
    "optimizer.weight_decay": (0, None, "weight decay"),
    "optimizer.momentum": (0, 1, "SGD momentum"),
    "schedule.step_size": (1, None, "steps between learning-rate decays"),
    "schedule.gamma": (1e-12, None, "the learning-rate decay factor, > 0"),
    "augment.rotate": (0, 180, "the largest rotation, in degrees"),
    "augment.scale": (0, 0.99, "the largest relative change of scale"),
    "augment.shift": (0, 1, "the largest shift, as a fraction of the image side"),
    "augment.shear": (0, 1, "the largest horizontal shear (x += shear * y)"),
    "augment.aspect": (0, 0.99, "the largest relative change of width to height"),
    "augment.elastic_alpha": (0, 1000, "the elastic distortion's strength in pixels (Simard et al.'s alpha; 0: off)"),
    "augment.elastic_sigma": (0.5, 100, "the elastic displacement field's smoothing, in pixels"),
    "val.every": (0, None, "steps between validations (0: never)"),
    "val.episodes": (1, 1_000_000, "validation episodes"),
    "val.seed": (0, None, "the validation episodes' seed"),
    "test.episodes": (0, 1_000_000, "test episodes after training (0: none; `metalearn-eval run=...` tests later)"),
    "test.seed": (0, None, "the test episodes' seed"),
    "test.batch": (1, None, "test episodes per forward pass"),
    "test.ways": (2, None, "each test setting's ways"),
    "test.shots": (1, None, "each test setting's shots"),
    "dataset.image_size": (16, 1024, "the image side in pixels; Conv-4's four halvings need 16"),
    "dataset.num_classes": (3, None, "synthetic classes"),
    "dataset.images_per_class": (2, None, "synthetic images per class"),
    "dataset.split_fractions": (0, None, "train, val and test fractions"),
    "dataset.split_seed": (0, None, "the split's seed"),
    "hardware.threads": (1, 1024, "CPU threads (null: torch's default)"),
    "method.backbone.width": (1, 4096, "the backbone's channels"),
    "method.backbone.stem": (0, 4096, "conv4's extra first block's channels (0: none)"),
    "method.inner_lr": (0, None, "the inner-loop learning rate"),
    "method.hidden": (1, None, "the hidden width"),
    "method.batch_size": (1, None, "pre-training minibatch size"),
    "method.slots": (1, None, "memory rows"),
    "method.width": (1, None, "memory columns"),
    "method.heads": (1, None, "read heads"),
    "method.gamma": (0, 1, "the usage decay"),
    "method.label_slots": (0, None, "label width (0: sampler.train_ways)"),
    "method.project": (0, None, "projected width (0: none)"),
    "method.input_noise": (0, None, "input noise's standard deviation"),
    "method.inner_batch": (1, None, "Reptile's inner minibatch"),
    "method.inner_steps": (1, None, "inner steps in meta-training"),
    "method.task_chunk": (1, None, "tasks run at once by the vmap and split paths (null: the CPU's bound, all on a GPU)"),
    "method.inner_steps_eval": (1, None, "inner steps at validation and test"),
    "method.fce_steps": (1, None, "the attention LSTM's processing steps"),
    "method.embedding": (0, None, "the sigmoid layer's width (0: none)"),
    "method.finetune_steps": (1, None, "steps fitting the new head on a task's support set"),
    "method.finetune_lr": (1e-12, None, "the new head's learning rate, > 0"),
    "method.aux_weight": (0, None, "the auxiliary prototypical loss's weight (0: none)"),
    "method.plus.msl_anneal_steps": (1, None, "MAML++ multi-step-loss annealing steps"),
    "method.plus.first_order_until": (0, None, "MAML++ first-order steps"),
    "method.hard_negatives": (0, 1, "fraction of hard negative pairs"),
    "method.ridge_lambda": (1e-12, None, "the ridge head's regulariser, > 0"),
    "method.svm_c": (1e-12, None, "the SVM head's C, > 0"),
    "method.svm_iterations": (1, None, "the SVM's fallback solver steps in training"),
    "method.svm_iterations_eval": (1, None, "the SVM's fallback solver steps at test"),
    "method.iterations": (1, None, "TIM's test-time steps"),
    "method.tim_lr": (1e-12, None, "TIM's test-time learning rate, > 0"),
    "method.temperature": (1e-12, None, "a logit temperature, > 0"),
    "method.temperature2": (1e-12, None, "FEAT's regulariser temperature, > 0"),
    "method.dropout": (0, 0.99, "FEAT's Transformer dropout"),
    "method.balance": (0, None, "FEAT's regulariser weight"),
    "method.lr_multiplier": (1e-12, None, "FEAT's Transformer learning-rate multiplier, > 0"),
    "method.temperature_lr_multiplier": (0, None, "Meta-Baseline's temperature learning-rate multiplier"),
    "method.scale_lr_multiplier": (0, None, "MetaOptNet's logit-scale learning-rate multiplier"),
    "method.backbone.drop_rate": (0, 0.99, "resnet12's dropout and DropBlock rate"),
    "method.backbone.block_size": (1, None, "resnet12's DropBlock block size"),
    "method.scale": (1e-12, None, "the logit scale: a cosine head's, or MetaOptNet's start; > 0"),
}


# The values a string key takes, declared once beside the schemas and checked with the bounds.
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer.name": ("adam", "sgd"),
    "schedule.name": ("none", "step", "cosine", "linear"),
    "hardware.amp": ("none", "bf16"),
    "method.backbone.pool": ("max", "stride"),
    "method.test_batch_norm": ("running", "support", "transductive"),
    "method.batch_norm": ("transductive", "running"),
    "method.distance": ("sqeuclidean", "cosine"),
    "method.loss": ("mse", "ce"),
    "method.rule": ("max", "kernel"),
    "method.encoder": ("pixels", "conv"),
    "method.loss_on": ("sequence", "queries"),
    "method.write": ("add", "key"),
    "method.adapt": ("all", "head"),
    "method.task_batching": ("auto", "loop", "vmap", "split"),
    "method.inner_optimizer": ("adam", "sgd"),
    "method.inner_state": ("persistent", "fresh"),
    "method.norm": ("cl2n", "l2n", "un"),
    "method.head": ("svm", "ridge"),
    "sampler.within": ("alphabet", "superclass", "folder"),
    "plots": ("auto", "foreground", "background"),
}


def check_values(cfg: Any, prefix: str = "") -> None:
    """Every bounded key of cfg in its range and every key with CHOICES one of them, or one MetalearnError
    naming the key, its value and what it may be. `prefix`: where cfg sits in the whole config ("method."
    for a method's own config)."""
    from dataclasses import is_dataclass

    from metalearn.errors import MetalearnError

    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.structured(cfg) if is_dataclass(cfg) else OmegaConf.create(cfg)

    def select(key: str):
        return OmegaConf.select(cfg, key[len(prefix):], default=None) if key.startswith(prefix) else None

    for key, (low, high, what) in BOUNDS.items():
        value = select(key)
        for v in value if isinstance(value, list | tuple) or OmegaConf.is_list(value) else [value]:
            if v is None or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if v != v or (low is not None and v < low) or (high is not None and v > high):
                rng = (f">= {low}" if high is None else f"between {low} and {high}") if low is not None else f"<= {high}"
                raise MetalearnError(f"{key}={value} is out of range ({what}); give {key}= a value {rng}")
    for key, allowed in CHOICES.items():
        value = select(key)
        if value is not None and value not in allowed:
            raise MetalearnError(f"{key}={value!r} is not one of: {', '.join(allowed)}")


# Keys renamed since runs were first saved: (old, new) under `method`, for the methods of a schema. An embedding
# method's test-time statistics were `method.batch_norm` until 2026-12, the name the MAML family and Reptile
# keep for their build-time batch-norm mode; one name now has one meaning.
RENAMED_METHOD_KEYS: dict[type, list[tuple[str, str]]] = {EmbeddingMethodConfig: [("batch_norm", "test_batch_norm")]}


def migrate_saved_config(saved: dict) -> dict:
    """A saved config with keys renamed since it was written moved to their new names (a run folder from
    before a rename still evaluates and resumes)."""
    method = saved.get("method")
    if not isinstance(method, dict):
        return saved
    method, cls = dict(method), SCHEMAS["method"].get(method.get("name"))
    for base, renames in RENAMED_METHOD_KEYS.items():
        for old, new in renames if cls is not None and issubclass(cls, base) else []:
            if old in method and new not in method:
                method[new] = method.pop(old)
    return {**saved, "method": method}


def complete_saved_config(saved: dict) -> tuple[dict, list[str]]:
    """A run's saved config with the keys added to the schemas since it was written filled in with their
    defaults, so runs made by an older metalearn still load; returns it and the dotted keys filled (to warn
    about: a new option's default is not always the behaviour the old run had)."""
    defaults = {"sampler": SamplerConfig, "hardware": HardwareConfig,
                "method": SCHEMAS["method"].get(saved.get("method", {}).get("name")),
                "dataset": SCHEMAS["dataset"].get(saved.get("dataset", {}).get("name"))}
    base = {k: v for k, v in OmegaConf.to_container(OmegaConf.structured(TrainConfig)).items() if k not in defaults}
    base.update({k: OmegaConf.to_container(OmegaConf.structured(cls)) for k, cls in defaults.items() if cls is not None})
    filled: list[str] = []
    saved = migrate_saved_config(saved)

    def fill(into: dict, fresh: dict, prefix: str) -> dict:
        out = dict(into)
        for key, value in fresh.items():
            if key not in out:
                out[key] = value
                filled.append(prefix + key)
            elif isinstance(value, dict) and isinstance(out[key], dict):
                out[key] = fill(out[key], value, f"{prefix}{key}.")
        return out

    return fill(saved, base, ""), filled


def register() -> None:
    """Put back any schema the ConfigStore lost (declaring one stores it; a launcher may hand a job a fresh
    store). Storing converts the dataclass again, ~0.1 s for all of them, so a present node is kept."""
    from hydra.core.object_type import ObjectType

    cs = ConfigStore.instance()
    for group, node, cls in _NODES:
        if cs.get_type(f"{group}/{node}.yaml" if group else f"{node}.yaml") != ObjectType.CONFIG:
            cs.store(group=group, name=node, node=cls)
