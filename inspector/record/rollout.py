"""The Rollout record: every quantity of one rollout step, as detached CPU tensors under TRL's names.

Names follow TRL's PPO trainer: queries, responses, query_responses, postprocessed_responses,
postprocessed_query_responses, context_length, sequence_lengths, logprobs, ref_logprobs, values, scores.
`logprobs` are TRL's rollout logprobs: the sampled token under the distribution it was sampled from (the
generate call's processed scores); `new_logprobs` is the training-time forward-pass recompute that TRL's
optimisation loop calls `new_logprobs` (logits / (temperature + 1e-7)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

EOS = "eos"
"""`stop_token_id=EOS` (the default) stops at the tokenizer's EOS token; None never stops early."""


@dataclass
class Rollout:
    """One rollout: detached CPU tensors named as in TRL, the decoded texts, and what produced them.

    Shapes: B samples, Q = context_length, G generated width, k top alternatives.
    `sequence_lengths` is TRL's, relative to the response: `first_true_indices(postprocessed_responses ==
    pad) - 1`. `score_positions` is the absolute index in `reward_query_responses` where the score was read.
    """

    prompts: list[str]                      # one per sample (a prompt repeats for several samples)
    prompt_index: list[int]                 # which input prompt each sample answers
    query_texts: list[str]                  # the strings tokenized, chat template included
    queries: torch.Tensor                   # (B, Q) left-padded with pad_token_id
    query_attention_mask: torch.Tensor      # (B, Q) the tokenizer's own mask
    sequences: torch.Tensor                 # (B, Q + G) the raw output.sequences
    responses: torch.Tensor                 # (B, G) sequences[:, Q:]
    query_responses: torch.Tensor           # (B, Q + G) cat(queries, responses): the value model's input
    postprocessed_responses: torch.Tensor   # (B, G) truncated after the stop token
    postprocessed_query_responses: torch.Tensor  # (B, Q + G) the reward model's input
    context_length: int
    sequence_lengths: torch.Tensor          # (B,)
    contain_eos_token: torch.Tensor         # (B,) bool
    logprobs: torch.Tensor                  # (B, G) TRL's rollout logprobs: sampled token under the processed (sampled-from) scores
    raw_logprobs: torch.Tensor              # (B, G) sampled token under the raw logits (output.logits)
    new_logprobs: torch.Tensor              # (B, G) training-time recompute, logits / (temperature + 1e-7)
    ref_logprobs: torch.Tensor              # (B, G) the same recompute with the reference model
    ranks: torch.Tensor                     # (B, G) 0 = the most likely token of the sampled-from distribution
    entropy: torch.Tensor                   # (B, G) nats, of the sampled-from distribution
    topk_ids: torch.Tensor                  # (B, G, k)
    topk_logprobs: torch.Tensor             # (B, G, k)
    values: torch.Tensor                    # (B, G) value model on query_responses, [:, Q - 1 : -1]
    scores: torch.Tensor                    # (B,) reward model on postprocessed_query_responses
    reward_query_responses: torch.Tensor    # (B, T') the ids the reward model saw
    reward_context_length: int
    score_positions: torch.Tensor           # (B,) absolute index in reward_query_responses
    pad_token_id: int
    eos_token_id: int | None
    stop_token_id: int | None
    attention: str
    chat_template_applied: bool
    settings: dict
    model_names: dict
    reward_tokenizer_is_policy: bool
    pad_equals_eos: bool
    tokens: dict[int, str]                  # id -> token string (policy tokenizer), for every id in the record
    reward_tokens: dict[int, str]           # the same for reward_query_responses (the reward tokenizer's)
    special_ids: list[int]
    response_texts: list[str]               # decoded without special tokens
    response_texts_raw: list[str]           # decoded with special tokens
    postprocessed_response_texts: list[str]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    scores_true_mask: torch.Tensor | None = None  # (B,) the reward under the true mask, read where TRL reads
    scores_true_mask_at_end: torch.Tensor | None = None  # (B,) the same pass read at the true mask's last token
    generation_config: dict = field(default_factory=dict)  # the effective generation settings (see config_summary)
    inherited_processors: list[dict] = field(default_factory=list)  # processors from the model's config, measured
    engine: dict = field(default_factory=dict)  # which engine sampled: {"engine", "url", "served_model", ...}
    processed_logprobs: torch.Tensor | None = None  # (B, G) engine rollouts: the trainer's recompute of the
    # sampled-from distribution (temperature, top-k, top-p renormalised), to say which one the engine reports
    columns: dict[str, list] = field(default_factory=dict)  # per-sample data columns (an answer, verl's gts, a file's own)
    entropies: torch.Tensor | None = None   # (B, G) the trainer's entropy: full vocabulary at the recompute's
    # scaled logits, from the same pass as new_logprobs (TRL's `entropy_from_logits`; GRPO's entropy metric and
    # top_entropy_quantile mask, verl's actor/entropy). `entropy` is the sampled-from (top-k / top-p) distribution's.
    trainer: str = "ppo"                    # whose conventions the trainer-side fields follow (TRAINERS)
    conventions: dict[str, str] = field(default_factory=dict)  # field name -> its convention, e.g. new_logprobs
    eos_token_ids: list[int] = field(default_factory=list)  # TRL 1.16's eos_token_ids: tokenizer EOS, the model's
    # generation-config EOS ids, and (GRPO, a custom stop) the stop token: generation ends at them, the GRPO mask knows them

    @property
    def batch_size(self) -> int:
        return self.responses.shape[0]

    @property
    def response_width(self) -> int:
        return self.responses.shape[1]

    @property
    def padding_mask(self) -> torch.Tensor:
        """TRL's padding_mask (B, G): True after `sequence_lengths`, where logprobs become INVALID_LOGPROB."""
        return torch.arange(self.response_width).unsqueeze(0) > self.sequence_lengths.unsqueeze(1)

    def token(self, token_id: int) -> str:
        return self.tokens.get(int(token_id), f"<{int(token_id)}>")
