"""The hosting concerns: ZeroGPU's decorator, the one concurrency group of model work, and the download
folders, one per session, swept so that disk stays bounded by the sessions."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from gradio.utils import get_upload_folder

from ..limits import Limits
from ..record.format import rollout_to_json, rollout_to_jsonl, rollout_to_parquet
from ..record.rollout import Rollout
from ..views import batch_table

try:  # ZeroGPU on Spaces: run the model work inside a GPU allocation; a plain call everywhere else
    import spaces
except ImportError:  # pragma: no cover - depends on the host
    spaces = None


MODEL_GROUP = "models"
"""The one concurrency group of every handler that loads or runs a model (run, open a file, the API's rollout
and open_file, load): the queue bounds all model work together. INSPECTOR_MODEL_CONCURRENCY (default 1)."""


def gpu_duration() -> int:
    """Seconds of GPU a model-heavy handler asks ZeroGPU for: generation's time limit plus loading and passes."""
    return int(Limits.from_env().max_time) + 60


def gpu(fn):
    """Mark a model-heavy handler: `spaces.GPU` with a duration that covers INSPECTOR_MAX_TIME (a plain call
    where the `spaces` package is absent or the Space has no ZeroGPU). Its arguments must pickle."""
    fn.gpu_duration = gpu_duration()  # set before wrapping: the wrapper copies it
    return spaces.GPU(duration=fn.gpu_duration)(fn) if spaces is not None else fn


def model_event() -> dict:
    """The event settings of a model-heavy handler: the shared concurrency group."""
    return {"concurrency_id": MODEL_GROUP,
            "concurrency_limit": int(os.environ.get("INSPECTOR_MODEL_CONCURRENCY", "1"))}


DOWNLOADS_TTL = 6 * 3600  # as long as a session keeps its rollout


def downloads_root() -> Path:
    """Where the page's downloads are written: inside gradio's cache folder, so that gradio serves them without
    copying each one again, one folder per session."""
    return Path(get_upload_folder()) / "rollout-inspector-downloads"


def write_downloads(r: Rollout, session: str | None = None) -> tuple[str, list[str]]:
    """Write the rollout's downloads into the session's folder, replacing its previous rollout's, and remove
    the folders of sessions idle for longer than a session keeps its rollout: disk stays bounded by the
    sessions, not by the rollouts."""
    root = downloads_root()
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    name = "".join(c for c in (session or "") if c.isalnum())[:64] or "anonymous"
    for old in root.iterdir():
        try:
            if old.name.startswith(name + "-") or now - old.stat().st_mtime > DOWNLOADS_TTL:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # removed meanwhile by another session's sweep
            pass
    folder = Path(tempfile.mkdtemp(prefix=name + "-", dir=root))  # a new name: the page fetches it afresh
    table = folder / "rollout_batch.csv"
    batch_table(r).to_csv(table, index=False)
    record = folder / "rollout.json"
    record.write_text(rollout_to_json(r), encoding="utf-8")
    rows = folder / "rollout.jsonl"
    rows.write_text(rollout_to_jsonl(r), encoding="utf-8")
    parquet = folder / "rollout.parquet"
    rollout_to_parquet(r, str(parquet))
    return str(table), [str(record), str(rows), str(parquet)]
