"""Checking untrusted request values (from the web UI or the API) before they reach the sampler.

Every function takes the parameter's public name so the error says which field was wrong;
each raises InputError (a ValueError) with a message meant for the person who sent it.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence

MAX_TEXT = 200  # longest string accepted for a name or a weight list


class InputError(ValueError):
    """A request value is missing, of the wrong type or out of range."""


def _show(value: object) -> str:
    if value is None:  # what an emptied number box on the page sends
        return "nothing (an empty box)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def real_number(name: str, value: object, low: float, high: float) -> float:
    """A finite number in [low, high]; bools and strings are refused rather than guessed at."""
    problem = InputError(f"{name} must be a number from {low:g} to {high:g}, got {_show(value)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise problem
    try:
        number = float(value)
    except OverflowError:  # an integer too big for a float
        raise problem from None
    if not (math.isfinite(number) and low <= number <= high):
        raise problem
    return number


def whole_number(name: str, value: object, low: int, high: int) -> int:
    """An integer in [low, high]; 16.0 is accepted (sliders and JSON send floats), 16.5 is not."""
    problem = InputError(f"{name} must be a whole number from {low} to {high}, got {_show(value)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise problem
    if not isinstance(value, numbers.Integral) and not (math.isfinite(value) and float(value).is_integer()):
        raise problem
    if not low <= int(value) <= high:
        raise problem
    return int(value)


def flag(name: str, value: object) -> bool:
    """true or false, nothing else (a string such as "false" would otherwise count as true)."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {_show(value)}")
    return value


def choice(name: str, value: object, options: Sequence[str]) -> str:
    """One of ``options``, matched without regard to case; returns the option as spelled there."""
    if isinstance(value, str) and len(value) <= MAX_TEXT:
        for option in options:
            if value.strip().lower() == option.lower():
                return option
    raise InputError(f"{name} must be one of {', '.join(map(repr, options))}, got {_show(value)}")


def weight_vector(name: str, value: object, names: Sequence[str], high: float) -> list[float]:
    """One weight per context, in the model's order: "1, 0, 0.6, 0, 0" or a list of numbers."""
    expected = f"{len(names)} weights from 0 to {high:g}, one per context ({', '.join(names)})"
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise InputError(f"{name} is too long ({len(value)} characters); expected {expected}")
        parts = [p for p in re.split(r"[\s,;]+", value.strip().strip("[]()")) if p]
        try:
            value = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"{name} must be {expected}, got {_show(value)}") from None
    if not isinstance(value, Sequence) or isinstance(value, str | bytes) or len(value) != len(names):
        raise InputError(f"{name} must be {expected}, got {_show(value)}")
    return [real_number(f"{name}[{i}] ({names[i]})", w, 0.0, high) for i, w in enumerate(value)]
