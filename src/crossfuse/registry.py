"""Named registries of components (encoders, fusion methods) with helpful failures."""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any, Callable, Dict, Generic, List, TypeVar

from crossfuse.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to component classes; ``build`` drops None kwargs so defaults stay in charge."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            cls.registry_name = name
            self._items[name] = cls
            return cls

        return deco

    def names(self, pattern: str = "*") -> List[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str) -> type:
        if name not in self._items:
            raise ConfigError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self._items, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"Unknown {self.kind} '{name}'.{hint} Registered: {', '.join(self.names())}"

    def check_kwargs(self, name: str, kwargs: Dict[str, Any]) -> List[str]:
        """Problems with ``kwargs`` for component ``name``: unknown parameter names, and values
        outside the class's ``param_limits`` ({parameter: (low, high)}, for a number or each number
        of a list), so that a typo such as image_size=100000 fails before any work."""
        cls = self.get(name)
        problems = [f"The '{key}' parameter of {name} {msg}. Got {kwargs[key]!r}."
                    for key, (low, high) in getattr(cls, "param_limits", {}).items()
                    if kwargs.get(key) is not None
                    for msg in [_out_of_range(kwargs[key], low, high)] if msg]
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return problems
        accepted = [p for p in params if p != "self"]
        for key in kwargs:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                problems.append(
                    f"{self.kind} '{name}' has no parameter '{key}'.{hint} "
                    f"Accepted: {', '.join(accepted)}"
                )
        return problems

    def build(self, name: str, **kwargs: Any) -> T:
        problems = self.check_kwargs(name, kwargs)
        if problems:
            raise ConfigError(problems)
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})


def _out_of_range(value: Any, low: float, high: float) -> str:
    """Why ``value`` (a number, or a list of numbers) is not within [low, high]; '' when it is."""
    values = value if isinstance(value, (list, tuple)) else [value]
    kind = "an int" if isinstance(low, int) and isinstance(high, int) else "a number"
    plural = "list of numbers" if isinstance(value, (list, tuple)) else kind
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind == "an int" and not float(v).is_integer()):
            return f"must be {plural} in [{low}, {high}]"
        if not low <= v <= high:
            what = "hold numbers" if isinstance(value, (list, tuple)) else f"be {kind}"
            return f"must {what} in [{low}, {high}]"
    return ""
