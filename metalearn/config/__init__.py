"""Typed config schemas, registered in Hydra's ConfigStore.

Every YAML file in ``configs/`` extends one of these dataclasses (through its defaults list), so a misspelled key
or a value of the wrong type fails at start-up with the key's full name; each field declares its meaning and its
range or choices beside it (`schema.option`), checked by `check_values`. One small module a part: datasets,
methods (embedding; adapting), the hardware, a training run, the evaluation protocol, and saved configs.
Torch-free: ``metalearn-train --help`` loads it.
"""

from metalearn.config.adapting import (
    MAMLConfig,
    MAMLPlusPlusConfig,
    MANNConfig,
    MetaLSTMConfig,
    ProtoMAMLConfig,
    ReptileConfig,
)
from metalearn.config.datasets import (
    WHERE_KEYS,
    AlphabetLists,
    CifarConfig,
    CubConfig,
    DatasetConfig,
    ImageFolderConfig,
    MiniImageNetConfig,
    OmniglotConfig,
    SyntheticConfig,
    data_difference,
)
from metalearn.config.evaluation import EvalConfig, EvalProtocol, TTAConfig
from metalearn.config.hardware import HardwareConfig
from metalearn.config.methods import (
    TEST_BATCH_NORMS,
    BackboneConfig,
    BaselineConfig,
    EmbeddingMethodConfig,
    MethodConfig,
)
from metalearn.config.run import AugmentConfig, SamplerConfig, TestSetting, TrainConfig
from metalearn.config.saved import complete_saved_config, migrate_saved_config
from metalearn.config.schema import SCHEMAS, check_values, config_dir, declared, option, register, schema

__all__ = [
    "SCHEMAS", "TEST_BATCH_NORMS", "WHERE_KEYS", "AlphabetLists", "AugmentConfig", "BackboneConfig", "BaselineConfig",
    "CifarConfig", "CubConfig", "DatasetConfig", "EmbeddingMethodConfig", "EvalConfig", "EvalProtocol", "HardwareConfig",
    "ImageFolderConfig", "MAMLConfig", "MAMLPlusPlusConfig", "MANNConfig", "MetaLSTMConfig", "MethodConfig",
    "MiniImageNetConfig", "OmniglotConfig", "ProtoMAMLConfig", "ReptileConfig", "SamplerConfig", "SyntheticConfig", "TTAConfig",
    "TestSetting", "TrainConfig", "check_values", "complete_saved_config", "config_dir", "data_difference", "declared",
    "migrate_saved_config", "option", "register", "schema",
]
