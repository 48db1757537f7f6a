"""The multi-turn record: one `Trajectory` per sample (the whole token stream, per-token role, turn, sampled
flag, sampler logprob and TRL 1.16's masks), and `MultiTurnRollout`, a step of them with rewards.

Masks follow TRL 1.16's GRPOTrainer: `completion_mask` and `tool_mask` cover the completion part only
(`token_ids[prompt_length:]`); `tool_mask` is 0 on tool / environment tokens (TRL's `tool_mask`, or the
`env_mask` a `rollout_func` returns) and 1 elsewhere; the loss reads `completion_mask * tool_mask`.
Per-token lists (`role`, `turn`, `sampled`, `logprobs`) cover the whole stream, prompt included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

ROLES = ("system", "user", "assistant", "tool", "environment")
SOURCES = ("inspector", "verl", "prime-rl", "skyrl", "nemo-rl", "transcript")


@dataclass
class Trajectory:
    """One multi-turn rollout sample: prompt + every turn, as the model saw and generated it."""

    token_ids: list[int]                 # prompt + every turn
    role: list[str]                      # per token, one of ROLES
    turn: list[int]                      # per token: 0 = the prompt, then 1, 2, ... one per assistant turn + its reply
    sampled: list[bool]                  # per token: the model sampled it
    logprobs: list[float | None]         # per token: the sampler's logprob where sampled, else None
    completion_mask: list[int]           # TRL 1.16 completion_mask, over token_ids[prompt_length:]
    tool_mask: list[int]                 # TRL 1.16 tool_mask (0 on tool-result tokens), over the completion
    prompt_length: int                   # tokens before the completion
    messages: list[dict] = field(default_factory=list)   # OpenAI-style chat messages (tool_calls / tool_call_id)
    events: list[dict] = field(default_factory=list)     # per turn: tool calls, parse failures, truncations, outcomes
    source: str = "inspector"            # one of SOURCES
    notes: list[str] = field(default_factory=list)
    # added beyond the contract's first list (see contracts.md):
    reward_input: dict | None = None     # what TRL's reward functions receive for this sample (prompt, completion, ...)
    group: int = 0                       # which prompt this sample answers (GRPO group)
    sample_index: int = 0                # position within the step

    def __post_init__(self):
        n = len(self.token_ids)
        for name in ("role", "turn", "sampled", "logprobs"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Trajectory.{name} has {len(getattr(self, name))} entries, token_ids has {n}")
        c = n - self.prompt_length
        if c < 0:
            raise ValueError(f"prompt_length {self.prompt_length} exceeds the {n} tokens")
        for name in ("completion_mask", "tool_mask"):
            if len(getattr(self, name)) != c:
                raise ValueError(f"Trajectory.{name} has {len(getattr(self, name))} entries, the completion has {c}")

    @property
    def completion_ids(self) -> list[int]:
        return self.token_ids[self.prompt_length:]

    @property
    def prompt_ids(self) -> list[int]:
        return self.token_ids[:self.prompt_length]

    @property
    def loss_mask(self) -> list[int]:
        """TRL's loss mask over the completion: completion_mask * tool_mask."""
        return [int(a) * int(b) for a, b in zip(self.completion_mask, self.tool_mask)]

    @property
    def num_turns(self) -> int:
        return max(self.turn) if self.turn else 0

    def turn_spans(self) -> list[tuple[int, int, int]]:
        """(turn, start, end) absolute spans of consecutive tokens of one turn, in order."""
        spans: list[tuple[int, int, int]] = []
        for i, t in enumerate(self.turn):
            if spans and spans[-1][0] == t and spans[-1][2] == i:
                spans[-1] = (t, spans[-1][1], i + 1)
            else:
                spans.append((t, i, i + 1))
        return spans

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Trajectory":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class MultiTurnRollout:
    """A step of multi-turn rollouts: trajectories (grouped num_generations per prompt) and their rewards."""

    trajectories: list[Trajectory]
    settings: dict = field(default_factory=dict)
    model_names: dict = field(default_factory=dict)
    rewards_per_func: list[list[float]] = field(default_factory=list)   # (B, F)
    reward_func_names: list[str] = field(default_factory=list)
    reward_weights: list[float] = field(default_factory=list)
    num_generations: int = 1
    tokens: dict[int, str] = field(default_factory=dict)                # id -> decoded piece, for the views
    notes: list[str] = field(default_factory=list)
    # added beyond the contract's first list:
    rewards: list[float] = field(default_factory=list)                  # (B,) weighted sum, as TRL sums
    advantages: list[float] = field(default_factory=list)               # (B,) GRPO advantages
    grpo: dict | None = None                                            # the GRPO step's outputs (loss, per-token weights)
    drift: list[dict] = field(default_factory=list)                     # per trajectory: template drift (diagnostics/drift.py)
    findings: list[dict] = field(default_factory=list)                  # Finding.to_dict() of diagnostics/multiturn.py

    def __len__(self) -> int:
        return len(self.trajectories)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens"] = {str(k): v for k, v in self.tokens.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MultiTurnRollout":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["trajectories"] = [Trajectory.from_dict(t) for t in d.get("trajectories", [])]
        kw["tokens"] = {int(k): v for k, v in d.get("tokens", {}).items()}
        return cls(**kw)
