"""Open a training run written by a trainer: `open_run(source)` finds the format and returns a `Run`.

One reader module per format: trl_completions (TRL 1.16 completions parquet, a folder or a Hub dataset id),
verl (rollout / validation generation JSONL), nemo_rl (train_data_step<N>.jsonl), prime_rl (token exports),
pickles (SkyRL .pkl, slime .pt: never unpickled freely), native (the inspector's own, written by RunWriter).
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import InputError
from ...record.run import Run
from .native import NativeReader, RunWriter, is_native
from .nemo_rl import NemoRLReader
from .pickles import PickleRefused, SkyRLReader, SlimeReader
from .prime_rl import PrimeRLReader
from .trl_completions import TRLCompletionsReader, hub_folder
from .verl import VerlReader

FORMATS = {"trl-completions": TRLCompletionsReader, "verl": VerlReader, "nemo-rl": NemoRLReader,
           "prime-rl": PrimeRLReader, "skyrl": SkyRLReader, "slime": SlimeReader, "inspector": NativeReader}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _has(folder: Path, pattern: str) -> bool:
    rx = re.compile(pattern)
    try:
        return any(rx.fullmatch(p.name) for p in folder.iterdir())
    except OSError:
        return False


def _file_format(path: Path) -> tuple[str, Path]:
    name = path.name
    if re.fullmatch(r"(?:.*_)?completions_\d+\.parquet", name):
        return "trl-completions", path
    if re.fullmatch(r"step_\d+\.parquet", name) and is_native(path):
        return "inspector", path
    if re.fullmatch(r"train_data_step\d+\.jsonl", name):
        return "nemo-rl", path.parent
    if re.fullmatch(r"rank_\d+\.jsonl", name) and re.fullmatch(r"step_\d+", path.parent.name):
        return "prime-rl", path.parent.parent
    if re.fullmatch(r"\d+\.jsonl", name):
        return "verl", path
    if re.fullmatch(r"global_step_\d+_training_input\.pkl", name):
        return "skyrl", path
    if re.fullmatch(r"\d+\.pt", name):
        return "slime", path
    raise InputError(f"{name}: not a file of a known run format ({', '.join(FORMATS)}).")


def _folder_format(folder: Path) -> str:
    native = [p for p in sorted(folder.glob("step_*.parquet"))[:1] if is_native(p)]
    checks = (
        ("inspector", bool(native)),
        ("prime-rl", (folder / "token_exports").is_dir() or _has(folder, r"step_\d+") and any(
            _has(p, r"rank_\d+\.jsonl") for p in folder.glob("step_*"))),
        ("trl-completions", (folder / "completions").is_dir() or _has(folder, r"completions_\d+\.parquet")),
        ("nemo-rl", _has(folder, r"train_data_step\d+\.jsonl")),
        ("skyrl", (folder / "dumped_data").is_dir() or _has(folder, r"global_step_\d+_training_input\.pkl")),
        ("slime", (folder / "train_data").is_dir() or _has(folder, r"\d+\.pt")),
        ("verl", _has(folder, r"\d+\.jsonl")),
    )
    for fmt, hit in checks:
        if hit:
            return fmt
    raise InputError(
        f"{folder}: no run found. Expected one of: TRL completions_<step>.parquet (or completions/), verl <step>.jsonl, "
        "NeMo-RL train_data_step<N>.jsonl, prime-rl token_exports/step_<N>/rank_<R>.jsonl, SkyRL "
        "dumped_data/global_step_<N>_training_input.pkl, slime train_data/<id>.pt, or the inspector's step_<N>.parquet.")


def open_run(source, *, tokenizer=None, allow_pickle: bool = False, hosted: bool = False) -> Run:
    """A Run over `source`: a file or folder of any supported format, or a Hub dataset id written by TRL's
    `log_completions_hub_repo` (read through the local Hub cache; offline when cached).

    `tokenizer` (a name or object) tokenizes the text-only formats. `allow_pickle=True` lets a local pickle that
    needs more than the whitelisted globals load (never on a hosted deployment). `hosted` applies the upload size
    limit (inspector.limits, max_upload_bytes) to each file and refuses unsafe pickles."""
    text = str(source).strip()
    path = Path(text).expanduser()
    if not text:
        raise InputError("Give a run: a folder, a file, or a Hub dataset id.")
    if path.exists():
        fmt, root = _file_format(path) if path.is_file() else (_folder_format(path), path)
    elif HUB_ID.fullmatch(text) and not text.startswith((".", "/")):
        fmt, root = "trl-completions", hub_folder(text)
    else:
        raise InputError(f"{text}: no such file or folder (and not a Hub dataset id of the form owner/name).")
    limit = None
    if hosted:
        from ...limits import Limits

        limit = Limits.from_env().max_upload_bytes
    kw = {"tokenizer": tokenizer, "limit_bytes": limit}
    if fmt in ("skyrl", "slime"):
        kw.update(allow_pickle=allow_pickle and not hosted, hosted=hosted)
    run = Run(FORMATS[fmt](root, **kw), text)
    run.tokenizer = tokenizer
    return run


__all__ = ["FORMATS", "PickleRefused", "RunWriter", "open_run"]
