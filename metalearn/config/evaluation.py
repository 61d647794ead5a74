"""What decides which episodes are scored and how: the EvalProtocol, one value that metalearn-eval, testing during
training (test.extra), ensembles and the report share. It names its result file, says its one line, and its
ranges are declared beside its fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metalearn.config.hardware import HardwareConfig
from metalearn.config.schema import option, schema

GROUPS = ("alphabet", "superclass", "folder")  # what a dataset groups its classes by (episodes `within` one)


@dataclass
class TTAConfig:
    """Test-time copies (metalearn-eval tta.copies=8): each image's code is the mean over `copies` random affine
    copies of it, the first the image itself (a readout that keeps copies, chamfer, compares them one by one).
    Inductive: no image's code depends on another's."""

    copies: int = option(1, "the copies of each image whose codes are averaged (1: none)", low=1)
    rotate: float = option(10.0, "the copies' largest rotation, in degrees", low=0, high=180)
    scale: float = option(0.1, "the copies' largest relative change of scale", low=0, high=0.99)
    shift: float = option(0.1, "the copies' largest shift, as a fraction of the image side", low=0, high=1)
    shear: float = option(0.0, "the copies' largest slant (x += shear * y); 0: off", low=0, high=1)
    aspect: float = option(0.0, "the copies' largest change of width to height; 0: off", low=0, high=0.99)
    elastic_alpha: float = option(0.0, "the copies' elastic distortion in pixels (0: affine only)", low=0, high=1000)
    elastic_sigma: float = option(4.0, "the copies' elastic displacement field's smoothing, in pixels", low=1e-12,
                                  high=100)
    seed: int = option(0, "the copies' random transforms", low=0)

    def record(self, readout: Any = None) -> dict:
        """As results record it: the fields, and how copies are compared (`match`: mean, or a readout that keeps
        each copy)."""
        from dataclasses import asdict

        keeps = readout is not None and readout.keeps_copies
        return {**asdict(self), "match": readout.name if keeps else "mean"}


@dataclass
class EvalProtocol:
    """Everything that decides which episodes are scored and how; `batch` and where things live are not part of it."""

    split: str = option("test", "the split the episodes come from")
    ways: int | None = option(None, "null: the run's own", low=1)
    shots: int | None = option(None, "null: the run's own", low=1)
    queries: int | None = option(None, "null: the run's own", low=1)
    episodes: int = option(600, "the episodes scored", low=1, high=1_000_000)
    seed: int = option(2, "the episodes' seed", low=0)
    within: str | None = option(None, "each episode's classes from one group", choices=GROUPS)
    disjoint_drawers: bool = option(False, "support and query images by different drawers (Omniglot)")
    checkpoint: str = option("best", "the checkpoint scored: best (by validation) | last", choices=("best", "last"))
    test_batch_norm: str | None = option(None, "an embedding method's test-time batch-norm statistics; null: the run's "
                                         "own", choices=("running", "support", "transductive"))
    inner_steps: int | None = option(None, "test-time adaptation steps (MAML family, meta_lstm); null: the run's own",
                                     low=1)
    tta: TTAConfig = option(help="test-time copies of each image (embedding methods)", factory=TTAConfig)
    readout: str | None = option(None, "how codes become logits: a registered readout (metalearn.readouts: tim, "
                                 "chamfer, finetune, ...); null: the method's own head")
    finetune_steps: int = option(100, "readout=finetune: gradient steps of the linear classifier on each task's "
                                      "support codes", low=1, high=100_000)
    finetune_lr: float = option(0.01, "readout=finetune: its learning rate (SGD, momentum 0.9)", low=0)
    finetune_lr_grid: list[float] = option(help="readout=pmf_finetune: learning rates to choose finetune_lr from, on "
                                                "finetune_val_episodes validation episodes (empty: finetune_lr)",
                                           low=0, factory=list)
    finetune_val_episodes: int = option(50, "validation episodes that choose from finetune_lr_grid", low=1)
    finetune_backbone: bool = option(False, "readout=finetune: fine-tune a copy of the encoder too, with the classifier, "
                                            "on each task's support images (BSCD-FSL's fine-tuning baseline)")

    def file_name(self, tag: str, queries: int, checkpoint: str, readout: Any = None, members: str = "") -> str:
        """The result's file name holds everything that decides which episodes are scored and how, so two protocols
        never share a file and the same protocol always writes the same one. `tag`: the task's (TaskSpec.tag)."""
        bn = "" if self.test_batch_norm is None else f"_bn-{self.test_batch_norm}"
        steps = "" if self.inner_steps is None else f"_steps-{self.inner_steps}"
        return (f"{self.split}_{tag}_q{queries}_e{self.episodes}_seed{self.seed}_{checkpoint}{bn}{steps}"
                f"{self.tta_tag(readout)}{'' if readout is None or readout.keeps_copies else readout.file_tag}{members}")

    def tta_tag(self, readout: Any = None) -> str:
        t = self.tta
        if t.copies <= 1:
            return ""
        elastic = f"-e{t.elastic_alpha:g}-{t.elastic_sigma:g}" if t.elastic_alpha > 0 else ""
        hand = f"-h{t.shear:g}-{t.aspect:g}" if t.shear or t.aspect else ""
        match = f"-{readout.name}" if readout is not None and readout.keeps_copies else ""
        return f"_tta-{t.copies}-r{t.rotate:g}-s{t.scale:g}-t{t.shift:g}{hand}{elastic}-seed{t.seed}{match}"

    def describe(self, readout: Any = None) -> str:
        """The protocol's options in the printed line (beside the accuracy)."""
        t = self.tta
        return (f"{'' if self.inner_steps is None else f', {self.inner_steps} inner steps'}"
                f"{'' if t.copies <= 1 else f', test-time augmentation: {t.copies} copies'}"
                f"{'' if readout is None else f', readout: {readout.label}'}")


@schema(None, "eval_schema")
@dataclass
class EvalConfig(EvalProtocol):
    """metalearn-eval: the protocol, plus which runs and where their data and hardware are."""

    run: str | None = option(None, "a finished run's folder")
    ensemble: list[str] = option(help="further run folders: score run and these as one ensemble", factory=list)
    batch: int = option(50, "episodes per forward pass (groups episodes; not part of the protocol)", low=1)
    paired: bool = option(False, "also score the same episodes without copies or readout, and print the paired gain")
    variable: bool = option(False, "Meta-Dataset's variable episodes (5-50 ways, imbalanced shots up to 500 support "
                                   "images, balanced queries) in place of fixed N-way K-shot ones")
    test_dataset: str | None = option(None, "score the run on another dataset's test split (cross-domain): a "
                                            "dataset option's name (cub, omniglot, image_folder ...), typed as "
                                            "dataset=NAME; null: the run's own")
    feature_cache: bool = option(False, "keep the encoder's codes of the split on disk and read them on later "
                                        "evaluations (an embedding method with a fixed code per image)")
    feature_cache_dtype: str = option("float32", "the cached codes' type: float32 (results as without the cache) | "
                                                 "float16 (half the file; codes rounded)", choices=("float32", "float16"))
    dataset_root: str | None = option(None, "where the run's data is now, when it moved since training; with dataset=, "
                                            "where that dataset is (null: its default root)")
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
