"""The tabs of the views, one module each. A tab module holds its `LABEL` (the tab bar's), its `ID` (the tab's
`id`; `#tab-<ID>` and `#tab-<ID>-button` on the page), its `HEADING` (the first line of its panel), `layout(p)`
(its components, added to the page's dict `p` inside its own `gr.Tab`, which `build_app` opens) and `wire(p)`
(its events). `TABS` is the order of the tab bar. `run_scripts` holds the Run tab's browser scripts."""

from . import batch, grpo, logprobs, mismatch, ppo, run, sequences, turns, value_reward

TABS = (sequences, logprobs, value_reward, ppo, grpo, mismatch, turns, batch, run)

__all__ = ["TABS"]
