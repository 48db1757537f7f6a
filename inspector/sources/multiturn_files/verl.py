"""verl agent-loop outputs, as JSON lines a user dumps from the rollout `DataProto` (verl 0.9.1).

verl itself writes these tensors to disk only as a pickle (`DataProto.save_to_disk`, verl/protocol.py:423-431),
which this reader does not open. The file it takes is one JSON object per sample with verl's own batch keys
(verl/experimental/agent_loop/agent_loop.py `_postprocess`, 1079-1091), e.g. written from a callback:

    for i in range(len(batch)):
        row = {k: batch.batch[k][i].tolist() for k in ("prompts", "responses", "response_mask", "attention_mask",
                                                      "rollout_log_probs") if k in batch.batch.keys()}
        row["__num_turns__"] = int(batch.non_tensor_batch["__num_turns__"][i])
        f.write(json.dumps(row) + "\\n")

- `prompts` (left-padded to rollout.prompt_length), `responses` (right-padded to rollout.response_length),
  `response_mask` (1 on tokens the model generated, 0 on tool-response / inserted tokens and padding),
  `attention_mask` (prompt + response; 1 on real tokens), `rollout_log_probs` (optional; 0.0 where the model did
  not sample). Other keys are ignored.
- The unpadded `AgentLoopOutput` fields are read as well: `prompt_ids`, `response_ids`, `response_mask`,
  `response_logprobs` (agent_loop.py:88-160).
Without `attention_mask`, padding is cut with the tokenizer's pad id (leading pads of the prompt; trailing pads of
the response whose response_mask is 0).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import InputError
from ._stream import rollout_of, trajectory_from_stream

FORMAT = "verl"
NOTE = ("verl: loss mask = response_mask (1 = the model generated it; tool responses and the tokens the template "
        "inserts at a boundary are 0); a logprob of 0.0 on a 0 position is padding, not a probability")


def _unpad(row: dict, pad_id: int | None) -> tuple[list[int], list[int], list[int], list[float] | None]:
    if "prompt_ids" in row:  # an AgentLoopOutput, not padded
        return row["prompt_ids"], row["response_ids"], row["response_mask"], row.get("response_logprobs")
    prompts, responses, mask = row["prompts"], row["responses"], row["response_mask"]
    lps = row.get("rollout_log_probs")
    if "attention_mask" in row:
        att = row["attention_mask"]
        if len(att) != len(prompts) + len(responses):
            raise InputError("verl: attention_mask is not as long as prompts + responses.")
        p = sum(att[:len(prompts)])
        r = sum(att[len(prompts):])
        prompt, n_resp = prompts[len(prompts) - p:], r
    else:
        if pad_id is None:
            raise InputError("verl: without attention_mask the padding is found with the tokenizer's pad id; "
                             "give the tokenizer (or keep attention_mask in the dump).")
        lead = next((i for i, t in enumerate(prompts) if t != pad_id), len(prompts))
        prompt = prompts[lead:]
        n_resp = len(responses)
        while n_resp and responses[n_resp - 1] == pad_id and not mask[n_resp - 1]:
            n_resp -= 1
    return prompt, responses[:n_resp], mask[:n_resp], (lps[:n_resp] if lps is not None else None)


def read_verl(path, tokenizer=None):
    """A `MultiTurnRollout` from a verl agent-loop JSONL (see the module docstring). Raises InputError when a line
    lacks `responses`/`response_mask` (or `response_ids`) or its lengths disagree."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    trajectories = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not ({"responses", "response_mask"} <= row.keys() or {"response_ids", "response_mask"} <= row.keys()):
            raise InputError(f"{path}: line {n} has no verl responses/response_mask (keys: {sorted(row)[:8]}).")
        prompt, response, mask, lps = _unpad(row, pad_id)
        if len(mask) != len(response) or (lps is not None and len(lps) != len(response)):
            raise InputError(f"{path}: line {n}: response_mask / rollout_log_probs are not as long as the response.")
        sampled = [False] * len(prompt) + [bool(m) for m in mask]
        notes = [NOTE] + ([f"__num_turns__ = {row['__num_turns__']}"] if "__num_turns__" in row else [])
        trajectories.append(trajectory_from_stream(
            list(prompt) + list(response), sampled=sampled, trained=sampled,
            logprobs=None if lps is None else [0.0] * len(prompt) + list(lps),
            prompt_length=len(prompt), source=FORMAT, tokenizer=tokenizer, notes=notes))
    return rollout_of(trajectories, source=FORMAT, path=path, tokenizer=tokenizer, notes=[NOTE])
