"""Gauge conversion of checkpoints on disk: safetensors folders and Trainer checkpoints."""

from .folder import ConvertReport, convert_checkpoint
from .safetensors_io import CheckpointError

__all__ = ["convert_checkpoint", "ConvertReport", "CheckpointError"]
