"""The rule of one parameter: its type, its bounds or choices, and the one message a broken rule gives.

Every parameter rca_gpu accepts (an algorithm card's, an extractor's, a run option) is a :class:`Param`;
values are checked in one place, :meth:`Param.check`, in scikit-learn's words: "The 'k' parameter of
clusterer 'kmeans' must be an int >= 2. Got 1 instead." Plain data, no numpy: the spec and the CLI's
``--help`` import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rca_gpu.errors import SpecError

_LOWER: dict[str, tuple[float, bool]] = {  # rule -> (lowest value, inclusive)
    "positive": (0, False),
    "non_negative": (0, True),
    "at_least_1": (1, True),
    "at_least_2": (2, True),
    "fraction": (0, True),
}


@dataclass(frozen=True)
class Param:
    """One parameter: its type and the rule its value must satisfy.

    ``rule`` names the lower bound ("positive", "non_negative", "at_least_1", "at_least_2", "fraction" = in
    [0, 1]) or "choice" (one of ``choices``); ``low`` / ``high`` are inclusive bounds (``low`` overrides the
    rule's); ``allowed`` lists the only valid values (e.g. the image sides the autoencoder can build).
    Numbers must be finite.
    """

    kind: type
    rule: str = "any"
    choices: tuple[str, ...] = ()
    high: float | None = None
    allowed: tuple[int, ...] = ()
    low: float | None = None

    def bounds(self) -> tuple[float | None, bool, float | None]:
        """(lowest, lowest is inclusive, highest inclusive) for numbers; None where unbounded."""
        low: float | None
        low, inclusive = _LOWER.get(self.rule, (None, True))
        if self.low is not None:
            low, inclusive = self.low, True
        high = 1 if self.rule == "fraction" and self.high is None else self.high
        return low, inclusive, high

    def describe(self) -> str:
        """The rule as text, e.g. "an int in [2, 1024]" or "a finite number > 0"."""
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            if self.rule == "choice":
                return "one of " + ", ".join(repr(c) for c in self.choices)
            return "a non-empty string"
        noun = "an int" if self.kind is int else "a finite number"
        if self.allowed:
            return f"{noun} among {', '.join(map(str, self.allowed))}"
        low, inclusive, high = self.bounds()
        if low is not None and high is not None and inclusive:
            return f"{noun} in [{_num(low)}, {_num(high)}]"
        parts = []
        if low is not None:
            parts.append(f"{'>=' if inclusive else '>'} {_num(low)}")
        if high is not None:
            parts.append(f"<= {_num(high)}")
        return " ".join([noun, " and ".join(parts)]).strip()

    def check(self, owner: str, name: str, value: Any, *, fix: str = "") -> Any:
        """The value, converted to the parameter's type (2.0 -> 2 for ints); SpecError when it breaks the rule.

        Raises
        ------
        SpecError
            "The '<name>' parameter of <owner> must be <rule>. Got <value> instead." plus ``fix``.
        """

        def fail() -> SpecError:
            what = f"parameter of {owner}" if owner else "option"
            hint = fix
            if self.kind is bool and isinstance(value, str) and value.strip().lower() in ("true", "false"):
                hint = f" Write it without quotes: {value.strip().lower()}." + fix
            return SpecError(f"The '{name}' {what} must be {self.describe()}. Got {show_value(value)} instead.{hint}")

        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail()
            if isinstance(value, float):
                if not (math.isfinite(value) and value.is_integer()):
                    raise fail()
                value = int(value)
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail()
            try:
                value = float(value)
            except OverflowError:  # an int too large for a float
                raise fail() from None
            if not math.isfinite(value):
                raise fail()
        elif self.kind is str:
            if not isinstance(value, str) or not value.strip():
                raise fail()
        elif self.kind is bool:
            if not isinstance(value, bool):
                raise fail()
        if self.allowed and value not in self.allowed:
            raise fail()
        if self.kind in (int, float):
            low, inclusive, high = self.bounds()
            if low is not None and (value < low or (value == low and not inclusive)):
                raise fail()
            if high is not None and value > high:
                raise fail()
        if self.rule == "choice" and value not in self.choices:
            raise fail()
        return value


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def show_value(value: Any, limit: int = 80) -> str:
    """repr() of a user's value, shortened to one line."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
