"""A reproduction card: one published figure as data (configs/cards/<name>.yaml), what metalearn-reproduce reruns
and checks. Validated like every config: a misspelt key or a wrong type is refused with its name."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from metalearn.config.schema import option


@dataclass
class CardRun:
    """One training run of the card's pipeline: a preset and overrides; `name` lets a later run's overrides name
    this run's folder as {name} (a pre-trained body another preset starts from), and an ensemble's members."""

    name: str = option("main", "the run's name in the card's folder (and as {name} in later overrides)")
    preset: str | None = option(None, "a preset of configs/experiment/ (null: the default config and the overrides)")
    overrides: list[str] = option(help="metalearn-train overrides after the preset", factory=list)


@dataclass
class CardSetting:
    """One expected figure: a test setting's accuracy with its 95% interval, on a fixed list of episodes."""

    setting: str = option(MISSING, "the test setting's tag (5w1s, 20w1s, 20w1s_within-alphabet_drawers)")
    accuracy: float = option(MISSING, "expected accuracy, in percent", low=0, high=100)
    ci95: float = option(MISSING, "its 95% interval's half-width, in percent", low=0, high=100)
    episodes: int = option(600, "episodes scored", low=1)
    digest: str | None = option(None, "the episode list's digest, where measured here (a rerun on other episodes fails)")


@dataclass
class CardSource:
    """Where the figure comes from: measured here (date, hardware, threads, precision, wall time) or a paper."""

    kind: str = option(MISSING, "measured | paper", choices=("measured", "paper"))
    date: str | None = option(None, "when it was measured")
    hardware: str | None = option(None, "what it ran on (a paper card: what it needs)")
    threads: int | None = option(None, "CPU threads it ran on (the numbers are reproducible per thread count)", low=1)
    precision: str = option("fp32", "fp32 | bf16")
    wall_minutes: float | None = option(None, "wall time of the whole pipeline, alone on the hardware named", low=0)
    authors: str | None = option(None, "a paper's authors")
    year: int | None = option(None, "a paper's year")
    table: str | None = option(None, "where in the paper (table, row)")
    note: str = option("", "anything a reader of the figure must know")


@dataclass
class CardData:
    """The data the card reads, where it is looked for, and how to get it."""

    dataset: str = option(MISSING, "the dataset config the presets use (omniglot_small, mini_imagenet, ...)")
    root: str | None = option(None, "where it is looked for: a path (relative: to the working folder, then the repo's "
                              "parent); dataset.root= on the command line overrides it; null: built in (synthetic)")
    files: list[str] = option(help="files that must be in the root", factory=list)
    get: str = option("", "how to get it, in one line")


@dataclass
class Card:
    name: str = option(MISSING, "the card's name (its file's name)")
    method: str = option(MISSING, "the method the figure is of")
    title: str = option("", "one line: what the figure is")
    inductive: bool = option(True, "false: a query's class depends on the other queries (transductive)")
    gpu: bool = option(False, "the figure needs a CUDA GPU; on a CPU the card refuses unless --force")
    cpu_estimate: str = option("", "how long the pipeline would take on this project's 2-core CPU")
    status: str = option("reproduced", "reproduced (measured here) | not yet reproduced here",
                         choices=("reproduced", "not yet reproduced here"))
    data: CardData = field(default_factory=CardData)
    runs: list[CardRun] = field(default_factory=list)
    # metalearn-eval options scoring the runs as one (run= the first, ensemble= the rest); empty: each setting is
    # read from the first run's own test after training
    evaluate: list[str] = option(help="metalearn-eval options scoring the runs (an ensemble, copies, a readout)",
                                 factory=list)
    expected: list[CardSetting] = field(default_factory=list)
    source: CardSource = field(default_factory=CardSource)
