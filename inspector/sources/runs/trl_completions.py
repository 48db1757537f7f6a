"""TRL 1.16 `GRPOTrainer(log_completions=True)`: `<output_dir>/completions/completions_<step:05d>.parquet`.

Follows trl 1.16.0, trl/trainer/grpo_trainer.py:3341-3357 (`GRPOTrainer.log`): a pandas DataFrame with `step`,
`prompt`, `completion` (strings, or message lists for a conversational dataset), one column per reward function
(named by `reward_func_names`, raw and unweighted, NaN where a function returned None), the `log_extra` columns
(sorted), then `advantage`; written with `DataFrame.to_parquet`, no temp file, so a step is complete once its
Parquet footer reads. With `log_completions_hub_repo` (grpo_trainer.py:1220-1242) huggingface_hub's
CommitScheduler pushes the same files to the root of a dataset repo; it is read here through the local Hub cache
(offline when cached). Text only: the completions were decoded with `skip_special_tokens=True`, so ids are rebuilt
by tokenizing (they may differ from the trainer's). Not in this format: token ids, masks, logprobs, entropy,
reward weights (weight 1 is assumed for the total), group ids (consecutive equal prompts form a group). A numeric
`log_extra` column cannot be told from a reward column; both are read as reward functions.
The rows are TRL's `_logs` deques (maxlen generation_batch_size, grpo_trainer.py:1088-1095), never cleared by
`log()`: with steps_per_generation or num_iterations > 1 one generation is logged again under the next steps'
numbers. Such a step is marked `repeat_of` the step that first logged the same (prompt, completion) rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import InputError
from ...record.run import RunStep
from ._base import Reader, StepEntry, group_by_prefix

PATTERN = r"completions_(\d+)\.parquet"
FIXED = ("step", "prompt", "completion", "advantage")


def hub_folder(repo_id: str) -> Path:
    """The local folder of a Hub dataset written by `log_completions_hub_repo` (downloaded, or the cached copy when
    offline). Raises InputError naming the id when it cannot be had."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a transformers dependency
        raise InputError(f"reading the Hub dataset {repo_id!r} needs huggingface_hub: {exc}") from exc
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=["*.parquet", "README.md"]))
    except Exception as exc:  # noqa: BLE001 - offline, missing, private: one message naming the id
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        why = ("it is not in the local Hub cache and HF_HUB_OFFLINE is set" if offline
               else f"it could not be downloaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        raise InputError(f"The Hub dataset {repo_id!r} cannot be opened: {why}. Download it once online "
                         f"(huggingface-cli download {repo_id} --repo-type dataset) or give a local folder.") from None


def _footer_ok(path: str) -> bool:
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path).metadata
        return True
    except Exception:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError on a partial file
        return False


class TRLCompletionsReader(Reader):
    format = "trl-completions"
    fields = frozenset({"rewards_per_func", "advantages", "group", "prompt_text", "completion_text", "step"})

    def __init__(self, root: Path, **kw):
        super().__init__(root, **kw)
        self._found: dict[int, StepEntry] = {}
        self._signatures: dict[tuple, str] = {}

    def scan(self) -> dict[int, StepEntry]:
        folder = self.root / "completions" if (self.root / "completions").is_dir() else self.root
        files = self.step_files(PATTERN, folder, file_pattern=r"(?:.*_)?" + PATTERN)
        found = {}
        for n, p in files.items():
            if self.within_limit(str(p)) and _footer_ok(str(p)):
                found[n] = StepEntry((str(p),))
        self.check_gaps(sorted(files))
        self._found = found
        return found

    def _rows_signature(self, path: str, table=None) -> str | None:
        """A digest of a file's (prompt, completion) rows, in order (from `table` when the file was just read);
        None when they cannot be read."""
        import hashlib

        import pyarrow.parquet as pq

        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        if key not in self._signatures:
            try:
                table = table if table is not None else pq.read_table(path, columns=["prompt", "completion"])
                rows = repr((table.column("prompt").to_pylist(), table.column("completion").to_pylist()))
            except Exception:  # noqa: BLE001 - a file without those columns repeats nothing
                return None
            self._signatures[key] = hashlib.sha1(rows.encode()).hexdigest()
        return self._signatures[key]

    def _repeat_of(self, n: int, path: str, table) -> int | None:
        """The first step of the run of files just before `n` whose rows equal step n's (read as `table`), if any."""
        earlier = sorted(m for m in self._found if m < n)
        mine, first = self._rows_signature(path, table), None
        for m in reversed(earlier):
            if mine is None or self._rows_signature(self._found[m].paths[0]) != mine:
                break
            first = m
        return first

    def read(self, n: int, entry: StepEntry) -> RunStep:
        import pyarrow.parquet as pq

        path = entry.paths[0]
        table = pq.read_table(path)
        df = table.to_pandas()
        name = Path(path).name
        step = RunStep(step=n, format=self.format)
        missing = [c for c in ("prompt", "completion") if c not in df.columns]
        if missing:
            self.problem(f"{name}: no {' / '.join(missing)} column: not a TRL completions log; left out.")
            step.completion_text, step.prompt_text = [], []
            return step
        step.prompt_text = list(df["prompt"])
        step.completion_text = list(df["completion"])
        step.group = group_by_prefix([str(_plain(p)) for p in step.prompt_text])
        rewards, others = {}, {}
        for col in df.columns:
            if col in FIXED:
                continue
            kind = df[col].dtype.kind
            if kind in "fiub":
                rewards[col] = df[col].to_numpy(dtype=np.float64)
            else:
                others[col] = df[col].tolist()
        if "advantage" in df.columns:
            if df["advantage"].dtype.kind in "fi":
                step.advantages = df["advantage"].to_numpy(dtype=np.float64)
            else:
                self.problem(f"{name}: the 'advantage' column holds {df['advantage'].dtype} values, not numbers; "
                             "left out for this step.")
        step.rewards_per_func = rewards or None
        step.columns = others
        step.notes.append("TRL completions log: the reward columns are raw per-function rewards (TRL does not write "
                          "the reward weights: weight 1 is assumed for the total).")
        step.repeat_of = self._repeat_of(n, path, table)
        if step.repeat_of is not None:
            step.notes.append(f"Step {n} logs the same completions as step {step.repeat_of}: TRL writes its last "
                              "generation_batch_size completions at every log, and with steps_per_generation or "
                              "num_iterations > 1 one generation serves several steps. Its trend points repeat "
                              f"step {step.repeat_of}'s.")
        return step


def _plain(value):
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
