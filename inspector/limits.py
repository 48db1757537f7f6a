"""Request limits, enforced by the library (not only by the app's sliders), set by environment variables.

The defaults suit a 2-core CPU Space. A request over a limit raises LimitError naming the limit, its
value and the variable that sets it; nothing is clamped silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from .errors import LimitError


@dataclass(frozen=True)
class Limits:
    max_prompts: int = 16
    max_samples_per_prompt: int = 8
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 512
    max_total_tokens: int = 16 * 1024
    max_time: float = 180.0
    max_upload_bytes: int = 20 * 1024 * 1024
    max_upload_rows: int = 2000

    @staticmethod
    def env_name(field_name: str) -> str:
        return f"INSPECTOR_{field_name.upper()}"

    @classmethod
    def from_env(cls) -> "Limits":
        """The defaults, overridden by INSPECTOR_MAX_* variables. Raises LimitError on a malformed value."""
        values = {}
        for f in fields(cls):
            raw = os.environ.get(cls.env_name(f.name))
            if raw is None or raw.strip() == "":
                continue
            try:
                value = float(raw) if f.type == "float" else int(raw)
            except ValueError:
                raise LimitError(f"{cls.env_name(f.name)}={raw!r} is not a number.") from None
            if value <= 0:
                raise LimitError(f"{cls.env_name(f.name)} must be positive (got {raw}).")
            values[f.name] = value
        return cls(**values)

    def _over(self, name: str, got, what: str) -> LimitError:
        return LimitError(
            f"{what} is {got}, over the limit of {getattr(self, name)} ({name}, set by {self.env_name(name)})."
        )

    def check_request(self, n_prompts: int, samples_per_prompt: int, max_new_tokens: int) -> None:
        """Refuse a request whose shape is over a limit, before any work is done."""
        if n_prompts > self.max_prompts:
            raise self._over("max_prompts", n_prompts, "The number of prompts")
        if samples_per_prompt > self.max_samples_per_prompt:
            raise self._over("max_samples_per_prompt", samples_per_prompt, "samples_per_prompt")
        if max_new_tokens > self.max_new_tokens:
            raise self._over("max_new_tokens", max_new_tokens, "max_new_tokens")

    def check_batch(self, batch_size: int, context_length: int, max_new_tokens: int) -> None:
        """Refuse a batch whose total token count (samples x (prompt width + new tokens)) is over the limit."""
        total = batch_size * (context_length + max_new_tokens)
        if total > self.max_total_tokens:
            raise self._over(
                "max_total_tokens", total,
                f"The rollout's size ({batch_size} samples x ({context_length} prompt + {max_new_tokens} new) tokens)",
            )
