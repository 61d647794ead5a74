"""`--help` explains every key where it is declared: each line of a command's == Keys == section comes from the
schema's option(help=...) (metalearn/config/), so a key without a meaning, or a composed key with no line, fails."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from metalearn.config import SCHEMAS, config_dir
from metalearn.help import MISSING_MEANING, config_groups, help_text

OPTIONS = config_groups(Path(config_dir()))
PARTS = [(g, o) for g in ("method", "dataset", "sampler", "hardware") for o in OPTIONS[g]]


def key_section(text: str) -> dict[str, str]:
    body = text.split("== Keys ==", 1)[1].split("\n\n", 2)[1]
    out = {}
    for line in body.splitlines():
        key, _, rest = line.strip().partition("=")
        out[key] = rest
    return out


def leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1]


@pytest.mark.parametrize(("group", "option"), PARTS, ids=[f"{g}={o}" for g, o in PARTS])
def test_every_key_of_every_part_has_a_meaning_in_help(group, option):
    from hydra import compose, initialize_config_dir

    text = help_text("metalearn-train", "train", [f"{group}={option}"], "intro")
    keys = key_section(text)
    assert MISSING_MEANING not in text, [k for k, v in keys.items() if MISSING_MEANING in v]
    schema = SCHEMAS[group].get(option)
    if schema is not None:  # every declared field of the part is a line (nested ones by their dotted key)
        from metalearn.config.schema import declared

        for key, f in declared(schema):
            if f.metadata.get("help") or key == "name":
                assert any(k == f"{group}.{key}" or k.startswith(f"{group}.{key}.") for k in keys), key
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        composed = OmegaConf.to_container(compose(config_name="train", overrides=[f"{group}={option}"]))
    for leaf in leaves(composed):  # and nothing composed goes unexplained
        assert any(leaf == k or leaf.startswith(k + ".") for k in keys), leaf


def test_help_of_maml_explains_its_keys_and_the_augment_keys():
    text = help_text("metalearn-train", "train", ["method=maml"], "intro")
    keys = key_section(text)
    assert keys["method.inner_lr"].startswith("0.4  [>= 0]  the inner-loop learning rate")
    assert "loop (task by task)" in keys["method.task_batching"]
    assert "LSLR" in keys["method.plus.per_layer_per_step_lr"]
    assert "shear" in keys["augment.shear"] and "width to height" in keys["augment.aspect"]  # trap: were unlisted
    assert "Torch is imported" not in text and "cards:" not in text


def test_eval_help_explains_every_key():
    text = help_text("metalearn-eval", "eval", [], "intro")
    assert MISSING_MEANING not in text and "readout=" in text and "  run=" in text


@pytest.mark.parametrize("tool", ["metalearn-predict", "metalearn-export", "metalearn-report"])
def test_the_other_tools_help_gives_each_key_its_default_and_meaning(tool):
    from conftest import run_main

    code, text = run_main(tool, "--help", cwd=Path.cwd())
    assert code == 0, text
    if tool == "metalearn-report":
        assert "default: outputs/report" in " ".join(text.split())
    else:
        assert "== Keys ==" in text and "checkpoint=best  best | last" in text and "run=(required)" in text


def test_gitignore_lists_the_venv_the_readme_creates():
    """Trap (issue 60): .gitignore listed .venv-ci/ but not the .venv the README tells users to create."""
    lines = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
    assert ".venv/" in lines or ".venv" in lines
