"""A run's step as a Rollout, so the Sequences, Logprobs, GRPO and Sampler-mismatch tabs can show it.

Token-level formats keep the trainer's ids, masks and logprobs. Text-only formats (TRL's completions parquet,
verl's rollout dump) are tokenized here with a named tokenizer: the notes say the ids may differ from the
trainer's. A Rollout field the format lacks is filled so the views work (sampler logprobs from the trainer's,
zeros for entropy, ranks and values) and the notes name each one as "not in this format".
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .rollout import Rollout


def load_tokenizer(tokenizer):
    """A tokenizer object from a name or folder (None: None)."""
    if tokenizer is None or not isinstance(tokenizer, str):
        return tokenizer
    from ..models import _tokenizer_only

    return _tokenizer_only(tokenizer)


def _prompt_string(prompt, tok) -> tuple[str, bool]:
    """TRL's prompt as the string the trainer tokenized: a message list through the chat template."""
    if isinstance(prompt, (list, tuple, np.ndarray)) and len(prompt) and isinstance(prompt[0], dict):
        messages = [dict(m) for m in prompt]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
    return str(prompt), False


def _completion_string(completion) -> str:
    if isinstance(completion, (list, tuple, np.ndarray)) and len(completion) and isinstance(completion[0], dict):
        return "".join(str(m.get("content") or "") for m in completion)
    return str(completion)


def retokenize(step, tok) -> None:
    """Fill a text-only step's prompt_ids / completion_ids from its texts with `tok` (in place)."""
    if step.completion_ids is not None or step.completion_text is None:
        return
    prompts, completions, templated = [], [], False
    for p, c in zip(step.prompt_text, step.completion_text):
        text, templated = _prompt_string(p, tok)
        prompts.append(np.asarray(tok(text, add_special_tokens=False)["input_ids"], np.int64))
        completions.append(np.asarray(tok(_completion_string(c), add_special_tokens=False)["input_ids"], np.int64))
    step.prompt_ids, step.completion_ids = prompts, completions
    step.retokenized = True
    step.tokenizer_name = getattr(tok, "name_or_path", None) or type(tok).__name__
    step.notes.append(
        f"{step.format}: the file holds text only; the ids here come from tokenizing it with {step.tokenizer_name}"
        f"{' (prompt messages through its chat template)' if templated else ''}. They may differ from the ids the "
        "trainer saw: the text was decoded without special tokens (EOS and pads are gone), and decoding then "
        "encoding need not give the same tokens.")


def _pad(rows, width: int, value, left: bool = False, dtype=torch.float32) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        r = torch.tensor(np.array(r, dtype=np.float64 if dtype.is_floating_point else np.int64), dtype=dtype)
        if len(r):
            if left:
                out[i, width - len(r):] = r
            else:
                out[i, :len(r)] = r
    return out


def _group_size(group) -> int:
    """Samples per prompt when groups are contiguous and of one size, else 1."""
    if group is None or len(group) == 0:
        return 1
    g = np.asarray(group)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, len(g)])
    if len(set(sizes.tolist())) == 1 and len(np.unique(g)) == len(starts):
        return int(sizes[0])
    return 1


def _token_strings(tok, ids: set[int]) -> dict[int, str]:
    if tok is None:
        return {i: f"<{i}>" for i in ids}
    ordered = sorted(ids)
    return dict(zip(ordered, tok.convert_ids_to_tokens(ordered)))


def _fill(step, notes: list[str]) -> dict:
    """The per-token arrays the Rollout needs, each filled when the format lacks it (named in `notes`)."""
    lengths = [len(c) for c in step.completion_ids]
    zeros = [np.zeros(n) for n in lengths]
    sampler, trainer = step.logprobs, step.new_logprobs
    if sampler is None and trainer is None:
        notes.append(f"logprobs: not in this format ({step.format}); shown as 0.")
        sampler = trainer = zeros
    elif sampler is None:
        notes.append(f"sampler logprobs: not in this format ({step.format}); the trainer's are shown in their place "
                     "(no sampler-trainer gap can be read).")
        sampler = trainer
    elif trainer is None:
        notes.append(f"trainer logprobs: not in this format ({step.format}); the sampler's are shown in their place "
                     "(no sampler-trainer gap can be read).")
        trainer = sampler
    ref = step.ref_logprobs
    if ref is None:
        notes.append(f"reference logprobs: not in this format ({step.format}); the trainer's are shown in their place.")
        ref = trainer
    entropy = step.entropy
    if entropy is None:
        notes.append(f"entropy: not in this format ({step.format}); shown as 0.")
        entropy = zeros
    notes.append("ranks, top-k alternatives and values: not in this format; shown as 0 / empty.")
    return {"sampler": sampler, "trainer": trainer, "ref": ref, "entropy": entropy}


def _model_names(step, tok) -> dict:
    policy = step.tokenizer_name or getattr(tok, "name_or_path", None) or f"{step.format} run"
    return {"policy": f"{policy} (tokenizer; step {step.step} of a {step.format} run)",
            "reward": f"the run's own rewards ({step.format})", "value": "none (not in this format)",
            "reference": "the run's reference logprobs" if step.ref_logprobs is not None else "none (not in this format)"}


