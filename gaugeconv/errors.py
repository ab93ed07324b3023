"""Errors raised by gaugeconv. Every message names the offending item."""

from __future__ import annotations


class GaugeError(ValueError):
    """Base class of gaugeconv's errors about bad input."""


class RichnessError(GaugeError):
    """Richness r outside [0, 1/2] or gamma <= 0 (THEORY.md section 2)."""


class UnknownGaugeError(GaugeError):
    """A gauge name that is neither a gauge nor a named point."""


class UnsupportedOptimizerError(GaugeError):
    """An optimizer (or a piece of its state) with no transformation rule."""


class RoleError(GaugeError):
    """A parameter that the role assignment does not cover, or a role that does not fit."""


class ConversionError(GaugeError):
    """A conversion that cannot be done exactly (mixed optimizer groups, foreign schedulers...)."""
