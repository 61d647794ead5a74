"""A saved support index (metalearn/support_index.py, metalearn-predict save_index= / index=): the same answers as
the fitted support set, many classes scored in chunks, data-only files, refused by another run's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_main, tiny_method
from PIL import Image

from metalearn import support_index
from metalearn.api import NamedLearner
from metalearn.errors import MetalearnError
from metalearn.support_index import SupportIndex, weights_digest

SPEC = {"image_size": 16, "channels": 1, "invert": False, "mean": 0.5, "std": 0.25}


def learner(name: str = "protonet", seed: int = 0) -> NamedLearner:
    return NamedLearner(tiny_method(name, seed=seed), SPEC)


def support(classes: int, shots: int = 2, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(classes * shots, 1, 16, 16, generator=g), [f"c{c:04d}" for c in range(classes) for _ in range(shots)]


def test_chunked_top_k_is_the_full_softmax_over_every_class(monkeypatch):
    monkeypatch.setattr(support_index, "CHUNK", 7)  # 50 classes in 8 chunks, the last one short
    lr = learner()
    images, names = support(50)
    lr.fit(images, names)
    index = lr.support_index("run", "best")
    queries = torch.rand(9, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    chunked_names, chunked = lr.top_k(queries, 5, index)
    full_names, full = lr.top_k(queries, 5)
    assert chunked_names == full_names
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        probs = lr.probabilities(queries)
    torch.testing.assert_close(chunked[:, 0], probs.max(1).values, rtol=1e-5, atol=1e-7)


def test_a_head_whose_logits_are_not_independent_scores_all_classes_at_once(monkeypatch):
    monkeypatch.setattr(support_index, "CHUNK", 3)
    lr = learner("matching")
    assert not lr.method.class_logits_independent
    lr.fit(*support(10))
    index = lr.support_index("run", "best")
    queries = torch.rand(4, 1, 16, 16)
    assert lr.top_k(queries, 3, index)[0] == lr.top_k(queries, 3)[0]


def test_saved_and_loaded_as_plain_arrays_and_refused_by_other_weights(tmp_path):
    lr = learner()
    lr.fit(*support(6))
    path = tmp_path / "index.npz"
    lr.support_index("run", "best").save(path)
    loaded = SupportIndex.load(path)
    assert loaded.classes == lr.classes and torch.equal(loaded.codes, lr._encoded.float())
    loaded.check_fits("protonet", weights_digest(lr.method), path)
    with pytest.raises(MetalearnError, match="weights differ"):
        loaded.check_fits("protonet", weights_digest(learner(seed=1).method), path)
    bad = tmp_path / "objects.npz"
    np.savez(bad, codes=np.array([object()], dtype=object))  # would need unpickling: refused, nothing runs
    with pytest.raises(MetalearnError, match="not a support index"):
        SupportIndex.load(bad)


def test_ten_thousand_classes_against_the_index_without_a_full_logit_matrix():
    lr = learner()
    lr.fit(*support(10_000, shots=1))
    index = lr.support_index("run", "best")
    queries = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    names, probs = lr.top_k(queries, 5, index)
    assert len(names[0]) == 5 and (probs[:, :-1] >= probs[:, 1:]).all() and (probs.sum(1) <= 1 + 1e-5).all()
    assert names == lr.top_k(queries, 5)[0]  # the fitted learner's full softmax agrees


def test_predict_save_index_then_index_gives_the_same_predictions(tmp_path):
    code, text = run_main("metalearn-train", "method=protonet", "debug=smoke", "test.episodes=5", "val.every=0",
                          "run_dir=run", cwd=tmp_path)
    assert code == 0, text
    rng = np.random.default_rng(0)
    for c in range(4):
        (tmp_path / "sup" / f"k{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(tmp_path / "sup" / f"k{c}" / f"{i}.png")
    code, text = run_main("metalearn-predict", "run=run", "support=sup", "save_index=idx.npz", cwd=tmp_path)
    assert code == 0 and "support index: 4 classes, 8 images" in text, text
    assert not (tmp_path / "predictions.csv").exists()  # no query: nothing classified
    code, text = run_main("metalearn-predict", "run=run", "support=sup", "query=sup/k2", "out=a.csv", cwd=tmp_path)
    assert code == 0, text
    code, text = run_main("metalearn-predict", "run=run", "index=idx.npz", "query=sup/k2", "out=b.csv", cwd=tmp_path)
    assert code == 0, text
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    code, text = run_main("metalearn-predict", "run=run", "index=idx.npz", "support=sup", "query=sup", cwd=tmp_path)
    assert code == 2 and "one of them" in text
