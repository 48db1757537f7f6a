"""Regenerate the saved example rollouts the page opens on (inspector/assets/examples/*.json).

One rollout of the default models per example prompt set, with the page's default settings
(inspector.examples.EXAMPLE_SETTINGS). Run from the repository root, offline:

    HF_HUB_OFFLINE=1 python scripts/build_examples.py

It prints each record's file, size and shape. The same seed gives the same tokens, so rerunning it on the same
models and versions rewrites the same rollouts (only the `created` time changes).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inspector import load_models, run_rollout  # noqa: E402
from inspector.sources.examples import EXAMPLE_SETTINGS, EXAMPLES, EXAMPLES_DIR, example_path  # noqa: E402
from inspector.record.format import rollout_to_json  # noqa: E402


def build(models, name: str) -> Path:
    r = run_rollout(models, EXAMPLES[name], **EXAMPLE_SETTINGS)
    r.settings["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    r.timings.clear()  # the time this machine took says nothing to a visitor
    path = example_path(name)
    path.write_text(rollout_to_json(r), encoding="utf-8")
    return path


def main() -> None:
    EXAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    models = load_models()
    for name in EXAMPLES:
        path = build(models, name)
        print(f"{path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}: "
              f"{path.stat().st_size / 1024:.0f} KiB, {name!r}")


if __name__ == "__main__":
    main()
