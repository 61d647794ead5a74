"""The typed config of a training run (metalearn-train): the sampler, the hardware, the optimiser and schedule,
augmentation, validation, testing, initialisation and a pre-training stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from metalearn.config.evaluation import GROUPS, TTAConfig
from metalearn.config.hardware import HardwareConfig
from metalearn.config.schema import option, schema

POSITIVE = 1e-12


@schema("sampler", "sampler_schema")
@dataclass
class SamplerConfig:
    """Training episodes may differ from evaluation episodes (ProtoNets trains 60-way)."""

    kind: str = option("episodic", "episodic (N-way K-shot) | variable (Meta-Dataset's: 5-50 ways, imbalanced shots; "
                       "validation and a test on them too)", choices=("episodic", "variable"))
    train_ways: int = option(MISSING, "the training episodes' classes")
    train_shots: int = option(MISSING, "the training episodes' support images per class")
    train_queries: int = option(MISSING, "the training episodes' query images per class")
    meta_batch: int = option(1, "tasks per meta-training step", low=1, high=100_000)
    # hard negatives: similar classes in one episode
    within: str | None = option(None, "each training episode's classes from one group (what the dataset groups by); "
                                "null: from all training classes", choices=GROUPS)
    disjoint_drawers: bool = option(False, "support and query images by different drawers (Omniglot)")


@dataclass
class OptimizerConfig:
    name: str = option("adam", "adam | adamw (decoupled weight decay) | sgd", choices=("adam", "adamw", "sgd"))
    lr: float = option(1e-3, "the outer learning rate, > 0", low=POSITIVE)
    weight_decay: float = option(0.0, "weight decay", low=0)
    momentum: float = option(0.9, "SGD momentum", low=0, high=1)


@dataclass
class ScheduleConfig:
    name: str = option("step", "none | step | cosine | linear (to zero at the last step: Reptile's meta-step "
                       "annealing)", choices=("none", "step", "cosine", "linear"))
    step_size: int = option(2000, "steps between learning-rate decays", low=1)
    gamma: float = option(0.5, "the learning-rate decay factor, > 0", low=POSITIVE)


@dataclass
class AugmentConfig:
    """Random affine per training image (support and query), applied on the batch."""

    enabled: bool = option(False, "augment the training images")
    rotate: float = option(15.0, "the largest rotation, in degrees", low=0, high=180)
    scale: float = option(0.15, "the largest relative change of scale", low=0, high=0.99)
    shift: float = option(0.1, "the largest shift, as a fraction of the image side", low=0, high=1)
    # A hand's slant and proportions; 0: off (and no random numbers drawn for them).
    shear: float = option(0.0, "the largest horizontal shear (x += shear * y)", low=0, high=1)
    aspect: float = option(0.0, "the largest relative change of width to height", low=0, high=0.99)
    # Elastic distortion (Simard et al. 2003): a uniform(-1, 1) displacement field per image, smoothed by a
    # Gaussian of elastic_sigma pixels and scaled by elastic_alpha pixels: strokes bend as another hand's
    # would, keeping their order and joins. 0: off (and no random numbers drawn for it).
    elastic_alpha: float = option(0.0, "the elastic distortion's strength in pixels (Simard et al.'s alpha; 0: off)",
                                  low=0, high=1000)
    elastic_sigma: float = option(4.0, "the elastic displacement field's smoothing, in pixels", low=0.5, high=100)


@dataclass
class ValConfig:
    every: int = option(250, "steps between validations (0: never; the last checkpoint is tested)", low=0)
    episodes: int = option(200, "validation episodes", low=1, high=1_000_000)
    seed: int = option(1, "the validation episodes' seed", low=0)


@dataclass
class InitConfig:
    """Start from another run's weights (pre-training, a curriculum) instead of a fresh initialisation."""

    run: str | None = option(None, "a run folder or a checkpoint file (.pt); null: fresh weights")
    checkpoint: str = option("best", "best | last, for a run folder")
    only: list[str] = option(help="name prefixes to take, e.g. [backbone]; empty: all shared", factory=list)
    rename: list[str] = option(help='"source-prefix:this-prefix", e.g. [backbone:encoder]', factory=list)


