"""Pickled dumps: SkyRL's `global_step_<N>_training_input.pkl` and slime's `--dump-details` `.pt` files.

Unpickling can run code, so neither is unpickled freely:
- SkyRL (NovaSky-AI/SkyRL at a9564572eb8e91076be43c1bd5e4615e3de17265): `RayPPOTrainer.dump_data`
  (skyrl/train/trainer.py:1236-1242) calls `TensorBatch.save` = `pickle.dump(self, f)`
  (skyrl/backends/skyrl_train/training_batch.py:395-398), whose `__reduce__` (244-253) is
  `(_rebuild_tensor_batch, (TrainingInputBatch, state))` with every tensor as `{"format": "numpy", "data": bytes,
  "shape", "dtype"}` or `{"format": "torch", "data": torch.save bytes}` (17-49). A restricted unpickler maps
  exactly those two globals onto stand-ins here (plus `torch.device`, the batch's device, onto a string) and
  refuses every other one; torch-format entries load with `torch.load(weights_only=True)`.
  Keys read: `sequences` (left-padded prompt+response), `attention_mask`, `response_mask` (responses right-aligned
  in the last R columns), `loss_mask`, `rollout_logprobs` (sampler), `action_log_probs` (trainer),
  `base_action_log_probs` (reference), `advantages`; `metadata["policy_prompt_boundaries"]` gives the groups.
  Not in this format: rewards (popped before the dump), texts, entropy.
- slime (THUDM/slime at 624b824a898ab0ec1fcb4d373004c7f3852bf515): `save_debug_train_data`
  (slime/observability/train_data_utils.py:191-240, payload 112-188) `torch.save`s `{"format_version": 2,
  "rollout_id", "samples": [...]}` to `<dump>/train_data/<rollout_id>.pt`; read with `torch.load(weights_only=True)`
  as slime's own e2e test does. Per sample: `tokens` (prompt+response), `response_lengths`, `loss_masks`,
  `rollout_log_probs`, `log_probs`, `ref_log_probs`, `advantages`, `entropy` (response only), `rewards`,
  `truncated`. `<dump>/tokenizer` (saved by slime) decodes the ids. Not in this format: per-function rewards.
A dump that needs any other global is refused on a hosted deployment and, locally, loads only with
`allow_pickle=True` (CLI `--allow-pickle`).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ...errors import InputError
from ...record.run import RunStep
from ._base import Reader, StepEntry, group_by_prefix

SKYRL_MODULE = "skyrl.backends.skyrl_train.training_batch"


class PickleRefused(InputError):
    """A pickle that needs globals beyond the whitelisted ones."""


def refusal(path: str, what: str, hosted: bool) -> str:
    where = ("This is a hosted deployment: pickles that need arbitrary code are never loaded here."
             if hosted else "Unpickling it can run any code the file holds: load it only if you trust who wrote "
             "it, with allow_pickle=True (command line: --allow-pickle).")
    return f"{Path(path).name}: {what} {where}"


class SkyRLBatch(dict):
    """Stand-in for SkyRL's TrainingInputBatch: the tensors as numpy arrays, plus `metadata`."""

    metadata: dict = {}


def _tensor(value):
    if value is None:
        return None
    if value.get("format") == "torch":
        import torch

        t = torch.load(io.BytesIO(value["data"]), weights_only=True)
        return t.float().numpy() if t.is_floating_point() else t.numpy()
    if value.get("format") == "tensor_list":
        return [_tensor(v) for v in value["items"]]
    return np.frombuffer(value["data"], dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()


def _rebuild(cls, state: dict):
    batch = SkyRLBatch({k: _tensor(v) for k, v in state["batch_dict"].items()})
    batch.metadata = state.get("metadata") or {}
    return batch


class SkyRLUnpickler(pickle.Unpickler):
    ALLOWED = {(SKYRL_MODULE, "_rebuild_tensor_batch"): _rebuild, (SKYRL_MODULE, "TrainingInputBatch"): SkyRLBatch,
               ("torch", "device"): str}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"it needs the global {module}.{name}, which is not one of SkyRL's two.")


def _load_skyrl(path: str, allow_pickle: bool, hosted: bool):
    with open(path, "rb") as fh:
        try:
            return SkyRLUnpickler(fh).load()
        except pickle.UnpicklingError as exc:
            if not allow_pickle or hosted:
                raise PickleRefused(refusal(path, f"not a plain SkyRL training batch: {exc}", hosted)) from None
    with open(path, "rb") as fh:
        return pickle.load(fh)  # noqa: S301 - the user asked for it with allow_pickle=True, locally


class _PickleReader(Reader):
    def __init__(self, root: Path, *, allow_pickle: bool = False, hosted: bool = False, **kw):
        super().__init__(root, **kw)
        self.allow_pickle, self.hosted = allow_pickle, hosted

    def scan(self) -> dict[int, StepEntry]:
        files = self.step_files(self.pattern, self.folder)
        self.check_gaps(sorted(files))
        return {n: StepEntry((str(p),)) for n, p in files.items() if self.within_limit(str(p))}


