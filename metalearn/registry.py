"""One registration per part: a method, a backbone, a dataset or a logger declares its name and how it is built where it
is written, with a decorator, and nothing else lists it.

    @METHODS.register("protonet")
    def build(cfg, ctx): ...

Why a decorator rather than Hydra's `_target_` instantiation: every part is built from its typed schema
(metalearn/config.py) plus what only the run knows (the image shape, the training ways, the training
classes), and the schemas are what Hydra composes and checks at start-up without importing torch
(`--help` and the command-line check answer in a fraction of a second). A registry looks a name up
at build time, when torch is loaded anyway, by importing the modules of its package once; a part
defined elsewhere (a test, a notebook, a user's plugin) registers the same way.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from metalearn.errors import MetalearnError


class Registry:
    def __init__(self, kind: str, key: str, packages: tuple[str, ...]):
        """kind: what the parts are (in errors); key: the config key that names one; packages: the modules
        (or packages, every module in them) whose import registers the built-in parts."""
        self.kind, self.key, self.packages = kind, key, packages
        self._builders: dict[str, Callable[..., Any]] = {}
        self._discovered = False

    def register(self, *names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
            for name in names:
                if self._builders.get(name, build) is not build:
                    raise ValueError(f"{self.kind} {name!r} is registered twice")
                self._builders[name] = build
            return build

        return decorate

    def _discover(self) -> None:
        if self._discovered:
            return
        for package in self.packages:
            module = importlib.import_module(package)
            for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
                importlib.import_module(f"{package}.{info.name}")
        self._discovered = True

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._builders)

    def builder(self, name: str) -> Callable[..., Any]:
        self._discover()
        if name not in self._builders:
            raise MetalearnError(f"{self.key}={name!r} is not a known {self.kind}; choose one of: {', '.join(self.names())}")
        return self._builders[name]


METHODS = Registry("method", "method.name", ("metalearn.methods",))
BACKBONES = Registry("backbone", "method.backbone.name", ("metalearn.backbones",))
DATASETS = Registry("dataset", "dataset.name", ("metalearn.data",))
LOGGERS = Registry("logger", "logger", ("metalearn.loggers",))
