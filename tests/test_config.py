"""Every config composes; a misspelled key or a wrong type fails at start-up naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from metalearn.config import config_dir

CONFIGS = Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["dataset", "sampler", "method", "hardware", "debug", "experiment"])
def test_every_option_composes(group):
    for name in options(group):
        cfg = compose(f"{group}={name}")
        OmegaConf.resolve(cfg)  # every interpolation resolves
        assert cfg.sampler.train_ways >= 2


def test_aliases_reach_the_sampler():
    cfg = compose("method=protonet", "shots=5", "ways=10", "queries=3")
    assert (cfg.shots, cfg.sampler.train_shots, cfg.sampler.train_ways, cfg.sampler.train_queries) == (5, 5, 10, 3)


def test_training_ways_can_differ_from_test_ways():
    cfg = compose("sampler.train_ways=60")
    assert cfg.sampler.train_ways == 60 and cfg.ways == 5


def test_misspelled_key_names_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose("dataset.num_clases=5")
    assert "num_clases" in str(e.value.__cause__ or e.value)


def test_wrong_type_names_the_key():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose("shots=many")
    text = str(e.value) + str(e.value.__cause__)
    assert "shots" in text and "many" in text


def test_typo_in_a_yaml_file_is_caught_by_the_schema(tmp_path):
    """A preset that sets a key the schema lacks must not be silently accepted."""
    from metalearn.config import SyntheticConfig

    with pytest.raises(ConfigKeyError):
        OmegaConf.merge(OmegaConf.structured(SyntheticConfig), {"num_clases": 3})


def test_experiment_preset_sets_its_benchmark():
    cfg = compose("experiment=protonet_omniglot_small", "dataset.root=/data")
    assert cfg.dataset.name == "omniglot" and list(cfg.test.ways) == [5, 20]
    assert cfg.sampler.train_ways == 60 and list(cfg.dataset.rotations) == ["train"]


def test_the_strided_baselinepp_preset_is_the_baselinepp_preset_on_a_strided_body():
    strided = OmegaConf.to_container(compose("experiment=baselinepp_stride_omniglot_small", "dataset.root=/data"))
    plain = OmegaConf.to_container(compose("experiment=baselinepp_omniglot_small", "dataset.root=/data"))
    assert strided["method"]["backbone"]["pool"] == "stride" and plain["method"]["backbone"]["pool"] == "max"
    strided["method"]["backbone"]["pool"] = "max"
    assert strided == plain


def test_the_elastic_protonet_preset_is_the_measured_command():
    """docs/results.md measured the ProtoNet preset with these overrides; the preset must stay that recipe."""
    preset = OmegaConf.to_container(compose("experiment=protonet_elastic_omniglot_small", "dataset.root=/data"))
    measured = OmegaConf.to_container(compose(
        "experiment=protonet_omniglot_small", "dataset.root=/data", "augment.elastic_alpha=16",
        "augment.elastic_sigma=4", "steps=9000", "schedule.step_size=3000"))
    assert preset == measured


def test_the_elastic_meta_baseline_preset_is_the_measured_command():
    """Both stages of the preset must stay the recipe docs/results.md measured with command-line overrides
    (there the width reached stage 1 by forwarding; in the preset it is in pretrain.overrides)."""
    from hydra import initialize_config_dir

    from metalearn.config import config_dir
    from metalearn.engine.stages import compose_stage

    cli = ["experiment=meta_baseline_omniglot_small", "dataset.root=/data", "method.backbone.width=96",
           "augment.elastic_alpha=16", "augment.elastic_sigma=4",
           'pretrain.overrides=["test.episodes=0","optimizer.weight_decay=0.0005",'
           '"augment.elastic_alpha=16","augment.elastic_sigma=4"]']
    preset_cli = ["experiment=meta_baseline_elastic_omniglot_small", "dataset.root=/data"]
    preset, measured = compose(*preset_cli), compose(*cli)
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        stages = [OmegaConf.to_container(compose_stage(c, o)[0]) for c, o in ((preset, preset_cli), (measured, cli))]
    assert stages[0] == stages[1] and stages[0]["method"]["backbone"]["width"] == 96
    assert stages[0]["augment"]["elastic_alpha"] == 16
    preset, measured = OmegaConf.to_container(preset), OmegaConf.to_container(measured)
    assert preset.pop("pretrain")["experiment"] == measured.pop("pretrain")["experiment"] == "baseline_omniglot_small"
    assert preset == measured


def test_the_pretrained_maml_20way_preset_is_the_measured_command():
    """The preset must stay the recipe its docs/results.md row measured: the 20-way preset plus these overrides."""
    preset = OmegaConf.to_container(compose("experiment=maml_pretrained_omniglot_small_20w1s", "dataset.root=/data"))
    measured = OmegaConf.to_container(compose(
        "experiment=maml_omniglot_small_20w1s", "dataset.root=/data", "method.backbone.name=conv4_relation",
        "init.run=outputs/train/baselinepp_conv4rel_omniglot_small", "init.only=[backbone]",
        "init.rename=[backbone:model.0]", "sampler.meta_batch=8", "steps=600", "val.every=0",
        "method.task_batching=split"))
    assert preset == measured
