"""Plain-dict registries for models, methods and tasks, filled by a decorator.

Adding a model, method or task is one decorated function; a failed lookup lists
what exists (as lm-eval does).
"""
from __future__ import annotations

from typing import Callable, TypeVar

from medpeft.errors import UnknownNameError

F = TypeVar("F", bound=Callable)


class Registry(dict):
    """A named dict whose lookups fail with the list of valid names."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = fn
            return fn

        return decorator

    def __missing__(self, name):
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(sorted(self))}"
        )


MODELS = Registry("model")
METHODS = Registry("method")
TASKS = Registry("task")
