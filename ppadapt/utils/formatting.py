"""Byte sizes as people read them, in one place for every tool.

Each tool keeps the format its users know through the arguments, not through a
formatter of its own::

    format_size(n, ("kB", "MB", "GB"), {"kB": 1, "MB": 2, "GB": 2})  # report.py: '858.8 kB', '345.23 MB'
    format_size(n, ("KiB", "MiB"))             # export.py: '0.9 KiB', '1.4 MiB'
    format_size(n, ("B", "KiB", "MiB"))        # bench.py: '512 B', '7.5 KiB', '10.8 MiB'
    format_size(n, ("MiB",), decimals=2)       # the parameter summary: '4.57 MiB'
    size_in(n, "MiB")                          # a table column headed 'MiB': '975.9'
"""
from __future__ import annotations

from typing import Mapping, Sequence

UNITS = {"B": 1,
         "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40,
         "kB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12}
BINARY = ("B", "KiB", "MiB", "GiB", "TiB")
DECIMAL = ("B", "kB", "MB", "GB", "TB")


def size_in(nbytes: float, unit: str, decimals: int = 1) -> str:
    """``nbytes`` as a number of ``unit`` without the unit's name: ``size_in(3 << 20, "MiB") == "3.0"``."""
    return f"{nbytes / UNITS[unit]:.{decimals}f}"


def format_size(nbytes: float | None, units: Sequence[str] = BINARY,
                decimals: int | Mapping[str, int] = 1, missing: str = "-") -> str:
    """``nbytes`` in the largest of ``units`` (smallest first) that it reaches, the first
    unit when it reaches none, with the unit's name: ``"1.4 MiB"``.

    ``decimals`` is one count for every unit, or a count per unit name; whole bytes
    (unit ``B``) have none. ``None`` gives ``missing``.
    """
    if nbytes is None:
        return missing
    unit = units[0]
    for candidate in units[1:]:
        if nbytes >= UNITS[candidate]:
            unit = candidate
    if unit == "B":
        return f"{nbytes:.0f} B"
    places = decimals if isinstance(decimals, int) else decimals[unit]
    return f"{size_in(nbytes, unit, places)} {unit}"
