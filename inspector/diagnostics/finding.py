"""A finding: one trap, where it is, why it matters for training and what to do about it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Finding:
    code: str
    title: str
    severity: str                      # "warning" (changes what is trained on) or "info"
    detail: str
    why: str
    fix: str
    samples: list[int] = field(default_factory=list)
    positions: list[tuple[int, int]] = field(default_factory=list)  # (sample, absolute index in sequences)
    steps: list[int] = field(default_factory=list)  # a run's steps the finding is about (run findings)

    def to_dict(self) -> dict:
        return asdict(self)
