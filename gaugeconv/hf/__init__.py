"""Hugging Face integration: gauges for any PreTrainedModel, persisted in config.json."""

from .config import GaugeConfig
from .model import (
    apply_gauge,
    convert_gauge,
    describe_roles,
    from_pretrained,
    gauge_config_of,
    get_gauged,
    initialize,
)
from .peft import merge_and_unload
from .roles import infer_specs
from .trainer import GaugeOptimizerFactory, GaugeTrainer, optimizer_cls_and_kwargs

__all__ = [
    "GaugeConfig", "apply_gauge", "convert_gauge", "describe_roles", "from_pretrained",
    "gauge_config_of", "get_gauged", "initialize", "infer_specs", "GaugeOptimizerFactory",
    "GaugeTrainer", "optimizer_cls_and_kwargs", "merge_and_unload",
]
