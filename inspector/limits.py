"""Request limits, enforced by the library (not only by the app's sliders), set by environment variables.

A request over a limit raises LimitError naming the limit, its value and the variable that sets it; nothing is
clamped silently. On a hosted deployment (SPACE_ID set, or INSPECTOR_HOSTED=1) the request limits default to
`HOSTED`: what a free 2-vCPU Space answers in about 10 seconds (benchmarks/bench_hosted.py); every limit
stays overridable by its variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from .errors import LimitError


def hosted() -> bool:
    """A hosted deployment: a Hugging Face Space (SPACE_ID is set there) or INSPECTOR_HOSTED=1."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("INSPECTOR_HOSTED", "0") == "1"


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
    max_upload_depth: int = 64
    model_cache_models: int = 4
    model_cache_params: int = 2_000_000_000

    @staticmethod
    def env_name(field_name: str) -> str:
        return f"INSPECTOR_{field_name.upper()}"

    @classmethod
    def from_env(cls) -> "Limits":
        """The defaults (`HOSTED` on a hosted deployment), overridden by INSPECTOR_* variables.

        Raises LimitError on a malformed value.
        """
        values = dict(HOSTED) if hosted() else {}
        for f in fields(cls):
            raw = os.environ.get(cls.env_name(f.name))
            if raw is None or raw.strip() == "":
                continue
            try:
                value = float(raw)
            except ValueError:
                raise LimitError(f"{cls.env_name(f.name)}={raw!r} is not a number.") from None
            if f.type != "float":
                if not value.is_integer():
                    raise LimitError(f"{cls.env_name(f.name)}={raw!r} is not a whole number.")
                value = int(value)
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


HOSTED = {
    "max_prompts": 8,
    "max_samples_per_prompt": 4,
    "max_new_tokens": 64,
    "max_total_tokens": 512,
    "max_time": 30.0,
}
"""The hosted defaults: a request within them takes at most about 10 s on a free 2-vCPU Space (measured with
benchmarks/bench_hosted.py on a 2-core machine, figures in the README's Spaces section); max_time cuts
generation that would run longer."""
