"""The notebook API: load a finished run and classify new images in three lines.

    from metalearn import load_run
    learner = load_run("outputs/train/<date>/<run>")
    logits = learner.predict(learner.preprocess(support_images), support_labels, learner.preprocess(query_images))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metalearn.engine.restore import restore_method
from metalearn.errors import MetalearnError
from metalearn.methods import Method
from metalearn.support_index import SupportIndex
from metalearn.tasks.episodes import TaskSpec

ENCODE_CHUNK = 512  # support images encoded at once


class Learner:
    """A trained method plus the image preprocessing of the run it came from."""

    def __init__(self, method: Method, preprocess_spec: dict, device: str | torch.device = "cpu"):
        self.method, self.spec, self.device = method, preprocess_spec, torch.device(device)

    def preprocess(self, images: Sequence[Any] | torch.Tensor) -> torch.Tensor:
        """PIL images (any size) or a tensor [N, C, H, W] / [N, H, W] (uint8 0..255 or float 0..1), read as
        they would be from image files -> the normalised float batch this run's model expects."""
        size, c = self.spec["image_size"], self.spec["channels"]
        if isinstance(images, torch.Tensor):
            x = images if images.dim() == 4 else images[:, None]
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            if x.shape[1] != c:
                x = x.mean(1, keepdim=True).expand(-1, c, -1, -1) if c in (1, 3) else x
            if x.shape[-2:] != (size, size):
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        else:
            from PIL import Image

            arrays = []
            for img in images:
                img = img.convert("L" if c == 1 else "RGB").resize((size, size), Image.Resampling.LANCZOS)
                a = np.asarray(img, dtype=np.float32) / 255.0
                arrays.append(a[None] if c == 1 else a.transpose(2, 0, 1))
            x = torch.from_numpy(np.stack(arrays))
        if self.spec["invert"]:
            x = 1.0 - x
        return ((x - self.spec["mean"]) / self.spec["std"]).to(self.device)

    def predict(self, support: torch.Tensor, support_labels: torch.Tensor | Sequence[int],
                query: torch.Tensor) -> torch.Tensor:
        """Logits [Q, ways] for one task; support labels are 0..ways-1."""
        labels = torch.as_tensor(support_labels, dtype=torch.long, device=self.device)
        ways = int(labels.max()) + 1
        if sorted(set(labels.tolist())) != list(range(ways)):
            raise MetalearnError(f"support labels must cover 0..ways-1 with no gaps, got {sorted(set(labels.tolist()))}")
        self.method.check_task(TaskSpec(ways, 1, 1))
        grad = torch.enable_grad() if getattr(self.method, "adapts_at_test", False) else torch.no_grad()
        with grad:
            return self.method.predict(support.to(self.device), labels, query.to(self.device), ways)


