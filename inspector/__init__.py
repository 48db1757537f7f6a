"""Rollout Inspector: see exactly what a PPO or GRPO trainer would train on, token by token.

The public API: tensor functions identical to TRL's, model loading with offline defaults, and
`run_rollout`, which returns one `Rollout` record of every quantity of a PPO rollout.

The subpackages follow the data's way (docs/architecture.md): `sources` make or read rollouts, `record` is
the Rollout and its file format, `trainers` compute each trainer's quantities from a record, `diagnostics`
name the traps in words, `views` draw figures, tables and token HTML, and `app` is the page (the only
package that imports gradio).
"""

import os as _os

# On small VMs (2 vCPUs, as on a CPU Space) OpenMP's default spin-waiting makes torch's parallel element-wise
# kernels 30-50x slower (measured: a log_softmax over 4 x 49152 took 7.6 ms instead of 0.25 ms), which the
# per-token capture hits at every generated token. Passive waiting removes that and leaves matmuls as fast.
# It takes effect only if torch has not been imported yet; set OMP_WAIT_POLICY yourself to override.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import EngineError, InputError, InspectorError, LimitError, ModelLoadError
from .sources.generation import SamplingSettings, encode_prompts, generate
from .models import DEFAULT_POLICY, DEFAULT_REWARD, Models, load_models
from .record.rollout import EOS, Rollout
from .sources.runner import run_rollout
from .trainers.scoring import forward_logits, forward_logprobs, get_reward
from .tensors import (
    INVALID_LOGPROB,
    entropy_from_logits,
    first_true_indices,
    masked_mean,
    masked_var,
    masked_whiten,
    token_logprobs,
    truncate_response,
)

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_REWARD",
    "EOS",
    "EngineError",
    "INVALID_LOGPROB",
    "InputError",
    "InspectorError",
    "LimitError",
    "ModelLoadError",
    "Models",
    "Rollout",
    "SamplingSettings",
    "encode_prompts",
    "entropy_from_logits",
    "first_true_indices",
    "forward_logits",
    "forward_logprobs",
    "generate",
    "get_reward",
    "load_models",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "run_rollout",
    "token_logprobs",
    "truncate_response",
]
