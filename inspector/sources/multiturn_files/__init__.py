"""Readers of trainers' multi-turn files into `MultiTurnRollout` records, one module per writer.

`open_multiturn(path, tokenizer=None, format=None, template=None)` picks the reader by `format` or by the file:
- verl agent-loop outputs dumped as JSON lines (`verl.py`),
- prime-rl / verifiers `traces.jsonl` (`prime_rl.py`),
- SkyRL `global_step_<N>_training_input.pkl`, read with a restricted unpickler (`skyrl.py`),
- NeMo-RL `train_data_step<N>.jsonl` (`nemo_rl.py`),
- OpenAI-style transcripts rendered with a chat template (`transcripts.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import InputError
from .nemo_rl import read_nemo_rl
from .prime_rl import read_prime_rl
from .skyrl import read_skyrl
from .transcripts import read_transcripts
from .verl import read_verl

READERS = {"verl": read_verl, "prime-rl": read_prime_rl, "skyrl": read_skyrl, "nemo-rl": read_nemo_rl,
           "transcript": read_transcripts}
FORMATS = tuple(READERS)


def detect_format(path) -> str:
    """The format of a multi-turn file from its first record. Raises InputError when none fits."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":  # pickle protocol 2+
        return "skyrl"
    first = next((l for l in p.read_text().splitlines() if l.strip()), "")
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        row = None
        if first.lstrip().startswith("["):
            return "transcript"
    if isinstance(row, list):
        return "transcript"
    if isinstance(row, dict):
        if "traces" in row:
            return "prime-rl"
        if "token_loss_mask" in row:
            return "nemo-rl"
        if "response_mask" in row:
            return "verl"
        if "messages" in row:
            return "transcript"
    raise InputError(f"{p.name}: not a multi-turn file this inspector reads (verl agent-loop JSONL, prime-rl "
                     "traces.jsonl, SkyRL training_input.pkl, NeMo-RL train_data_step<N>.jsonl, or transcripts "
                     "with `messages`).")


def open_multiturn(path, tokenizer=None, format: str | None = None, template: str | None = None):
    """A `MultiTurnRollout` from a trainer's multi-turn file. `template` applies to transcripts only."""
    fmt = format or detect_format(path)
    if fmt not in READERS:
        raise InputError(f"Unknown multi-turn format {fmt!r}; one of {', '.join(FORMATS)}.")
    if fmt == "transcript":
        return read_transcripts(path, tokenizer, template)
    return READERS[fmt](path, tokenizer)


__all__ = ["FORMATS", "READERS", "detect_format", "open_multiturn", "read_nemo_rl", "read_prime_rl", "read_skyrl",
           "read_transcripts", "read_verl"]
