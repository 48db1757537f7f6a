"""verl 0.9.1 generation dumps: `trainer.rollout_data_dir/<global_steps>.jsonl` and `trainer.validation_data_dir`.

Follows verl 0.9.1 (verl-0.9.1-py3-none-any.whl), verl/trainer/ppo/ray_trainer.py:453-477 `_write_generations`
(one `json.dumps(entry, ensure_ascii=False, default=str)` line per sample: `input`, `output`, `gts`, `score`,
`step`, every `reward_extra_info` key with one value per row, `request_id` when present), called from
`_log_rollout_data` (514-546) for training and `_validate` (596-720) for validation (which always adds `reward`;
`0.jsonl` is the validation before training). The v1 trainer (verl/trainer/ppo/v1/trainer_base.py:1226-1343)
writes the same keys plus `uid` (`{sample}_{rollout}_{output}`), rows sorted by it. File names are the step without
zero padding; no completion marker: a step is finished when its last byte is a newline and a newer step exists or
the file has stopped changing. Text only: `input` / `output` were decoded with `skip_special_tokens=True` (chat
template tokens, EOS and pads are gone), so ids are rebuilt by tokenizing and may differ from the trainer's.
Not in this format: token ids, masks, logprobs, advantages, entropy, per-function rewards (extra numeric keys are
kept as columns), group ids (the `uid` sample part, else consecutive equal inputs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...record.run import RunStep
from ._base import Reader, StepEntry, group_by_prefix, read_jsonl

PATTERN = r"(\d+)\.jsonl"


class VerlReader(Reader):
    format = "verl"
    fields = frozenset({"rewards", "group", "prompt_text", "completion_text", "step"})

    def scan(self) -> dict[int, StepEntry]:
        files = self.step_files(PATTERN)
        newest = max(files, default=None)
        found = {n: StepEntry((str(p),)) for n, p in files.items()
                 if self.jsonl_done(str(p), newer_exists=n != newest) and self.within_limit(str(p))}
        self.check_gaps(sorted(files))
        return found

    def read(self, n: int, entry: StepEntry) -> RunStep:
        path = entry.paths[0]
        name = Path(path).name
        rows = [r for r in read_jsonl(path, self, where=name) if isinstance(r, dict)]
        step = RunStep(step=n, format=self.format)
        step.prompt_text = [str(r.get("input", "")) for r in rows]
        step.completion_text = [str(r.get("output", "")) for r in rows]
        scores = []
        for i, r in enumerate(rows):
            s = r.get("score")
            if isinstance(s, (int, float)) and not isinstance(s, bool):
                scores.append(float(s))
            else:
                if s is not None:
                    self.problem(f"{name} line {i + 1}: 'score' is {type(s).__name__}, not a number; read as NaN.")
                scores.append(float("nan"))
        step.rewards = np.asarray(scores, dtype=np.float64)
        keys = [k for r in rows for k in r if k not in ("input", "output", "score")]
        for k in dict.fromkeys(keys):
            step.columns[k] = [r.get(k) for r in rows]
        uids = step.columns.get("uid")
        if uids and all(isinstance(u, str) and u.count("_") >= 2 for u in uids):
            # `{uid}_{session_id}_{index}` (v1/agent_loop_tq.py:178-193); the dataset's uid may hold "_" itself:
            # split from the right, as the trainer's own sort does (v1/trainer_base.py:1316-1324)
            step.group = group_by_prefix([u.rsplit("_", 2)[0] for u in uids])
        else:
            step.group = group_by_prefix(step.prompt_text)
        step.notes.append("verl generation dump: `score` is the summed token-level score; groups are "
                          + ("the uid's sample part." if uids else "consecutive rows with the same input."))
        if n == 0:
            step.notes.append("0.jsonl: verl writes step 0 only for the validation before training.")
        return step