class SkyRLReader(_PickleReader):
    format = "skyrl"
    fields = frozenset({"prompt_ids", "completion_ids", "loss_mask", "logprobs", "new_logprobs", "ref_logprobs",
                        "advantages", "group", "step"})
    pattern = r"global_step_(\d+)_training_input\.pkl"

    @property
    def folder(self) -> Path:
        return self.root / "dumped_data" if (self.root / "dumped_data").is_dir() else self.root

    def read(self, n: int, entry: StepEntry) -> RunStep:
        batch = _load_skyrl(entry.paths[0], self.allow_pickle, self.hosted)
        get = lambda k: None if batch.get(k) is None else np.asarray(batch[k])  # noqa: E731
        seq, attn, resp = get("sequences"), get("attention_mask"), get("response_mask")
        step = RunStep(step=n, format=self.format)
        R = resp.shape[1]
        lengths = resp.sum(axis=1).astype(int)
        full = [s[a.astype(bool)] for s, a in zip(seq, attn)]
        step.prompt_ids = [f[:len(f) - L] for f, L in zip(full, lengths)]
        step.completion_ids = [f[len(f) - L:] for f, L in zip(full, lengths)]
        tail = lambda k: None if get(k) is None else [row[R - L:] for row, L in zip(get(k), lengths)]  # noqa: E731
        step.loss_mask = [m.astype(np.int8) for m in tail("loss_mask")] if get("loss_mask") is not None else None
        step.logprobs, step.new_logprobs = tail("rollout_logprobs"), tail("action_log_probs")
        step.ref_logprobs, step.advantages = tail("base_action_log_probs"), tail("advantages")
        bounds = (getattr(batch, "metadata", None) or {}).get("policy_prompt_boundaries")
        if bounds:
            group = np.zeros(len(seq), dtype=np.int64)
            for g, (a, b) in enumerate(bounds):
                group[a:b] = g
            step.group = group
        else:
            step.group = group_by_prefix(step.prompt_ids)
        step.notes.append("SkyRL training input: the trainer's ids, loss mask, rollout / trainer / reference logprobs "
                          "and advantages; rewards were popped before the dump (not in this format).")
        return step


class SlimeReader(_PickleReader):
    format = "slime"
    fields = frozenset({"prompt_ids", "completion_ids", "loss_mask", "logprobs", "new_logprobs", "ref_logprobs",
                        "advantages", "rewards", "entropy", "group", "step"})
    pattern = r"(\d+)\.pt"

    @property
    def folder(self) -> Path:
        return self.root / "train_data" if (self.root / "train_data").is_dir() else self.root

    def _load(self, path: str) -> dict:
        import torch

        try:
            return torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:
            if not self.allow_pickle or self.hosted:
                first = str(exc).split("\n")[0][:200]
                raise PickleRefused(refusal(path, f"holds objects beyond tensors and plain types ({first}).",
                                            self.hosted)) from None
        return torch.load(path, weights_only=False, map_location="cpu")

    def read(self, n: int, entry: StepEntry) -> RunStep:
        data = self._load(entry.paths[0])
        samples = data.get("samples") or []
        arr = lambda v: None if v is None else np.asarray(v.float() if hasattr(v, "float") and v.is_floating_point() else v)  # noqa: E731
        step = RunStep(step=n, format=self.format)
        tokens = [np.asarray(arr(s["tokens"]), np.int64) for s in samples]
        lengths = [int(s["response_lengths"]) for s in samples]
        step.prompt_ids = [t[:len(t) - L] for t, L in zip(tokens, lengths)]
        step.completion_ids = [t[len(t) - L:] for t, L in zip(tokens, lengths)]
        col = lambda k: None if not samples or any(s.get(k) is None for s in samples) else [arr(s[k]) for s in samples]  # noqa: E731
        masks = col("loss_masks")
        step.loss_mask = [np.asarray(m, np.int8) for m in masks] if masks is not None else None
        step.logprobs, step.new_logprobs, step.ref_logprobs = col("rollout_log_probs"), col("log_probs"), col("ref_log_probs")
        step.advantages, step.entropy = col("advantages"), col("entropy")
        rewards = col("rewards")
        step.rewards = None if rewards is None else np.asarray([float(r) for r in rewards])
        if col("truncated") is not None:
            step.columns["truncated"] = [int(t) for t in col("truncated")]
        step.group = group_by_prefix(step.prompt_ids)
        tok = self.root / "tokenizer" if self.root.is_dir() else self.root.parent.parent / "tokenizer"
        if tok.is_dir():
            step.tokenizer_name = str(tok)
        step.notes.append("slime train dump: the trainer's ids, loss mask, rollout / trainer / reference logprobs, "
                          "advantages, entropy and rewards (response tokens only).")
        return step
