"""Reading a JSON file a user hands us: one-line errors naming the file, nothing executed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import GaugeError

__all__ = ["read_json"]


def read_json(path: str | Path, what: str, error: type[GaugeError] = GaugeError) -> Any:
    """The parsed content of ``path``; ``what`` names it in the error (raised as ``error``).

    Not UTF-8, not JSON, or nested past Python's recursion limit: one line each. OSError (a
    missing or unreadable file) is left to the caller, which knows what the file is for.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{what} is not valid JSON ({err})") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
