"""A plain-text account of a Rollout, per sample: the split, stop and pad positions, and the score."""

from __future__ import annotations

from ..record.rollout import Rollout


def _show(text: str, limit: int = 200) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_rollout(r: Rollout) -> str:
    """The per-sample report the command line prints."""
    Q = r.context_length
    lines = [
        f"policy {r.model_names['policy']} | reward {r.model_names['reward']} | value {r.model_names['value']} "
        f"| reference {r.model_names['reference']}",
        f"context_length {Q} | response width {r.response_width} | pad {r.pad_token_id} {r.token(r.pad_token_id)!r} "
        f"| eos {r.eos_token_id} {r.token(r.eos_token_id) if r.eos_token_id is not None else None!r} "
        f"| stop {r.stop_token_id} | attention {r.attention}"
        + (" | pad == eos" if r.pad_equals_eos else ""),
    ]
    if r.generation_config:
        values = {k: v for k, v in r.generation_config["values"].items() if v is not None}
        lines.append("generation settings: " + ", ".join(
            f"{k}={v!r}" + (" (model)" if k in r.generation_config["from_model"] else "") for k, v in values.items()))
    for i in range(r.batch_size):
        resp = r.responses[i].tolist()
        first_stop = resp.index(r.stop_token_id) if r.stop_token_id in resp else None
        post = r.postprocessed_responses[i].tolist()  # as the stop-and-pad table: sequence_lengths = this - 1
        first_pad = post.index(r.pad_token_id) if r.pad_token_id in post else None
        seq_len = int(r.sequence_lengths[i])
        pos = int(r.score_positions[i])
        read_id = int(r.reward_query_responses[i, pos])
        read_tok = r.reward_tokens.get(read_id, str(read_id))
        lines += [
            "",
            f"[{i}] prompt: {_show(r.prompts[i])}",
            f"    query ({int(r.query_attention_mask[i].sum())} tokens + {Q - int(r.query_attention_mask[i].sum())} left pad): "
            f"{_show(r.query_texts[i])}",
            f"    response: {_show(r.response_texts_raw[i])}",
            f"    first stop token at response index {first_stop}, first pad at {first_pad}, "
            f"sequence_lengths {seq_len}, contain_eos_token {bool(r.contain_eos_token[i])}",
            f"    score read at index {pos} (response index {pos - r.reward_context_length}) on token {read_tok!r} "
            f"(id {read_id}): score {float(r.scores[i]):+.4f}",
        ]
        if pos < r.reward_context_length:
            lines.append("    note: an empty response: the score was read inside the query")
    for note in r.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_grpo_step(r: Rollout, step) -> str:
    """The GRPO step per group: each completion's rewards, advantage, length and whether it was cut, the
    group's mean and std (zero-std groups flagged), then the numbers the trainer logs."""
    names = step.reward_func_names
    lines = [f"{step.trainer} step: {step.num_groups} groups x {step.num_generations} completions | "
             f"loss {float(step.loss):.6g}"]
    for g in range(step.num_groups):
        first = g * step.num_generations
        flag = "  ZERO STD: no learning signal" if bool(step.is_std_zero[first]) else ""
        lines.append(f"\ngroup {g}: {_show(r.prompts[first], 80)!r}  mean {float(step.mean_grouped_rewards[first]):.4g} "
                     f"std {float(step.std_rewards[first]):.4g}{flag}")
        for i in range(first, first + step.num_generations):
            rewards = ", ".join(f"{n}={'None' if v != v else f'{v:.4g}'}" for n, v in zip(names, step.rewards_per_func[i].tolist()))
            cut = " cut" if bool(step.is_truncated[i]) else ""
            lines.append(f"  [{i}] advantage {float(step.advantages[i]):+.4f} | {rewards} | {int(step.lengths[i])} tokens"
                         f"{cut} | {_show(r.response_texts[i], 60)!r}")
    lines.append("\n" + "\n".join(f"{k}: {v:.6g}" for k, v in step.metrics.items()))
    return "\n".join(lines)
