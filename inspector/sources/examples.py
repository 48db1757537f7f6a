"""The example prompt sets and their saved rollouts: records of the default models shipped in the package, which
the page shows on arrival (and a link names with `?example=<slug>&sample=<i>`) before any model has loaded.

`python scripts/build_examples.py` regenerates the records with `EXAMPLE_SETTINGS`, the page's defaults.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from ..errors import InputError
from ..record.format import rollout_from_dict
from ..record.rollout import Rollout

EXAMPLES = {
    "Sentiment contrast": [
        "Write one sentence about a wonderful day at the beach with friends.",
        "Write one sentence about a terrible day stuck in traffic in the rain.",
        "Describe your favourite meal with enthusiasm, in one sentence.",
        "Complain about a broken phone in one sentence.",
    ],
    "Short answers (pad == EOS)": [
        "What is 2 + 2? Answer with one number.",
        "Reply with exactly one word: yes or no. Is the sky blue?",
        "Name one colour.",
    ],
    "Cut by max_new_tokens (no EOS)": [
        "Tell me a long story about a dragon who learns to bake bread.",
        "List twenty animals, one per line.",
    ],
}
DEFAULT_EXAMPLE = "Sentiment contrast"

EXAMPLE_SETTINGS = dict(max_new_tokens=48, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, seed=0,
                        samples_per_prompt=1, use_chat_template=True, attention="trl")
"""The settings of the saved rollouts, which are also the page's defaults."""

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"


def slug(name: str) -> str:
    """'Short answers (pad == EOS)' -> 'short-answers-pad-eos': the name a link uses."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def example_path(name: str) -> Path:
    return EXAMPLES_DIR / f"{slug(name)}.json"


def find_example(query: str | None) -> str:
    """The example set a link names, by its slug or its name (any case). Raises InputError naming the known ones."""
    if not query:
        return DEFAULT_EXAMPLE
    wanted = slug(str(query))
    for name in EXAMPLES:
        if slug(name) == wanted:
            return name
    raise InputError(f"There is no example set {str(query)[:60]!r}; the saved ones are "
                     + ", ".join(slug(n) for n in EXAMPLES) + ".")


@lru_cache(maxsize=len(EXAMPLES))
def _record(name: str) -> dict:
    path = example_path(name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"The saved example {path.name} is missing: run python scripts/build_examples.py.") from None


def load_example(name: str) -> Rollout:
    """A fresh Rollout of the saved example `name` (a new object each call: sessions never share one)."""
    return rollout_from_dict(_record(name))
