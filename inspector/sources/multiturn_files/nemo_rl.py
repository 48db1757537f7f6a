"""NeMo-RL training data: `<logger.log_dir>/train_data_step<N>.jsonl` (NVIDIA-NeMo/RL 7ea279abfbeb, 0.6.0).

Writer: `grpo_train` (nemo_rl/algorithms/grpo.py:3632-3654) -> `Logger.log_batched_dict_as_jsonl`
(nemo_rl/utils/logger.py:1083-1094), one line per sample, every value a batch slice OF LENGTH ONE (`[x]`) plus
`idx`: `content` (the message contents in order), `rewards`, `input_lengths` (unpadded length), `token_ids`
(prompt + all turns, right-padded with pad_token_id), `token_loss_mask` (1 only on tokens generated in this
rollout), `sample_loss_mask` (0 for filtered samples), `advantages` (the sample's scalar over the whole row),
`generation_logprobs` (sampler; 0.0 elsewhere), `prev_logprobs` (trainer; index 0 is 0).
The file has no per-token roles: they come from chat headers when the tokenizer's stream has them, else from the
mask (generated = assistant, after the prompt and not generated = environment). Groups: rows with the same tokens
before the first generated token.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import InputError
from ._stream import first_true, rollout_of, trajectory_from_stream

FORMAT = "nemo-rl"
NOTE = ("NeMo-RL: loss mask = token_loss_mask x sample_loss_mask; sampled = token_loss_mask (generated in this "
        "rollout); roles are not in the file")
KEYS = ("token_ids", "token_loss_mask")


def _unwrap(row: dict, where: str) -> dict:
    out = {}
    for k, v in row.items():
        if k == "idx":
            out[k] = v
        elif isinstance(v, list) and len(v) == 1:
            out[k] = v[0]
        else:
            raise InputError(f"{where}: `{k}` is not a one-element batch slice as NeMo-RL's logger writes it.")
    return out


def read_nemo_rl(path, tokenizer=None):
    """A `MultiTurnRollout` from a NeMo-RL train_data_step<N>.jsonl (see the module docstring)."""
    trajectories, rewards, advantages, prefixes = [], [], [], {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = _unwrap(json.loads(line), f"{path}: line {n}")
        if not set(KEYS) <= row.keys():
            raise InputError(f"{path}: line {n} lacks {', '.join(k for k in KEYS if k not in row)}.")
        L = int(row.get("input_lengths", len(row["token_ids"])))
        ids, mask = row["token_ids"][:L], row["token_loss_mask"][:L]
        keep = float(row.get("sample_loss_mask", 1.0))
        sampled = [bool(m) for m in mask]
        prompt_length = first_true(sampled, L)
        lps = row.get("generation_logprobs")
        group = prefixes.setdefault(tuple(ids[:prompt_length]), len(prefixes))
        notes = [NOTE] + (["sample_loss_mask = 0: the trainer drops this sample"] if keep == 0 else [])
        messages = [{"role": "unknown", "content": c} for c in row.get("content") or []]
        trajectories.append(trajectory_from_stream(
            ids, sampled=sampled, trained=[int(m and keep != 0) for m in mask],
            logprobs=None if lps is None else lps[:L], prompt_length=prompt_length, source=FORMAT,
            tokenizer=tokenizer, notes=notes, messages=messages, non_model="environment", group=group))
        rewards.append(float(row["rewards"]) if "rewards" in row else None)
        adv = row.get("advantages")
        advantages.append(float(adv[prompt_length]) if adv and prompt_length < len(adv) else None)
    return rollout_of(trajectories, source=FORMAT, path=path, tokenizer=tokenizer, notes=[NOTE],
                      rewards=rewards if all(r is not None for r in rewards) else None,
                      advantages=advantages if any(a is not None for a in advantages) else None)
