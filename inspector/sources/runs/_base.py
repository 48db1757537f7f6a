"""What the run readers share: a step's files, the completeness rules, JSONL reading that survives bad lines."""

from __future__ import annotations

import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STABLE_SECONDS = 2.0
"""A JSONL step file without a completion marker counts as finished once its last byte is a newline and either a
newer step's file exists or it has not changed (mtime) for this long."""


@dataclass
class StepEntry:
    paths: tuple[str, ...]
    info: dict = field(default_factory=dict)


class Reader:
    """Base of the per-format readers: `scan()` -> {step: StepEntry} of complete steps, `read(n, entry)` -> RunStep.

    `problems` collects messages about unreadable parts; `limit_bytes` (set on a hosted deployment) refuses a
    file over the upload limit with a message and leaves the rest of the run readable."""

    format = ""
    fields: frozenset = frozenset()

    def __init__(self, root: Path, *, tokenizer=None, limit_bytes: int | None = None):
        self.root = Path(root)
        self.tokenizer = tokenizer
        self.limit_bytes = limit_bytes
        self.problems: list[str] = []
        self.notes: list[str] = []

    def step_files(self, pattern: str, folder: Path | None = None, file_pattern: str | None = None) -> dict[int, Path]:
        """{step: path} of the files named by `pattern` (its group: the step) in `folder` (the root by default); a
        root that is one file gives that file alone, matched by `file_pattern` (`pattern` by default)."""
        if self.root.is_file():
            found = numbered(self.root.parent, file_pattern or pattern)
            return {n: p for n, p in found.items() if p.name == self.root.name}
        return numbered(folder or self.root, pattern)

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def within_limit(self, path: str) -> bool:
        if self.limit_bytes is None:
            return True
        size = os.path.getsize(path)
        if size > self.limit_bytes:
            from ...limits import Limits

            self.problem(f"{Path(path).name}: {size / 1e6:.1f} MB is over the upload limit of "
                         f"{self.limit_bytes / 1e6:.1f} MB (max_upload_bytes, set by "
                         f"{Limits.env_name('max_upload_bytes')}); this file is left out.")
            return False
        return True

    def jsonl_done(self, path: str, newer_exists: bool) -> bool:
        """The JSONL completeness rule (verl, NeMo-RL: no marker, the file is written line by line)."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_size == 0:
            return newer_exists
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            ends = fh.read(1) == b"\n"
        stable = time.time() - st.st_mtime >= STABLE_SECONDS
        if ends:
            return newer_exists or stable
        if newer_exists:  # a newer step exists, so this one will never be finished: read what it holds
            self.problem(f"{Path(path).name}: the last line is cut off (no newline at the end); it is left out.")
            return True
        return False

    def check_gaps(self, steps: list[int]) -> None:
        """A message for each step missing between the run's regularly spaced steps."""
        if len(steps) < 3:
            return
        gaps = np.diff(steps)
        stride = int(np.bincount(gaps).argmax())
        missing = [n for a, b in zip(steps, steps[1:]) if b - a > stride for n in range(a + stride, b, stride)]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            self.problem(f"step(s) {shown} missing: no file for them between the steps written every {stride}.")


def numbered(folder: Path, pattern: str) -> dict[int, Path]:
    """Files (or folders) in `folder` whose name matches `pattern` (one group: the step), by step."""
    rx = re.compile(pattern)
    out = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in names:
        m = rx.fullmatch(name)
        if m:
            out[int(m.group(1))] = folder / name
    return out


def read_jsonl(path: str, reader: Reader, *, schema=None, where: str = "") -> list[dict]:
    """Every line of a JSONL file as a dict; a line that is not whole JSON gets a message and is left out."""
    rows = []
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            cut = i == len(lines) and not data.endswith(b"\n")
            reader.problem(f"{where or Path(path).name} line {i}: not valid JSON"
                           f"{' (cut off: the file ends mid-line)' if cut else ' (truncated or corrupt)'}; left out.")
    return rows


def arrow_jsonl(path: str, schema):
    """A JSONL file through pyarrow's JSON reader with an explicit schema (other keys ignored); None when the
    file is not clean (a bad line, a value of another type): the caller then reads it line by line."""
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if not data.endswith(b"\n"):
            return None
        return pj.read_json(io.BytesIO(data), read_options=pj.ReadOptions(block_size=max(1 << 20, len(data) + 1)),
                            parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError):
        return None


def list_column(table, name: str, dtype) -> list[np.ndarray] | None:
    """A pyarrow list column as one numpy array per row (nulls inside become NaN for floats)."""
    if name not in table.column_names:
        return None
    col = table.column(name).combine_chunks()
    if col.null_count == len(col):
        return None
    offsets = col.offsets.to_numpy()
    values = col.values
    if np.issubdtype(dtype, np.floating):
        flat = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    else:
        import pyarrow as pa

        if values.null_count:
            values = values.fill_null(pa.scalar(False if pa.types.is_boolean(values.type) else 0, values.type))
        flat = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    start = offsets[0]
    return [flat[a - start:b - start] for a, b in zip(offsets[:-1], offsets[1:])]


def numeric_list(value, name: str, where: str, reader: Reader, dtype=np.float64) -> np.ndarray | None:
    """A JSON list of numbers (None -> NaN) as an array; a message and None when it holds something else."""
    if value is None:
        return None
    try:
        arr = np.asarray([np.nan if v is None else v for v in value], dtype=dtype)
    except (TypeError, ValueError):
        reader.problem(f"{where}: {name!r} holds {type(value).__name__} values that are not numbers; left out.")
        return None
    return arr


def group_by_prefix(prompts: list) -> np.ndarray:
    """Group ids: samples with the same prompt (ids or text) share one, numbered in order of appearance."""
    seen: dict = {}
    out = []
    for p in prompts:
        key = p.tobytes() if isinstance(p, np.ndarray) else str(p)
        out.append(seen.setdefault(key, len(seen)))
    return np.asarray(out, dtype=np.int64)
