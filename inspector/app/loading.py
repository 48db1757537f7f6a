"""The Models accordion: load the four models (or take them from the shared cache), their summary, and the
value model's vocabulary check when the boxes change."""

from __future__ import annotations

import gradio as gr

from .. import models as model_registry
from ..models import load_models
from .common import friendly, model_names
from .hosting import gpu


def models_markdown(m: model_registry.Models) -> str:
    """A summary of the loaded models: size, dtype and device, the special ids, and the traps they set."""
    tok = m.tokenizer

    def params(module):
        return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f} M"

    def row(role, module, name, shared=""):
        return f"| {role} | `{name}` | {params(module)} | {next(module.parameters()).dtype} | {m.device} | {shared} |"

    rows = [
        "| role | model | parameters | dtype | device | note |",
        "|---|---|---|---|---|---|",
        row("policy", m.policy, m.names["policy"]),
        row("reference", m.reference, m.names["reference"], "the policy itself" if m.reference_is_policy else ""),
        row("reward", m.reward, m.names["reward"],
            "backbone shared with the policy" if getattr(m.reward, m.reward.base_model_prefix) is getattr(m.policy, m.policy.base_model_prefix) else ""),
        row("value", m.value, m.names["value"], "the reward model itself" if m.value_is_reward else "")
        if m.value is not None else "| value | none | | | | every value is 0 |",
    ]
    pad, eos = tok.pad_token_id, tok.eos_token_id
    same = model_registry.same_tokenizer(m.reward_tokenizer, tok)
    facts = [
        f"**pad** {pad} `{tok.pad_token}` · **eos** {eos} `{tok.eos_token}` · **default stop** {eos} `{tok.eos_token}`",
        f"**reward tokenizer is the policy's:** {'yes' if same else 'no (responses are re-encoded for it)'}",
        f"**pad token == EOS token:** {'**yes** (TRL masks every EOS as padding; the reward is read before the EOS)' if pad == eos else 'no'}",
        f"loaded in {m.load_seconds:.1f} s",
    ] + [f"note: {n}" for n in m.notes]
    return "\n".join(rows) + "\n\n" + "  \n".join(facts)


@gpu
def load_callback(policy, reward, value, reference, progress=gr.Progress()):
    """Load (or fetch from the shared cache) the four models; returns their summary."""
    try:
        progress(0.1, desc="Loading models")
        m = load_models(**model_names(policy, reward, value, reference), progress=lambda msg: progress(0.5, desc=msg))
    except Exception as exc:
        raise friendly(exc) from exc
    return models_markdown(m)


def vocabulary_check(policy, reward, value):
    """When the models are chosen: does the value model (the reward model when blank) share the policy's
    vocabulary? If not, say so and show the way out (no value model); reads tokenizers only."""
    problem = model_registry.value_vocabulary_problem(policy, reward, value)
    return (f"**Value model:** {problem}" if problem else ""), gr.update(visible=bool(problem))
