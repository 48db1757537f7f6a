"""A training run: the steps a trainer wrote, read lazily, with per-step trends cached on disk.

`Run` is opened by `inspector.sources.runs.open_run` over one reader per format (each reader knows which of
its steps the trainer has finished writing). `RunStep` holds one step's samples under the record's FIELD
NAMES; a field the format does not carry is None and `lacks(name)` says so. Token-level fields are per
sample numpy arrays over the completion (the tokens after the prompt), in the trainer's own ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

FIELD_NAMES = ("prompt_ids", "completion_ids", "loss_mask", "tool_mask", "logprobs", "new_logprobs", "ref_logprobs",
               "advantages", "rewards", "rewards_per_func", "reward_weights", "entropy", "group", "prompt_text",
               "completion_text", "step")
SUMMARY_VERSION = 3
STEP_CACHE = 4  # steps kept in memory
READ_THREADS = 2  # steps read at once by the summary pass


@dataclass
class RunStep:
    """One step of a run. Per sample: `prompt_ids` / `completion_ids` (int arrays), `loss_mask`, `tool_mask`,
    `logprobs` (the sampler's), `new_logprobs` (the trainer's), `ref_logprobs`, `entropy` (arrays over the
    completion tokens), `advantages` (one value per sample, or an array per token), `rewards` (total),
    `rewards_per_func` (name -> values), `group` (group id), `prompt_text` / `completion_text`.
    `columns`: every other per-sample column of the file, by name. `retokenized`: the ids were rebuilt from
    text with `tokenizer_name` (they may differ from the trainer's). `repeat_of`: the step whose completions this
    file logs again (TRL logs its last generation_batch_size completions at every log, so with
    steps_per_generation or num_iterations > 1 consecutive files hold one generation)."""

    step: int
    format: str
    notes: list[str] = field(default_factory=list)
    prompt_ids: list | None = None
    completion_ids: list | None = None
    loss_mask: list | None = None
    tool_mask: list | None = None
    logprobs: list | None = None
    new_logprobs: list | None = None
    ref_logprobs: list | None = None
    advantages: object = None
    rewards: np.ndarray | None = None
    rewards_per_func: dict | None = None
    reward_weights: list | None = None
    entropy: list | None = None
    group: np.ndarray | None = None
    prompt_text: list | None = None
    completion_text: list | None = None
    columns: dict = field(default_factory=dict)
    retokenized: bool = False
    tokenizer_name: str | None = None
    eos_token_ids: list[int] | None = None
    repeat_of: int | None = None  # the earlier step whose very completions this step's file holds again

    @property
    def samples(self) -> int:
        for name in ("completion_ids", "completion_text", "rewards", "advantages"):
            value = getattr(self, name)
            if value is not None:
                return len(value)
        return 0

    def lacks(self, name: str) -> str | None:
        """"not in this format (<format>)" for a field this step does not carry, else None."""
        if name not in FIELD_NAMES:
            raise InputError(f"{name!r} is not a field name; the names are {', '.join(FIELD_NAMES)}.")
        return None if name == "step" or getattr(self, name) is not None else f"not in this format ({self.format})"

    def to_rollout(self, tokenizer=None):
        """This step as a Rollout, so every existing tab can show it (see inspector/record/run_rollout.py)."""
        from .run_rollout import step_to_rollout

        return step_to_rollout(self, tokenizer)


def _signature(paths) -> str:
    parts = []
    for p in paths:
        st = os.stat(p)
        parts.append(f"{Path(p).name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def summary_dir() -> Path:
    from ..weights import cache_dir

    return Path(os.environ.get("INSPECTOR_RUN_SUMMARIES", cache_dir() / "run-summaries"))


class Run:
    """The steps of one run. `reader` (from inspector/sources/runs) finds complete steps and reads them.

    `problems`: messages about files that could not be read whole (the rest of the run still opens).
    """

    def __init__(self, reader, source: str):
        self.reader = reader
        self.source = str(source)
        self.format: str = reader.format
        self.fields: frozenset[str] = frozenset(reader.fields)
        self.notes: list[str] = list(getattr(reader, "notes", []))
        self._entries: dict[int, object] = {}
        self._steps: OrderedDict[int, RunStep] = OrderedDict()
        self._summary_rows: dict[int, dict] = {}
        self._signatures: dict[int, str] = {}
        self._loaded_cache = False
        self.tokenizer = None
        self.refresh()

    @property
    def problems(self) -> list[str]:
        return self.reader.problems

    def steps(self) -> list[int]:
        return sorted(self._entries)

    def refresh(self) -> list[int]:
        """Rescan the run; return the steps that completed since the last scan (a changed file is re-read)."""
        found = self.reader.scan()
        new = [n for n in sorted(found) if n not in self._entries or found[n].paths != self._entries[n].paths
               or _signature(found[n].paths) != self._signatures.get(n)]
        for n in new:
            self._steps.pop(n, None)
            self._summary_rows.pop(n, None)
        self._entries = dict(found)
        for n in self._entries:
            if n in new or n not in self._signatures:
                self._signatures[n] = _signature(self._entries[n].paths)
        return new

    def step(self, n: int) -> RunStep:
        """Step `n`, read when first asked and kept among the last few read."""
        if n not in self._entries:
            have = self.steps()
            raise InputError(f"step {n} is not in this run ({self.source}); it has "
                             f"{len(have)} complete step(s){': ' + _span(have) if have else ''}.")
        if n in self._steps:
            self._steps.move_to_end(n)
            return self._steps[n]
        step = self.reader.read(n, self._entries[n])
        self._steps[n] = step
        while len(self._steps) > STEP_CACHE:
            self._steps.popitem(last=False)
        return step

    def lacks(self, name: str) -> str | None:
        if name not in FIELD_NAMES:
            raise InputError(f"{name!r} is not a field name; the names are {', '.join(FIELD_NAMES)}.")
        return None if name in self.fields or name == "step" else f"not in this format ({self.format})"

    # ------------------------------------------------------------------------------------------ summary

    def _cache_path(self) -> Path:
        key = hashlib.sha1(f"{os.path.abspath(self.source)}|{self.format}".encode()).hexdigest()[:20]
        return summary_dir() / f"{key}.json"

    def _load_cache(self) -> None:
        self._loaded_cache = True
        try:
            saved = json.loads(self._cache_path().read_text())
        except (OSError, ValueError):
            return
        if saved.get("version") != SUMMARY_VERSION or saved.get("format") != self.format:
            return
        for row in saved.get("rows", []):
            n = int(row["step"])
            if n in self._entries and saved["signatures"].get(str(n)) == self._signatures.get(n):
                self._summary_rows.setdefault(n, row)

    def _save_cache(self) -> None:
        path = self._cache_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            rows = [self._summary_rows[n] for n in sorted(self._summary_rows)]
            tmp.write_text(json.dumps({"version": SUMMARY_VERSION, "format": self.format, "source": self.source,
                                       "signatures": {str(n): self._signatures.get(n) for n in self._summary_rows},
                                       "rows": rows}, default=_plain))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs the next open a re-read

    def _trend_row(self, n: int):
        """(step, summary row, None) or (step, None, the error): read in a worker thread, outside the step cache."""
        try:
            entry = self._entries[n]
            row = self.reader.trends(n, entry) if hasattr(self.reader, "trends") else None
            return n, (row if row is not None else step_trends(self.reader.read(n, entry))), None
        except Exception as exc:  # noqa: BLE001 - one unreadable step must not hide the others
            return n, None, exc

    def summary(self, progress=None):
        """One row per complete step (column "step") with the trend columns of `step_trends`.

        Rows come from the saved summary when a step's files are unchanged; the other steps are read in
        order, and `progress(done, total, row)` is called after each one. Saved at the end."""
        import pandas as pd

        if not self._loaded_cache:
            self._load_cache()
        todo = [n for n in self.steps() if n not in self._summary_rows]
        total, done, last_save = len(todo), 0, time.monotonic()
        failed: dict[int, dict] = {}
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:  # parsing releases the GIL: read ahead
            for n, row, error in pool.map(self._trend_row, todo):
                if error is None:
                    self._summary_rows[n] = row
                else:
                    self.reader.problem(f"step {n}: {error}")
                    row = failed[n] = {"step": n, "samples": 0}
                done += 1
                if progress is not None:
                    progress(done, total, row)
                if time.monotonic() - last_save > 30:
                    self._save_cache()
                    last_save = time.monotonic()
        if todo:
            self._save_cache()
        rows = [self._summary_rows.get(n) or failed[n] for n in self.steps() if n in self._summary_rows or n in failed]
        frame = pd.DataFrame(rows)
        if frame.empty:
            frame = pd.DataFrame({"step": pd.Series([], dtype="int64")})
        return frame


def _span(steps: list[int]) -> str:
    return f"{steps[0]}..{steps[-1]}" if len(steps) > 3 else ", ".join(map(str, steps))


def _plain(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


# ---------------------------------------------------------------------------------------------- trends

TRUNCATION_CAP = 3.0  # TRL 1.16 vllm_importance_sampling_clip_max default (sequence_mask mode)


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _groups_zero_std(values: np.ndarray, group: np.ndarray) -> tuple[float, int]:
    """(fraction of groups whose values all agree, number of groups)."""
    if values is None or group is None or len(group) == 0:
        return float("nan"), 0
    values = np.asarray(values, dtype=np.float64)
    zero = []
    for g in np.unique(group):
        v = values[group == g]
        v = v[np.isfinite(v)]
        if len(v) >= 2:
            zero.append(bool(np.allclose(v, v[0], atol=1e-6)))
    return (float(np.mean(zero)) if zero else float("nan")), len(zero)


def _per_sample_advantage(step: RunStep) -> np.ndarray | None:
    adv = step.advantages
    if adv is None:
        return None
    if isinstance(adv, np.ndarray) and adv.ndim == 1 and adv.dtype != object:
        return adv.astype(np.float64)
    out = []
    for i, a in enumerate(adv):
        a = np.asarray(a, dtype=np.float64)
        m = np.asarray(step.loss_mask[i], dtype=bool) if step.loss_mask is not None and len(step.loss_mask[i]) == len(a) else None
        a = a[m] if m is not None and m.any() else a
        out.append(float(a[0]) if len(a) else float("nan"))
    return np.asarray(out)


def _truncated(step: RunStep) -> float:
    trunc = step.columns.get("truncated")
    if trunc is not None:
        return _mean([float(bool(t)) for t in trunc])
    if step.completion_ids is None or step.retokenized:
        return float("nan")
    eos = step.eos_token_ids
    if not eos:  # the commonest last token stands in for EOS: most completions end with it
        lasts = [int(c[-1]) for c in step.completion_ids if len(c)]
        if not lasts:
            return float("nan")
        values, counts = np.unique(lasts, return_counts=True)
        eos = [int(values[np.argmax(counts)])]
    return _mean([0.0 if len(c) and int(c[-1]) in eos else 1.0 for c in step.completion_ids])


def _token_stats(step: RunStep) -> dict:
    row = {}
    masks = step.loss_mask
    if step.entropy is not None:
        ent = [np.asarray(e, dtype=np.float64)[np.asarray(m, bool)] if masks is not None else np.asarray(e, np.float64)
               for e, m in zip(step.entropy, masks or step.entropy)]
        flat = np.concatenate(ent) if ent else np.array([])
        row["entropy"] = float(np.nanmean(flat)) if flat.size else float("nan")
    if step.logprobs is not None and step.new_logprobs is not None:
        gaps, kls, dropped = [], [], []
        for i, (s, t) in enumerate(zip(step.logprobs, step.new_logprobs)):
            s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
            m = np.asarray(masks[i], bool) if masks is not None else np.ones(len(s), bool)
            d = (t - s)[m]
            d = d[np.isfinite(d)]
            gaps.append(np.abs(d))
            kls.append(np.exp(d) - d - 1.0)
            dropped.append(float(np.exp(min(d.sum(), 700.0)) > TRUNCATION_CAP))
        g = np.concatenate(gaps) if gaps else np.array([])
        k = np.concatenate(kls) if kls else np.array([])
        row["gap_abs"] = float(g.mean()) if g.size else float("nan")
        row["gap_kl"] = float(k.mean()) if k.size else float("nan")
        row["dropped_frac"] = _mean(dropped)
    return row


def step_trends(step: RunStep) -> dict:
    """The summary row of one step: samples, reward mean/std and per function, completion length (tokens, or
    characters when the format has text only), truncated fraction, zero-std groups, advantage spread, entropy
    (over loss-masked tokens), the sampler-trainer gap (mean |trainer - sampler| and mean k3 KL over
    loss-masked tokens) and the dropped fraction (samples TRL 1.16's default sequence_mask correction, cap
    3.0, would drop), and `repeat_of` for a step that logs an earlier step's completions again. A column is NaN
    when the format lacks what it needs."""
    row: dict = {"step": int(step.step), "samples": int(step.samples)}
    if step.repeat_of is not None:
        row["repeat_of"] = int(step.repeat_of)
    rewards = step.rewards
    if rewards is None and step.rewards_per_func:
        w = step.reward_weights or [1.0] * len(step.rewards_per_func)
        rewards = np.nansum(np.stack([np.asarray(v, np.float64) * wi
                                      for v, wi in zip(step.rewards_per_func.values(), w)]), axis=0)
    if rewards is not None:
        r = np.asarray(rewards, np.float64)
        row["reward_mean"], row["reward_std"] = _mean(r), float(np.nanstd(r)) if r.size else float("nan")
    for name, values in (step.rewards_per_func or {}).items():
        row[f"reward/{name}"] = _mean(np.asarray(values, np.float64))
    if step.completion_ids is not None:
        lengths = [len(c) for c in step.completion_ids]
        row["length_mean"], row["length_max"] = _mean(lengths), int(max(lengths, default=0))
    elif step.completion_text is not None:
        from .run_rollout import _completion_string

        row["length_chars_mean"] = _mean([len(_completion_string(c)) for c in step.completion_text])
    row["truncated_frac"] = _truncated(step)
    adv = _per_sample_advantage(step)
    signal = rewards if rewards is not None else adv
    row["zero_std_groups"], row["groups"] = _groups_zero_std(signal, step.group)
    if adv is not None:
        row["adv_std"], row["adv_absmax"] = float(np.nanstd(adv)), float(np.nanmax(np.abs(adv))) if adv.size else float("nan")
    row.update(_token_stats(step))
    return row
