"""Model specs and loading: policy, reference, reward and value models with their tokenizers.

The defaults work offline (`weights` says where each model is read from). The default reward model is the
default policy's backbone with the sentiment score head that `scripts/build_reward_head.py` trains
(`inspector/assets/sentiment_head.safetensors`).

Models load once per process: `load_models` keeps loaded modules in a cache shared by all callers, bounded in
count and parameters (INSPECTOR_MODEL_CACHE_MODELS, INSPECTOR_MODEL_CACHE_PARAMS); the least recently used
model is evicted and its memory returned. Each model loads under its own lock, so a slow download does not hold
up a model that is already cached or another download.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .errors import ModelLoadError
from .limits import Limits
from .weights import (DEFAULT_POLICY, DEFAULT_REWARD, HEAD_FILE, check_allowed, import_transformers, offline,
                      resolve_source)

NO_VALUE = "none"
"""The value model name that means no value model: every value is 0 (noted in the record and the PPO panel)."""

PRECISIONS = {
    "float32": (torch.float32, False),
    "bfloat16": (torch.bfloat16, False),
    "bfloat16-fp32-head": (torch.bfloat16, True),
}
"""The trainer-side precisions the page offers: fp32, bf16, and bf16 with the LM head in fp32 (TRL's
`cast_lm_head_to_fp32`). A mismatch cause of its own: a bf16 recompute drifts from an fp32 sampler."""

_registry_lock = threading.Lock()  # guards the two dicts below; never held while a model loads
_cache: OrderedDict[tuple, tuple[torch.nn.Module, object]] = OrderedDict()  # least recently used first
_load_locks: dict[tuple, threading.Lock] = {}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_error(role: str, name: str, exc: Exception) -> ModelLoadError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "trust_remote_code" in str(exc):
        return ModelLoadError(
            f"The {role} model {name!r} needs custom code from its repository (trust_remote_code), "
            "which the inspector does not run unless you ask for it explicitly."
        )
    if offline() or "offline" in str(exc).lower() or "connect" in str(exc).lower():
        hint = "the Hub is not reachable from here (offline); use a local folder or a model already in the cache"
    else:
        hint = "check the Hub id (organisation/name) or the local folder path"
    return ModelLoadError(f"Could not load the {role} model {name!r}: {text} ({hint}).")


def _prepare_tokenizer(tokenizer) -> bool:
    """Left padding, and a pad token where there is none (the EOS token, as TRL's examples do).

    Returns True when a pad token had to be set.
    """
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is not None:
        return getattr(tokenizer, "_inspector_pad_added", False)  # cached tokenizers remember it
    if tokenizer.eos_token is None:
        raise ModelLoadError("The tokenizer has neither a pad token nor an EOS token to pad with.")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer._inspector_pad_added = True
    return True


def resolve_precision(dtype) -> tuple[torch.dtype, bool]:
    """(torch dtype, LM head in fp32) for a torch dtype or one of PRECISIONS' names. Raises ModelLoadError."""
    if isinstance(dtype, torch.dtype):
        return dtype, False
    if dtype in PRECISIONS:
        return PRECISIONS[dtype]
    raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(PRECISIONS)} (or a torch dtype).")


def cast_lm_head_to_fp32(model: torch.nn.Module) -> None:
    """TRL 1.16's `cast_lm_head_to_fp32` (GRPOTrainer.__init__): the LM head's weight in fp32, its forward a
    fp32 linear of fp32 hidden states; with tied embeddings the (now fp32) embedding's outputs are cast back
    to the model's dtype, so only the logits change precision."""
    original = model.lm_head.weight.dtype
    lm_head = model.lm_head.float()
    model.lm_head = lm_head

    def forward(hidden_states):
        return torch.nn.functional.linear(hidden_states.to(torch.float32), lm_head.weight.to(torch.float32),
                                          None if lm_head.bias is None else lm_head.bias.to(torch.float32))

    lm_head.forward = forward
    if model.config.tie_word_embeddings:
        model.get_input_embeddings().register_forward_hook(lambda module, args, output: output.to(original))


def _place(model: torch.nn.Module, device: str, device_map) -> torch.nn.Module:
    """On `device`, unless accelerate already placed it (device_map): then where it is."""
    return (model if device_map else model.to(device)).eval()


