"""Readouts: how a trained embedding method's codes of a test task become its query logits, in place of the
method's own head (`metalearn-eval readout=<name>`, or `readout:` in a `test.extra` setting).

A readout is registered like a method: one module that subclasses Readout and registers it,

    @READOUTS.register("mine")
    class Mine(Readout):
        def logits(self, method, zs, support_labels, zq, ways): ...

and the evaluation loop (metalearn.engine.evaluate) never asks which one it holds. Built in: `tim` (TIM's
transductive inference on any encoder's codes), `chamfer` (test-time copies matched to copies) and `finetune`
(a linear classifier trained on each task's support codes).
"""

from __future__ import annotations

from typing import Any

import torch

from metalearn.errors import MetalearnError
from metalearn.methods.base import EmbeddingMethod, Method
from metalearn.registry import Registry

READOUTS = Registry("readout", "readout", ("metalearn.readouts",))


class Readout:
    """Turns codes into logits. `keeps_copies`: it takes every test-time copy's code ([N, copies, ...]) instead of
    their mean; `transductive`: a query's logits depend on the task's other queries."""

    name = "readout"
    keeps_copies = False
    transductive = False

    @property
    def label(self) -> str:
        """How the printed result line names it (its options where they change what it does)."""
        return self.name

    @property
    def file_tag(self) -> str:
        """Its part of a result's file name (a readout that keeps copies is named in the copies' part instead)."""
        return f"_readout-{self.name}"

    def record(self) -> dict:
        """What a result records of it (a readout that keeps copies is named in the copies' record instead)."""
        return {} if self.keeps_copies else {"readout": self.name}

    def configure(self, protocol: Any) -> None:
        """Read this readout's options from the evaluation protocol (metalearn.config.EvalProtocol); most have none."""

    def check(self, method: Method, copies: int) -> None:
        """Refuse, before any image is encoded, a method (or a number of test-time copies) it cannot read."""
        if not isinstance(method, EmbeddingMethod):
            raise MetalearnError(f"readout={self.name} classifies an embedding method's codes of single images; "
                                 f"{type(method).__name__} does not encode each image alone; drop readout=")
        if self.keeps_copies and copies < 2:
            raise MetalearnError(f"readout={self.name} matches each image's test-time copies, and tta.copies={copies} "
                                 f"makes none; add tta.copies=96 (or drop readout=)")

    needs_images = False  # True: it adapts the encoder on each task's images (image_logits), not codes

    def image_logits(self, method: EmbeddingMethod, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor,
                     ways: int) -> torch.Tensor:
        """One task's support images [S, ...], labels [S] and query images [Q, ...] -> query logits [Q, ways]."""
        raise NotImplementedError

    def logits(self, method: EmbeddingMethod, zs: torch.Tensor, support_labels: torch.Tensor, zq: torch.Tensor,
               ways: int) -> torch.Tensor:
        """Support codes [T, S, ...], labels [T, S], query codes [T, Q, ...] -> query logits [T, Q, ways]."""
        raise NotImplementedError


def build_readout(name: str | None, protocol: Any = None) -> Readout | None:
    """The readout `readout=<name>` names (None: the method's own head), or one line listing the known ones; given
    the protocol, a readout with options of its own reads them from it (Readout.configure)."""
    if name is None:
        return None
    readout = READOUTS.builder(name)()
    readout.name = name
    if protocol is not None:
        readout.configure(protocol)
    return readout


__all__ = ["READOUTS", "Readout", "build_readout"]