class NamedLearner(Learner):
    """A Learner that knows its task's class names: fit a support set once, then classify any number of images.

        learner = load_run(run)
        learner.fit(support_images, ["cat", "cat", "dog", "dog"])   # one name per image
        names, probs = learner.classify(query_images)               # each query's class and its probability
        codes = learner.embed(images)                               # an embedding method's codes
    """

    support: torch.Tensor | None = None

    def fit(self, images: Sequence[Any] | torch.Tensor, class_names: Sequence[str]) -> NamedLearner:
        """Take a support set: images (PIL or a tensor, as preprocess takes) and one class name per image."""
        if len(images) != len(class_names):
            raise MetalearnError(f"fit got {len(images)} images and {len(class_names)} class names; give one name per image")
        self.classes = sorted(set(class_names))
        if len(self.classes) < 2:
            raise MetalearnError(f"the support set has {len(self.classes)} class ({', '.join(self.classes)}); "
                                 f"few-shot classification needs at least 2")
        index = {c: i for i, c in enumerate(self.classes)}
        self.support = self.preprocess(images)
        self.labels = torch.tensor([index[c] for c in class_names], device=self.device)
        self.method.check_task(TaskSpec(len(self.classes), 1, 1))
        self._encoded = None
        if self._fixed_encoder():  # encode the support set once, in chunks (10,000 images at once: gigabytes)
            with torch.no_grad():
                self._encoded = torch.cat([self.method.encode(self.support[i:i + ENCODE_CHUNK])
                                           for i in range(0, len(self.support), ENCODE_CHUNK)])
        return self

    def _fixed_encoder(self) -> bool:
        """An embedding method whose code of an image does not depend on the other images of the task
        (batch-norm on running statistics, or none): its support codes can be computed once."""
        from metalearn.methods.base import EmbeddingMethod

        return isinstance(self.method, EmbeddingMethod) and self.method.encodes_each_image_alone()

    def probabilities(self, images: Sequence[Any] | torch.Tensor) -> torch.Tensor:
        """[N, classes] probabilities (softmax of the method's logits), classes in `self.classes` order."""
        if self.support is None:
            raise MetalearnError("call fit(support_images, class_names) before classify or probabilities")
        query = self.preprocess(images)
        ways = len(self.classes)
        with torch.no_grad():
            if self._encoded is not None:
                logits = self.method.head(self._encoded[None], self.labels[None], self.method.encode(query)[None],
                                          ways)[0]
            else:
                logits = self.predict(self.support, self.labels, query)
        return torch.softmax(logits.float(), dim=-1).cpu()

    def classify(self, images: Sequence[Any] | torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Each image's most probable class name and that probability."""
        probs = self.probabilities(images)
        best = probs.argmax(1)
        return [self.classes[i] for i in best.tolist()], probs.gather(1, best[:, None])[:, 0]

    def support_index(self, run: str | Path, checkpoint: str) -> SupportIndex:
        """The fitted support set's codes and class names, to save (metalearn.support_index)."""
        from metalearn.support_index import FORMAT, SupportIndex, weights_digest

        if self.support is None:
            raise MetalearnError("call fit(support_images, class_names) before support_index")
        if self._encoded is None:
            raise MetalearnError(f"{self.method.name} has no fixed code for a support image (it adapts to each task, or "
                                 f"its batch norms use the task's statistics), so its support set cannot be saved as "
                                 f"an index; classify with support= instead")
        made_by = {"format": FORMAT, "method": self.method.name, "run": str(run), "checkpoint": checkpoint,
                   "weights": weights_digest(self.method), "preprocess": self.spec}
        return SupportIndex(self._encoded.float().cpu(), self.labels.cpu(), list(self.classes), made_by)

    def top_k(self, images: Sequence[Any] | torch.Tensor, k: int,
              index: SupportIndex | None = None) -> tuple[list[list[str]], torch.Tensor]:
        """Each image's k most probable class names and their probabilities, against `index` (a saved support
        set) or the fitted one; many classes are scored in chunks where the method allows (support_index.top_k)."""
        from metalearn.support_index import top_k

        if index is None:
            probs = self.probabilities(images)
            top = torch.topk(probs, min(k, probs.shape[1]), dim=1)
            return [[self.classes[i] for i in row] for row in top.indices.tolist()], top.values
        with torch.no_grad():
            zq = self.method.encode(self.preprocess(images))
            ids, probs = top_k(self.method, index, zq, k)
        return [[index.classes[i] for i in row] for row in ids.tolist()], probs

    def embed(self, images: Sequence[Any] | torch.Tensor) -> torch.Tensor:
        """The codes an embedding method compares ([N, D]); methods that adapt at test time have none."""
        from metalearn.methods.base import EmbeddingMethod

        if not isinstance(self.method, EmbeddingMethod):
            raise MetalearnError(f"{self.method.name} has no fixed embedding (it adapts at test time); embed is for "
                                 f"embedding methods (protonet, matching, relation, siamese, baseline, baselinepp, ...)")
        with torch.no_grad():
            return self.method.encode(self.preprocess(images)).cpu()


def load_run(run: str | Path, checkpoint: str = "best", device: str = "cpu") -> NamedLearner:
    method, ckpt = restore_method(run, checkpoint, device)
    return NamedLearner(method, ckpt["preprocess"], device)