@dataclass
class PretrainConfig:
    """A pre-training stage run first, in <run>/pretrain (metalearn.engine.stages): a preset of
    configs/experiment/ (e.g. baseline_omniglot_small), then this run starts from its weights (init.only)."""

    experiment: str | None = option(None, "the stage's preset (configs/experiment/)")
    overrides: list[str] = option(help="further overrides for the stage, e.g. [steps=3000]", factory=list)


@dataclass
class TestSetting:
    """A further test setting beside test.ways x test.shots, e.g. Lake et al.'s one-shot protocol:
    {ways: 20, within: alphabet, disjoint_drawers: true}; any readout and test-time copies as metalearn-eval's."""

    ways: int = option(MISSING, "the setting's ways", low=2)
    shots: int | None = option(None, "null: each of test.shots (or shots)", low=1)
    within: str | None = option(None, "each episode's classes from one group", choices=GROUPS)
    disjoint_drawers: bool = option(False, "support and query images by different drawers (Omniglot)")
    readout: str | None = option(None, "how codes become logits (metalearn.readouts); null: the method's own head")
    tta: TTAConfig = option(help="test-time copies of each image", factory=TTAConfig)
    finetune: dict = option(help="a fine-tuning readout's options as metalearn-eval's, e.g. {steps: 50, lr_grid: "
                                 "[0, 0.0001, 0.001]} for finetune_steps, finetune_lr_grid", factory=dict)


@dataclass
class TestConfig:
    episodes: int = option(600, "test episodes after training (0: none; `metalearn-eval run=...` tests later)",
                           low=0, high=1_000_000)
    seed: int = option(2, "the test episodes' seed", low=0)
    ways: list[int] = option(help="each test setting's ways (empty: [ways])", low=2, factory=list)
    shots: list[int] = option(help="each test setting's shots (empty: [shots])", low=1, factory=list)
    batch: int = option(50, "test episodes per forward pass", low=1)
    extra: list[TestSetting] = option(help="further settings, scored on the same test split", factory=list)


@schema(None, "train_schema")
@dataclass
class TrainConfig:
    dataset: Any = MISSING
    sampler: SamplerConfig = MISSING
    method: Any = MISSING
    hardware: HardwareConfig = MISSING
    task: str = option("train", "outputs/<task>/: the folder runs go under")
    seed: int = option(0, "the run's random seed", low=0)
    ways: int = option(5, "the evaluation episodes' classes (training's default too)")
    shots: int = option(1, "the evaluation episodes' support images per class")
    queries: int = option(15, "the evaluation episodes' query images per class")
    steps: int = option(2000, "meta-training steps", low=1)
    log_every: int = option(25, "steps between training log records", low=1)
    checkpoint_every: int = option(250, "steps between checkpoints", low=1)
    resume: bool = option(False, "continue the run in run_dir (or the newest unfinished one)")
    run_dir: str | None = option(None, "the run's folder (null: a new one under outputs/<task>/)")
    max_minutes: float | None = option(None, "minutes of training before a checkpointed stop (null: no limit)", low=0)
    feature_cache: bool = option(False, "an embedding method on a frozen encoder (method.backbone.freeze=all; "
                                        "simpleshot) reads its codes in training, validation and the test from a "
                                        "feature cache, each split encoded once; refused where a code can change")
    tags: list[str] = option(help="recorded in summary.json, the trackers and the report", factory=list)
    notes: str = option("", "recorded in summary.json, the trackers and the report")
    plots: str = option("auto", "the learning-curve PNG: auto (drawn after exit where safe) | foreground | background",
                        choices=("auto", "foreground", "background"))
    logger: dict[str, Any] = option(help="tracker name -> its settings (configs/logger)", factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val: ValConfig = field(default_factory=ValConfig)
    test: TestConfig = field(default_factory=TestConfig)
    init: InitConfig = field(default_factory=InitConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
