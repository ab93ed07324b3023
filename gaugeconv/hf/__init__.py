"""Hugging Face integration: gauges for any PreTrainedModel, persisted in config.json.

Every name is imported on first use: ``GaugeConfig`` needs neither torch nor transformers, the
model functions need torch, the Trainer integration imports transformers.Trainer (and with it
peft, accelerate...). So ``gaugeconv convert`` and ``gaugeconv roles`` pay only for what they use.
"""

from .._lazy import lazy_attributes, shadow_submodules

_WHERE = {
    "GaugeConfig": ".config",
    **dict.fromkeys(["apply_gauge", "convert_gauge", "describe_roles", "from_pretrained",
                     "gauge_config_of", "get_gauged", "initialize", "materialize", "to_plain",
                     "form_of", "HFReplanner"], ".model"),
    "infer_specs": ".roles",
    **dict.fromkeys(["GaugeOptimizerFactory", "GaugeTrainer", "optimizer_cls_and_kwargs"],
                    ".trainer"),
    "merge_and_unload": ".peft",
}

__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
shadow_submodules(__name__, _WHERE)  # none today; any NAME in .NAME later
