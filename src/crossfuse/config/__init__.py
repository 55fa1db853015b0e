"""Configuration: dataclasses, YAML loading, overrides and validation."""
from crossfuse.config.io import apply_overrides, load_config, load_yaml, parse_config, save_yaml
from crossfuse.config.schema import (
    Component,
    Config,
    DataConfig,
    BalanceConfig,
    EarlyStoppingConfig,
    HeadConfig,
    ModalityConfig,
    SplitConfig,
    TrainConfig,
)

__all__ = [
    "BalanceConfig", "Component", "Config", "DataConfig", "EarlyStoppingConfig", "HeadConfig", "ModalityConfig",
    "SplitConfig", "TrainConfig", "apply_overrides", "load_config", "load_yaml", "parse_config",
    "save_yaml",
]