def step_to_rollout(step, tokenizer=None) -> Rollout:
    """The Rollout of one RunStep. `tokenizer` (object or name) decodes tokens; a text-only step needs one."""
    if tokenizer is None and step.tokenizer_name and not step.retokenized:
        tokenizer = step.tokenizer_name  # a tokenizer the trainer saved beside its dump (slime)
    tok = load_tokenizer(tokenizer)
    if step.completion_ids is None:
        if tok is None:
            raise InputError(f"step {step.step} of this {step.format} run holds text only: name a tokenizer "
                             "(--tokenizer NAME) to tokenize it.")
        retokenize(step, tok)
    B = len(step.completion_ids)
    if B == 0:
        raise InputError(f"step {step.step} has no samples.")
    notes = list(step.notes)
    f = _fill(step, notes)
    prompts_ids = step.prompt_ids or [np.zeros(0, np.int64)] * B
    pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0
    eos = (step.eos_token_ids or [])[:1] or ([tok.eos_token_id] if tok is not None and tok.eos_token_id is not None else [])
    Q, G = max(len(p) for p in prompts_ids), max(1, max(len(c) for c in step.completion_ids))
    queries = _pad(prompts_ids, Q, pad, left=True, dtype=torch.long)
    qmask = _pad([np.ones(len(p)) for p in prompts_ids], Q, 0, left=True, dtype=torch.long)
    responses = _pad(step.completion_ids, G, pad, dtype=torch.long)
    seq = torch.cat([queries, responses], dim=1)
    lengths = torch.tensor([len(c) - 1 for c in step.completion_ids])
    contain_eos = torch.tensor([bool(len(c)) and int(c[-1]) in eos for c in step.completion_ids])
    ids = set(seq.flatten().tolist())
    tokens = _token_strings(tok, ids)
    texts = ([tok.decode(c, skip_special_tokens=True) for c in step.completion_ids] if tok is not None
             else [str(t) for t in (step.completion_text or [""] * B)])
    raw = [tok.decode(c) for c in step.completion_ids] if tok is not None else texts
    prompt_texts = ([tok.decode(p) for p in prompts_ids] if tok is not None and step.prompt_text is None
                    else [str(p) for p in (step.prompt_text or [""] * B)])
    group = step.group if step.group is not None else np.arange(B)
    G_size = _group_size(group)
    rewards = step.rewards
    if rewards is None and step.rewards_per_func:
        w = step.reward_weights or [1.0] * len(step.rewards_per_func)
        rewards = np.nansum(np.stack([np.asarray(v, np.float64) * wi for v, wi in zip(step.rewards_per_func.values(), w)]), 0)
    if rewards is None:
        notes.append(f"rewards: not in this format ({step.format}); scores shown as 0.")
    columns = {k: list(v) for k, v in step.columns.items()}
    for name, values in (step.rewards_per_func or {}).items():
        columns[name] = [float(v) for v in values]
    adv = step.advantages
    if adv is not None:
        from .run import _per_sample_advantage

        columns["advantage"] = [float(a) for a in _per_sample_advantage(step)]
    if step.loss_mask is not None:
        columns["loss_mask"] = [[int(x) for x in m] for m in step.loss_mask]
    settings = {"samples_per_prompt": G_size, "max_new_tokens": G, "run_step": int(step.step), "run_format": step.format}
    if step.rewards_per_func:
        settings["reward_columns"] = list(step.rewards_per_func)
        settings["reward_weights"] = list(step.reward_weights or [1.0] * len(step.rewards_per_func))
    if eos:
        settings["generation_eos_token_ids"] = list(eos)
    if G_size == 1 and len(set(np.asarray(group).tolist())) < B:
        notes.append("groups are not contiguous or not of one size: shown as one sample per prompt.")
    return Rollout(
        prompts=prompt_texts, prompt_index=[int(g) for g in np.unique(group, return_inverse=True)[1]],
        query_texts=prompt_texts, queries=queries, query_attention_mask=qmask, sequences=seq, responses=responses,
        query_responses=seq, postprocessed_responses=responses, postprocessed_query_responses=seq, context_length=Q,
        sequence_lengths=lengths, contain_eos_token=contain_eos,
        logprobs=_pad(f["sampler"], G, 0.0), raw_logprobs=_pad(f["sampler"], G, 0.0),
        new_logprobs=_pad(f["trainer"], G, 0.0), ref_logprobs=_pad(f["ref"], G, 0.0),
        ranks=torch.zeros(B, G, dtype=torch.long), entropy=_pad(f["entropy"], G, 0.0),
        topk_ids=torch.zeros(B, G, 0, dtype=torch.long), topk_logprobs=torch.zeros(B, G, 0),
        values=torch.zeros(B, G), scores=torch.as_tensor(np.nan_to_num(np.asarray(rewards if rewards is not None else np.zeros(B), np.float64)), dtype=torch.float32),
        reward_query_responses=seq, reward_context_length=Q, score_positions=Q + lengths.clamp(min=0),
        pad_token_id=int(pad), eos_token_id=eos[0] if eos else None, stop_token_id=eos[0] if eos else None,
        attention="tokenizer", chat_template_applied=True, settings=settings,
        model_names=_model_names(step, tok),
        reward_tokenizer_is_policy=True, pad_equals_eos=bool(eos) and pad == eos[0], tokens=tokens, reward_tokens=tokens,
        special_ids=sorted(set(getattr(tok, "all_special_ids", []) or [])), response_texts=texts, response_texts_raw=raw,
        postprocessed_response_texts=texts, notes=notes, columns=columns,
        # a run's step is what its GRPO-family trainer trained on: its fields follow that trainer, not TRL 0.x PPO
        trainer="verl" if step.format == "verl" else "grpo", eos_token_ids=[int(e) for e in eos or []],
        conventions={"new_logprobs": f"the trainer's own logprobs as {step.format} wrote them",
                     "attention": "the trainer's masks as written (no recompute here)"},
    )
