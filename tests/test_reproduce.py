"""metalearn-reproduce: the cards list, validate and run; a card agrees with its own figure and fails a wrong one;
missing data and a GPU card on a CPU are refused in one line; every Omniglot card's pipeline runs in smoke form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import OMNIGLOT

from metalearn.cards import all_cards, cards_dir, load_card

REQUIRED = {"protonet_omniglot_small", "meta_baseline_elastic_omniglot_small", "maml_omniglot_small_5w1s",
            "relation_omniglot_small", "matching_omniglot_small", "siamese_omniglot_small",
            "reptile_omniglot_small_5w1s", "meta_lstm_omniglot_small_5w1s", "mann_omniglot_small_5w1s",
            "meta_baseline_elastic_ensemble_chamfer"}


def reproduce(*args: str, cwd: Path) -> tuple[int, str]:
    import contextlib
    import io
    import os
    import sys

    from metalearn import reproduce as tool

    out, code = io.StringIO(), 0
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            tool.main(list(args))
    except SystemExit as e:
        code = e.code
    finally:
        os.chdir(old)
        sys.stdout.flush()
    return code, out.getvalue()


def test_every_card_is_valid_and_the_list_shows_them(tmp_path):
    cards = {c.name: c for c in all_cards()}
    assert set(cards) >= REQUIRED
    gpu = [c for c in cards.values() if c.status == "not yet reproduced here"]
    assert len(gpu) >= 5 and all(c.gpu and c.source.kind == "paper" for c in gpu)
    code, text = reproduce("list", cwd=tmp_path)
    assert code == 0 and all(name in text for name in cards), text
    assert "data missing (mini_imagenet" in text and "needs a GPU" in text


def test_a_misspelt_card_key_is_named(tmp_path, monkeypatch):
    card = yaml.safe_load((cards_dir() / "protonet_omniglot_small.yaml").read_text())
    card["expectd"] = card.pop("expected")
    (tmp_path / "protonet_omniglot_small.yaml").write_text(yaml.safe_dump(card))
    monkeypatch.setenv("METALEARN_CARDS", str(tmp_path))
    code, text = reproduce("protonet_omniglot_small", cwd=tmp_path)
    assert code == 2 and "expectd" in text, text


def tiny_card(folder: Path, expected: list[dict]) -> None:
    """A card on the built-in synthetic data: one smoke-sized ProtoNet run."""
    card = {"name": "tiny", "method": "protonet", "title": "a test's card",
            "data": {"dataset": "synthetic"}, "runs": [{"name": "main", "overrides": ["debug=smoke", "test.episodes=30"]}],
            "expected": expected, "source": {"kind": "measured", "hardware": "this test", "threads": 1}}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(card))


@pytest.mark.e2e
def test_a_card_agrees_with_its_figure_and_fails_a_wrong_one(tmp_path, monkeypatch):
    cards = tmp_path / "cards"
    cards.mkdir()
    monkeypatch.setenv("METALEARN_CARDS", str(cards))
    tiny_card(cards, [{"setting": "5w1s", "accuracy": 0.0, "ci95": 0.1, "episodes": 30}])
    code, text = reproduce("tiny", "hardware.threads=1", "run_dir=out", cwd=tmp_path)
    assert code == 1 and "tiny: FAIL: 0 of 1 settings agree" in text, text  # expected 0%: far off
    record = json.loads((tmp_path / "out/main/reproduction.json").read_text())
    row = record["settings"][0]
    assert record["verdict"] == "fail" and not row["agrees"] and row["same_episodes"]
    run = tmp_path / "out/main"
    tiny_card(cards, [{"setting": "5w1s", "accuracy": row["measured"], "ci95": row["measured_ci95"], "episodes": 30,
                       "digest": row["episodes_digest"]}])
    code, text = reproduce("tiny", "--eval-only", f"run={run}", cwd=tmp_path)
    assert code == 0 and "tiny: PASS: 1 of 1" in text, text
    assert json.loads((run / "reproduction.json").read_text())["verdict"] == "pass"
    # a deliberately wrong expected value: 3 points above, with intervals far narrower than that
    tiny_card(cards, [{"setting": "5w1s", "accuracy": row["measured"] + 3 * row["difference_ci95"] + 3, "ci95": 0.5,
                       "episodes": 30, "digest": row["episodes_digest"]}])
    code, text = reproduce("tiny", "--eval-only", f"run={run}", cwd=tmp_path)
    assert code == 1 and "DIFFERS" in text, text
    # the right figure on other episodes is no agreement either
    tiny_card(cards, [{"setting": "5w1s", "accuracy": row["measured"], "ci95": row["measured_ci95"], "episodes": 30,
                       "digest": "0000000000000000"}])
    code, text = reproduce("tiny", "--eval-only", f"run={run}", cwd=tmp_path)
    assert code == 1 and "other episodes" in text, text


def test_missing_data_and_a_gpu_card_on_a_cpu_are_one_line(tmp_path):
    import torch

    code, text = reproduce("protonet_omniglot_small", f"dataset.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert code == 2 and "needs omniglot_small in" in text and "images_background_small1.zip" in text, text
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code, text = reproduce("maml_omniglot_small_5w1s", f"dataset.root={OMNIGLOT}", cwd=tmp_path)
    if (OMNIGLOT / "images_background_small1.zip").is_file():
        assert code == 2 and "needs a CUDA GPU" in text and "--force" in text and "hours" in text, text
    code, text = reproduce("protonet_resnet12_mini_imagenet", cwd=tmp_path)
    assert code == 2 and "needs mini_imagenet" in text, text


OMNIGLOT_CARDS = sorted(n for n in REQUIRED)


@pytest.mark.e2e
@pytest.mark.parametrize("name", OMNIGLOT_CARDS)
def test_every_omniglot_cards_pipeline_runs_in_smoke_form(omniglot, tmp_path, name):
    code, text = reproduce(name, f"dataset.root={omniglot}", "debug=smoke", "run_dir=out", cwd=tmp_path)
    assert code == 0 and "the pipeline ran (debug=smoke); figures not compared" in text, text
    card = load_card(cards_dir() / f"{name}.yaml")
    record = next((tmp_path / "out").rglob("reproduction.json"))
    assert [r["setting"] for r in json.loads(record.read_text())["settings"]] == [e.setting for e in card.expected]
