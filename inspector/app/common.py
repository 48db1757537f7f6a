"""What every callback of the page shares: the model names from the boxes, the prompts from the text, the stop
token and training temperature as the core takes them, a core error as the page shows it, and tables built
from a column spec."""

from __future__ import annotations

import logging

import gradio as gr

from ..errors import InspectorError
from ..record.rollout import EOS, Rollout
from ..views import column_datatypes, column_widths
from ..views._common import fmt

log = logging.getLogger("inspector.app")


def friendly(exc: Exception) -> gr.Error:
    if isinstance(exc, InspectorError):
        return gr.Error(str(exc), print_exception=False)
    log.exception("unexpected error")
    return gr.Error(f"Something went wrong ({type(exc).__name__}). The app is still running; please try again.",
                    print_exception=False)


def model_names(policy: str, reward: str, value: str, reference: str) -> dict:
    return {"policy": policy.strip() or None, "reward": reward.strip() or None,
            "value": value.strip() or None, "reference": reference.strip() or None}


def parse_prompts(text: str) -> list[str]:
    """One prompt per non-empty line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def stop_value(choice: str, custom: str):
    if choice == "No truncation":
        return None
    if choice == "Custom token":
        if not (custom or "").strip() and custom != " ":
            raise InspectorError("Type the custom stop token (one token of the policy's tokenizer), or pick EOS.")
        return custom
    return EOS


def training_temperature(value) -> float:
    try:
        return float(1.0 if value is None else value)
    except (TypeError, ValueError):
        raise InspectorError(f"The training temperature must be a number above 0, not {value!r}.") from None


def session_of(request) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def sample_choices(r: Rollout) -> list[tuple[str, int]]:
    out = []
    for i in range(r.batch_size):
        prompt = r.prompts[i].replace("\n", " ")
        out.append((f"{i}: {prompt[:60]}{'…' if len(prompt) > 60 else ''}  (score {fmt(r.scores[i], signed=True)})", i))
    return out


def spec_table(spec, label, elem_id):
    return gr.Dataframe(
        elem_id=elem_id, headers=[c.name for c in spec], datatype=column_datatypes(spec),
        column_widths=column_widths(spec), label=label, interactive=False, wrap=True, max_height=640,
        show_search="filter",
    )