def _load_causal_lm(name: str, device: str, dtype, trust_remote_code: bool, progress=None,
                    role: str = "policy", device_map=None):
    import_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(name, progress)
    torch_dtype, fp32_head = resolve_precision(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model, info = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
            output_loading_info=True, **({"device_map": device_map} if device_map else {}),
        )
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _load_error(role, name, exc) from exc
    missing = info.get("missing_keys", [])
    if missing and any("embed" in k or "lm_head" in k or "layers.0." in k for k in missing):
        raise ModelLoadError(
            f"The {role} model {name!r} is not a trained causal language model (its checkpoint lacks "
            f"{', '.join(sorted(missing)[:3])}); is it a classifier or a reward model?"
        )
    if fp32_head:
        cast_lm_head_to_fp32(model)
    return _place(model, device, device_map), tokenizer


def _builtin_reward(device: str, dtype, progress=None, device_map=None):
    """The default reward model: the policy's backbone (shared, not copied) and the trained sentiment head."""
    from safetensors.torch import load_file
    import_transformers()
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if not HEAD_FILE.is_file():
        raise ModelLoadError(f"The reward head {HEAD_FILE} is missing: rebuild it with `python scripts/build_reward_head.py`.")
    policy, tokenizer = _cached(("causal", DEFAULT_POLICY, device, dtype, False, device_map),
                                lambda: _load_causal_lm(DEFAULT_POLICY, device, dtype, False, progress,
                                                        device_map=device_map))
    config = AutoConfig.from_pretrained(resolve_source(DEFAULT_POLICY))
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    model.model = policy.model
    head = load_file(str(HEAD_FILE))
    model.score = torch.nn.Linear(config.hidden_size, 1, bias=True)
    model.score.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
    # the head reads the backbone's last hidden states: where the LM head is (the last shard under a device_map)
    model.score.to(device=policy.get_output_embeddings().weight.device, dtype=resolve_precision(dtype)[0])
    return model.eval(), tokenizer


