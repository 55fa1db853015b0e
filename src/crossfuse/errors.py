"""Exceptions users can act on. Every message says what is wrong and where."""
from __future__ import annotations

from dataclasses import dataclass


class CrossfuseError(Exception):
    """Base class of every error crossfuse raises on purpose."""


class ConfigError(CrossfuseError, ValueError):
    """A configuration is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"Invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class Problem:
    """One bad cell, row or column of a manifest."""

    file: str
    message: str
    row: int | None = None  # 0-based position in the manifest's data rows
    column: str | None = None
    modality: str | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row + 1}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        return f"{', '.join(where)}: {self.message}"


class DataError(CrossfuseError, ValueError):
    """The data cannot be used as it is; lists every problem found at once."""

    def __init__(self, problems: list[Problem], hint: str | None = None, limit: int = 50):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:limit])
        more = len(self.problems) - limit
        if more > 0:
            shown += f"\n  ... and {more} more"
        msg = f"{len(self.problems)} data problem(s):\n{shown}"
        if hint:
            msg += f"\n{hint}"
        super().__init__(msg)


class NotFittedError(CrossfuseError, AttributeError):
    """An estimator was used before `fit`."""


class MissingDependencyError(CrossfuseError, ImportError):
    """An optional dependency is needed for the feature asked for."""


def require(module: str, extra: str, feature: str):
    """Import an optional module or fail with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the '{module}' package: pip install 'crossfuse[{extra}]'"
        ) from exc
