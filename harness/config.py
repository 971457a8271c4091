"""Re-export of :mod:`sopmoe_models.config`, where the config schema, loading and validation live.

The config is the ground floor: ``sopmoe_models``, ``training`` and ``tasks`` import it from there (never from
``harness``); this module keeps ``from harness.config import load_config`` working for the CLI and old callers.
"""

from sopmoe_models.config import (  # noqa: F401
    DEFAULT_CONFIG,
    DEVICE,
    NOT_PATHS,
    PATH_KEYS,
    BtmConfig,
    ConfigError,
    DataConfig,
    DistillConfig,
    Dtype,
    EnsembleConfig,
    EvaluationConfig,
    ExpertConfig,
    GenerationConfig,
    LoraConfig,
    MergeConfig,
    ModelsConfig,
    SopmoeConfig,
    load_config,
)

__all__ = [
    "DEFAULT_CONFIG", "DEVICE", "NOT_PATHS", "PATH_KEYS", "BtmConfig", "ConfigError", "DataConfig", "DistillConfig", "Dtype",
    "EnsembleConfig", "EvaluationConfig", "ExpertConfig", "GenerationConfig", "LoraConfig", "MergeConfig",
    "ModelsConfig", "SopmoeConfig", "load_config",
]