def _load_classifier(role: str, name: str, device: str, dtype, trust_remote_code: bool, progress=None, device_map=None):
    if name == DEFAULT_REWARD:
        return _builtin_reward(device, dtype, progress, device_map)
    import_transformers()
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_source(name, progress)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _load_error(role, name, exc) from exc
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any("SequenceClassification" in a for a in architectures):
        raise ModelLoadError(
            f"The {role} model {name!r} is a {architectures[0]}, with no trained score head; a {role} model is a "
            "sequence-classification model with one label (e.g. a reward model trained with TRL's RewardTrainer)."
        )
    if getattr(config, "num_labels", 1) != 1:
        raise ModelLoadError(
            f"The {role} model {name!r} has {config.num_labels} labels; a {role} model needs exactly one "
            "(a scalar score head)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=resolve_precision(dtype)[0], trust_remote_code=trust_remote_code, use_safetensors=True,
            output_loading_info=True, **({"device_map": device_map} if device_map else {}),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _load_error(role, name, exc) from exc
    if model.config.num_labels != 1:
        raise ModelLoadError(
            f"The {role} model {name!r} has {model.config.num_labels} labels; a {role} model needs exactly one "
            "(a scalar score head)."
        )
    if any(key.startswith(("score.", "classifier.")) for key in info.get("missing_keys", [])):
        raise ModelLoadError(
            f"The {role} model {name!r} has no trained score head (its weights hold only a language model); "
            "pick a model trained for sequence classification with one label."
        )
    if not hasattr(model, "score") or not hasattr(model, model.base_model_prefix):
        raise ModelLoadError(f"The {role} model {name!r} has no `score` head on a backbone, which get_reward needs.")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return _place(model, device, device_map), tokenizer


def _parameter_ids(entry) -> dict[int, int]:
    """The parameters (and buffers) an entry holds, by storage address, with their element counts."""
    module = entry[0]
    return {t.data_ptr(): t.numel() for t in (*module.parameters(), *module.buffers())}


def cache_contents() -> list[tuple[tuple, int]]:
    """The cached models, least recently used first, with the parameters each holds that no earlier one does."""
    with _registry_lock:
        seen: set[int] = set()
        out = []
        for key, entry in _cache.items():
            own = {p: n for p, n in _parameter_ids(entry).items() if p not in seen}
            seen.update(own)
            out.append((key, sum(own.values())))
        return out


def _release_memory() -> None:
    """Return freed tensors' memory: collect cycles, and hand glibc's free pages back to the system."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _evict(keep: tuple) -> None:
    """Drop least recently used models until the cache is within its limits (`keep` always stays).

    Count: INSPECTOR_MODEL_CACHE_MODELS; parameters (shared ones counted once): INSPECTOR_MODEL_CACHE_PARAMS.
    """
    limits = Limits.from_env()
    evicted = False
    with _registry_lock:
        while len(_cache) > 1:
            counts: dict[int, int] = {}
            for entry in _cache.values():
                counts.update(_parameter_ids(entry))
            if len(_cache) <= limits.model_cache_models and sum(counts.values()) <= limits.model_cache_params:
                break
            oldest = next(k for k in _cache if k != keep)
            del _cache[oldest]
            evicted = True
    if evicted:
        _release_memory()


def clear_cache() -> None:
    """Drop every cached model and return the memory (the next load reads from disk again)."""
    with _registry_lock:
        _cache.clear()
    _release_memory()


def _cached(key: tuple, loader):
    """The cached (model, tokenizer) for `key`, loaded under a lock of its own when missing.

    Other keys load or hit the cache meanwhile; two callers of the same key load it once.
    """
    with _registry_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        lock = _load_locks.setdefault(key, threading.Lock())
    with lock:
        with _registry_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
        entry = loader()
        with _registry_lock:
            _cache[key] = entry
    _evict(keep=key)
    return entry


@dataclass
class Models:
    """The four models of a PPO rollout and their tokenizers. `reference` may be `policy` itself, and `value`
    may be `reward` itself, as in TRL when they are not given."""

    policy: torch.nn.Module
    reference: torch.nn.Module
    reward: torch.nn.Module
    value: torch.nn.Module | None  # None: no value model (value="none"), every value is 0
    tokenizer: object
    reward_tokenizer: object
    value_tokenizer: object | None
    names: dict[str, str]
    device: str
    dtype: torch.dtype
    pad_token_added: bool = False
    precision: str = "float32"           # one of PRECISIONS, or the torch dtype's name
    device_map: str | dict | None = None
    load_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def reference_is_policy(self) -> bool:
        return self.reference is self.policy

    @property
    def value_is_reward(self) -> bool:
        return self.value is self.reward


def load_models(
    policy: str | None = None,
    reward: str | None = None,
    value: str | None = None,
    reference: str | None = None,
    *,
    device: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    progress=None,
) -> Models:
    """Load (or take from the process cache) the policy, reference, reward and value models.

    Each name is a Hub id or a local folder; None (or "") means the default: the default policy, the
    built-in sentiment reward model, `value` = the reward model and `reference` = the policy, as in TRL.
    `dtype`: a torch dtype or one of PRECISIONS ("float32", "bfloat16", "bfloat16-fp32-head": TRL's
    `cast_lm_head_to_fp32`). `device_map` (e.g. "auto") lets accelerate shard each model across the machine's
    GPUs instead of putting it on `device`; inputs then go to the device of each model's first layer.
    `value="none"` runs without a value model: every value is 0 (noted in the record).
    `progress(message)` is called before each slow step. Raises ModelLoadError with a message that says
    what to do.
    """
    resolve_precision(dtype)  # refuse an unknown precision before loading anything
    policy, reward, value, reference = _names(policy, reward, value, reference)
    no_value = value == NO_VALUE
    device = device or default_device()
    for name in {policy, reward, value, reference} - {NO_VALUE}:
        check_allowed(name)  # before the cache: a model loaded earlier is still subject to the rules in force
    started = time.perf_counter()

    def causal(role, name):
        if progress:
            progress(f"Loading the {role} model {name}")
        model, tok = _cached(("causal", name, device, dtype, trust_remote_code, device_map),
                             lambda: _load_causal_lm(name, device, dtype, trust_remote_code, progress, role, device_map))
        return model, tok

    def classifier(role, name):
        if progress:
            progress(f"Loading the {role} model {name}")
        return _cached(("classifier", name, device, dtype, trust_remote_code, device_map),
                       lambda: _load_classifier(role, name, device, dtype, trust_remote_code, progress, device_map))

    policy_model, tokenizer = causal("policy", policy)
    pad_added = _prepare_tokenizer(tokenizer)
    reference_model, ref_tokenizer = causal("reference", reference) if reference != policy else (policy_model, tokenizer)
    reward_model, reward_tokenizer = classifier("reward", reward)
    if no_value:
        value_model, value_tokenizer = None, None
    else:
        value_model, value_tokenizer = classifier("value", value) if value != reward else (reward_model, reward_tokenizer)
    for tok in (reward_tokenizer, value_tokenizer, ref_tokenizer):
        if tok is not None:
            _prepare_tokenizer(tok)
    _check_vocabularies(tokenizer, ref_tokenizer, value_tokenizer, policy, reference, value)
    notes = []
    if pad_added:
        notes.append(f"The policy tokenizer had no pad token; the EOS token {tokenizer.eos_token!r} pads instead.")
    if no_value:
        notes.append(NO_VALUE_NOTE)
    return Models(
        policy=policy_model,
        reference=reference_model,
        reward=reward_model,
        value=value_model,
        tokenizer=tokenizer,
        reward_tokenizer=reward_tokenizer,
        value_tokenizer=value_tokenizer,
        names={"policy": policy, "reference": reference, "reward": reward, "value": value},
        device=str(next(policy_model.parameters()).device) if device_map else device,
        dtype=resolve_precision(dtype)[0],
        precision=dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch."),
        device_map=device_map,
        pad_token_added=pad_added,
        load_seconds=time.perf_counter() - started,
        notes=notes,
    )


def _names(policy, reward, value, reference) -> tuple[str, str, str, str]:
    """The four model names with the defaults filled in, as TRL pairs them: the value model is the reward
    model, the reference is the policy; "none" (any case) for the value means no value model."""
    policy = (policy or "").strip() or DEFAULT_POLICY
    reward = (reward or "").strip() or DEFAULT_REWARD
    value = (value or "").strip() or reward
    value = NO_VALUE if value.lower() == NO_VALUE else value
    reference = (reference or "").strip() or policy
    return policy, reward, value, reference


def _check_vocabularies(tokenizer, ref_tokenizer, value_tokenizer, policy: str, reference: str, value: str) -> None:
    """The reference must share the policy's vocabulary (the KL is over the same tokens), and so must the value
    model (its values are read at the policy's tokens)."""
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ModelLoadError(
            f"The reference model {reference!r} uses a different vocabulary from the policy {policy!r}; "
            "the KL between them is only defined over the same tokens."
        )
    if value_tokenizer is not None and not same_tokenizer(value_tokenizer, tokenizer):
        raise ModelLoadError(value_vocabulary_message(policy, value))


NO_VALUE_NOTE = ("No value model (value = \"none\"): every value is 0, so the advantages and returns come from the "
                 "rewards alone; TRL's PPOTrainer always has a value model.")


def value_vocabulary_message(policy: str, value: str) -> str:
    """What to do when the value model does not share the policy's vocabulary."""
    default = " (the default: the built-in SmolLM2 reward model)" if value == DEFAULT_REWARD else ""
    return (
        f"The value model {value!r}{default} has another vocabulary than the policy {policy!r}: PPO's per-token "
        "values are computed on the policy's tokens, so the value model must share the policy's tokenizer. "
        "Either give a value model with the policy's vocabulary (a sequence-classification model with one label "
        f"built on the policy's tokenizer), or set the value model to \"{NO_VALUE}\" (no value model: every value "
        "is 0, noted in the record and the PPO panel)."
    )


def _tokenizer_only(name: str):
    import_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_source(name))


def value_vocabulary_problem(policy: str | None, reward: str | None, value: str | None) -> str | None:
    """Before loading any model: the message of `value_vocabulary_message` when the value model (the reward
    model when blank) has another vocabulary than the policy, else None. Reads the two tokenizers only; when
    either cannot be read, says nothing (loading the models will say what is wrong)."""
    policy = (policy or "").strip() or DEFAULT_POLICY
    value = (value or "").strip() or (reward or "").strip() or DEFAULT_REWARD
    if value.lower() == NO_VALUE or value == policy or {policy, value} <= {DEFAULT_POLICY, DEFAULT_REWARD}:
        return None
    try:
        check_allowed(policy)
        check_allowed(value)
        policy_tok, value_tok = _tokenizer_only(policy), _tokenizer_only(value)
        _prepare_tokenizer(policy_tok)
        _prepare_tokenizer(value_tok)
        same = same_tokenizer(policy_tok, value_tok)
    except Exception:  # noqa: BLE001 - the load itself reports it
        return None
    return None if same else value_vocabulary_message(policy, value)


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers map text to the same ids (the same object, or the same vocabulary and specials)."""
    if a is b:
        return True
    return a.get_vocab() == b.get_vocab() and a.pad_token_id == b.pad_token_id
