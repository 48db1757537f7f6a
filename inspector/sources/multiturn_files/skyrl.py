"""SkyRL training-input dumps: `{trainer.export_path}/dumped_data/global_step_<N>_training_input.pkl`.

Writer: SkyRL's `RayPPOTrainer.dump_data` (NovaSky-AI/SkyRL a9564572eb8e, skyrl/train/trainer.py:1236-1242) ->
`TensorBatch.save` = `pickle.dump` of a `TrainingInputBatch` whose `__reduce__` is
`(_rebuild_tensor_batch, (TrainingInputBatch, state))` (skyrl/backends/skyrl_train/training_batch.py, commit
0446435ca3da), `state = {"batch_dict": {key: None | {"format": "numpy", "data", "shape", "dtype"} |
{"format": "torch", "data": torch.save bytes} | {"format": "tensor_list", ...}}, "batch_size", "device", "metadata"}`.

Read through a restricted unpickler: the only globals it resolves are those two names (mapped to the runs reader's plain
dict builder, `runs.pickles.SkyRLUnpickler`) and `torch.device` (mapped to str); any other global refuses the file. Nothing of SkyRL runs.

Layout (skyrl/train/dataset/preprocess.py convert_prompts_responses_to_batch_tensors, commit 07eefd6ce6b6):
`sequences` (B, T) one left-padded block [pad, prompt, response]; `attention_mask` (B, T); response tensors
(B, R) RIGHT-aligned: `response_mask` 1 on the last len_i positions, `loss_mask` (0 on tool / observation tokens
and on the `\\n` after the EOS), `rollout_logprobs`, `advantages`. Group ids: metadata `policy_prompt_boundaries`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..runs.pickles import SkyRLBatch, SkyRLUnpickler
from ._stream import rollout_of, trajectory_from_stream

FORMAT = "skyrl"
NOTE = "SkyRL: loss mask = loss_mask (right-aligned over the response); sampled = loss_mask too (SkyRL keeps no other flag)"


def load_skyrl_pickle(path) -> SkyRLBatch:
    """The batch of a SkyRL dump, read without running any code of the file. Raises InputError otherwise."""
    try:
        batch = SkyRLUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError) as exc:
        raise InputError(f"{path}: not a SkyRL training-input dump this reader can open safely ({exc}).") from exc
    if not isinstance(batch, SkyRLBatch) or "sequences" not in batch or "loss_mask" not in batch:
        raise InputError(f"{path}: the pickle holds no SkyRL TrainingInputBatch with sequences and loss_mask.")
    return batch


def _groups(metadata: dict, B: int) -> list[int]:
    group = list(range(B))
    for g, (start, end) in enumerate(metadata.get("policy_prompt_boundaries") or []):
        for i in range(start, min(end, B)):
            group[i] = g
    return group


def read_skyrl(path, tokenizer=None):
    """A `MultiTurnRollout` from a SkyRL training-input pickle (see the module docstring)."""
    b = load_skyrl_pickle(path)
    seqs, att = b["sequences"], b["attention_mask"]
    resp_mask, loss = b.get("response_mask"), b["loss_mask"]
    B, R = loss.shape
    lps, adv = b.get("rollout_logprobs"), b.get("advantages")
    group = _groups(b.metadata, B)
    trajectories, advantages = [], []
    for i in range(B):
        real = np.flatnonzero(att[i])
        start = int(real[0]) if len(real) else seqs.shape[1]
        n_resp = int(resp_mask[i].sum()) if resp_mask is not None else R
        ids = seqs[i, start:].tolist()
        prompt_length = len(ids) - n_resp
        tail = slice(R - n_resp, R)
        trained = [0] * prompt_length + [int(x) for x in loss[i, tail]]
        logprobs = None if lps is None else [0.0] * prompt_length + lps[i, tail].tolist()
        trajectories.append(trajectory_from_stream(
            ids, sampled=[bool(x) for x in trained], trained=trained, logprobs=logprobs, prompt_length=prompt_length,
            source=FORMAT, tokenizer=tokenizer, notes=[NOTE], group=group[i]))
        a = adv[i, tail][loss[i, tail] > 0] if adv is not None else []
        advantages.append(float(a[0]) if len(a) else None)
    return rollout_of(trajectories, source=FORMAT, path=path, tokenizer=tokenizer, notes=[NOTE],
                      advantages=advantages if any(a is not None for a in advantages) else None)
