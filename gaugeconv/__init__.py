"""gaugeconv: richness-r parameterizations of wide networks and exact conversion between gauges.

See THEORY.md (shipped in the README) for the formulas; every public conversion is exact in the
sense of its section 4 and tested numerically.
"""

from .convert import convert
from .errors import (
    ConversionError,
    GaugeError,
    RichnessError,
    RoleError,
    UnknownGaugeError,
    UnsupportedOptimizerError,
)
from .gauges import NAMED_POINTS, STP, Custom, Gauge, MuP, Rescaling, get_gauge, resolve_point
from .mlp import ReferenceMLP, build_mlp
from .model import GaugedModel, attach
from .optim_rules import DEFAULT_REGISTRY, OptimizerRegistry, OptimizerRule
from .plan import Parameterization, TensorPlan
from .richness import Family, Richness, Role, Target, target
from .spec import TensorSpec
from .verify import VerifyConfig, VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "ConversionError", "GaugeError", "RichnessError", "RoleError", "UnknownGaugeError",
    "UnsupportedOptimizerError", "NAMED_POINTS", "STP", "Custom", "Gauge", "MuP", "Rescaling",
    "get_gauge", "resolve_point", "ReferenceMLP", "build_mlp", "GaugedModel", "attach",
    "DEFAULT_REGISTRY", "OptimizerRegistry", "OptimizerRule", "Parameterization", "TensorPlan",
    "Family", "Richness", "Role", "Target", "target", "TensorSpec", "VerifyConfig",
    "VerifyReport", "verify", "convert",
]
