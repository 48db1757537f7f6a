"""Build the arithmetic prompt set that the exact-answer reward checks: `inspector/assets/arithmetic.jsonl`.

Each line is {"prompt": ..., "answer": ...}; the answer is computed here by Python from the operands, never
typed. The set is fixed by the seed, so rerunning the script rewrites the same file:

    python scripts/build_arithmetic_prompts.py          # writes inspector/assets/arithmetic.jsonl
    python scripts/build_arithmetic_prompts.py --check  # exits 1 when the shipped file differs
"""

from __future__ import annotations

import argparse
import json
import operator
import random
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parent.parent / "inspector" / "assets" / "arithmetic.jsonl"
OPERATIONS = [("+", operator.add), ("-", operator.sub), ("*", operator.mul)]
TEMPLATE = "What is {a} {op} {b}? Answer with one number."
COUNT = 48
SEED = 0


def build(count: int = COUNT, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    # the easiest ones first: a small model gets some of them right, so groups differ in reward
    for a, op, b in [(2, "+", 2), (3, "+", 5), (10, "-", 4), (6, "*", 7)]:
        seen.add((a, op, b))
        rows.append((a, op, b))
    while len(rows) < count:
        op = rng.choice(OPERATIONS)[0]
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(1, 99), rng.randint(1, 99))
        if op == "-" and b > a:
            a, b = b, a
        if (a, op, b) not in seen:
            seen.add((a, op, b))
            rows.append((a, op, b))
    funcs = dict(OPERATIONS)
    return [{"prompt": TEMPLATE.format(a=a, op=op, b=b), "answer": str(funcs[op](a, b))} for a, op, b in rows]


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    args = parser.parse_args()
    text = render(build())
    if args.check:
        same = TARGET.is_file() and TARGET.read_text(encoding="utf-8") == text
        print("arithmetic.jsonl is up to date" if same else "arithmetic.jsonl differs from what the script builds")
        return 0 if same else 1
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {len(build())} prompts to {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
