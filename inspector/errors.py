"""Errors the inspector raises. Each message says what went wrong and how to fix it."""

from __future__ import annotations


class InspectorError(Exception):
    """Base class: an error a user can act on. The message is shown to the user as it is."""


class ModelLoadError(InspectorError):
    """A model or tokenizer could not be loaded, or is not of the kind its role needs."""


class InputError(InspectorError):
    """Prompts or settings that cannot produce a rollout."""


class LimitError(InputError):
    """A request over one of the configured limits (the message names the limit and its value)."""


class EngineError(InspectorError):
    """A serving engine that is unreachable, refuses the request, or answers without what a rollout needs."""


def check_choice(name: str, value, allowed) -> None:
    """Raise an InputError naming the allowed values when `value` is not one of them."""
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")
