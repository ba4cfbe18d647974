"""Typed configuration, all in one place: the single source of truth for YAML keys, defaults and
their meaning. ``run``: a run (data, strategy, training, evaluation) and the data compose file;
``study``: study files (grid, claims, predictions); ``executor``: where runs execute and what one
needs. Every config file is YAML mapped onto these pydantic models; a validation error names the
file, the field path, the value given and what was expected (``load_config``)."""

from sftmix.config.executor import ExecutorConfig, Resources, minutes
from sftmix.config.run import (
                               CleanConfig,
                               CurveConfig,
                               DataConfig,
                               EvalConfig,
                               HeldoutConfig,
                               JudgeConfig,
                               KernelSettings,
                               LoraConfig,
                               MixtureConfig,
                               PartConfig,
                               RunConfig,
                               SourceConfig,
                               StageConfig,
                               StrategyConfig,
                               Strict,
                               TrainSettings,
                               apply_overrides,
                               differing_fields,
                               format_validation_error,
                               get_path,
                               load_config,
                               pop_path,
                               read_yaml,
                               validate,
)
from sftmix.config.study import Claim, Prediction, StudyConfig

__all__ = ["Claim", "CleanConfig", "CurveConfig", "DataConfig", "EvalConfig", "HeldoutConfig", "ExecutorConfig", "JudgeConfig", "KernelSettings",
           "LoraConfig",
           "MixtureConfig", "PartConfig", "Prediction", "Resources", "RunConfig", "SourceConfig", "StageConfig", "StrategyConfig",
           "Strict", "StudyConfig", "TrainSettings", "apply_overrides", "differing_fields", "format_validation_error", "get_path", "load_config", "minutes", "pop_path",
           "read_yaml", "validate"]
