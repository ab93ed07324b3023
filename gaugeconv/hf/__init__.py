"""Hugging Face integration: gauges for any PreTrainedModel, persisted in config.json."""

from .config import GaugeConfig
from .model import (
    apply_gauge,
    convert_gauge,
    describe_roles,
    form_of,
    from_pretrained,
    gauge_config_of,
    get_gauged,
    initialize,
    materialize,
    to_plain,
)
from .peft import merge_and_unload
from .roles import infer_specs

# The Trainer integration imports transformers.Trainer (and with it peft, accelerate...): ~70%
# of the import time of this package. It is loaded on first use, so that `gaugeconv convert`
# and `gaugeconv roles` do not pay for it.
_TRAINER_NAMES = ("GaugeOptimizerFactory", "GaugeTrainer", "optimizer_cls_and_kwargs")


def __getattr__(name: str):
    if name in _TRAINER_NAMES:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "GaugeConfig", "apply_gauge", "convert_gauge", "describe_roles", "from_pretrained",
    "gauge_config_of", "get_gauged", "initialize", "infer_specs", "materialize", "to_plain",
    "form_of", "GaugeOptimizerFactory",
    "GaugeTrainer", "optimizer_cls_and_kwargs", "merge_and_unload",
]
