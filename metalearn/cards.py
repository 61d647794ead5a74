"""Reproduction cards as files: where they live (configs/cards/, or $METALEARN_CARDS), loading one against its
schema (metalearn/config/cards.py), and how a card's source reads in one line. `metalearn-reproduce` reruns
them; the record (metalearn/record.py) shows their figures in the docs' tables."""

from __future__ import annotations

import os
import re
from pathlib import Path

from metalearn.errors import MetalearnError

SETTING = re.compile(r"^(?P<ways>\d+)w(?P<shots>\d+)s(_within-(?P<within>[a-z]+))?(?P<drawers>_drawers)?$")


def cards_dir() -> Path:
    from metalearn.config import config_dir

    return Path(os.environ.get("METALEARN_CARDS", Path(config_dir()) / "cards"))

def load_card(path: Path):
    """A card file, checked against its schema: a misspelt key or a wrong type is one line naming it."""
    from omegaconf import OmegaConf

    from metalearn.config import check_values
    from metalearn.config.cards import Card

    try:
        merged = OmegaConf.merge(OmegaConf.structured(Card), OmegaConf.load(path))
        card = OmegaConf.to_object(merged)
    except Exception as e:  # noqa: BLE001 - OmegaConf raises several kinds; each is one line naming the key
        raise MetalearnError(f"card {path}: {' '.join(str(e).split())[:300]}") from None
    check_values(merged, Card)
    if card.name != path.stem:
        raise MetalearnError(f"card {path}: name={card.name} differs from the file's name {path.stem}")
    for s in card.expected:
        if not SETTING.match(s.setting):
            raise MetalearnError(f"card {path}: setting {s.setting!r} is not a test setting's tag (5w1s, "
                                 f"20w1s_within-alphabet_drawers, ...)")
    return card

def all_cards() -> list:
    return [load_card(p) for p in sorted(cards_dir().glob("*.yaml"))]

def find_card(name: str):
    path = cards_dir() / f"{name}.yaml"
    if not path.is_file():
        names = [p.stem for p in sorted(cards_dir().glob("*.yaml"))]
        raise MetalearnError(f"no card named {name!r}; the cards are: {', '.join(names)} (metalearn-reproduce list)")
    return load_card(path)

def format_source(card) -> str:
    s = card.source
    if s.kind == "paper":
        return f"paper: {s.authors} {s.year}, {s.table}"
    parts = [s.date, s.hardware, f"{s.threads} thread(s)" if s.threads else None, s.precision,
             f"{s.wall_minutes:g} min" if s.wall_minutes is not None else None]
    return "measured: " + ", ".join(p for p in parts if p)
