"""The page's tab bar, as built (no model, no browser): each tab from its own module, only tabs inside it."""

from __future__ import annotations

import gradio as gr

from inspector.app import build_app

LABELS = ["Sequences", "Logprobs", "Value & reward", "PPO step", "GRPO", "Sampler mismatch", "Multi-turn", "Batch & compare",
          "Run"]


def test_the_tab_bar_holds_only_its_tabs_each_under_its_own_label():
    demo = build_app()
    (tabs,) = [b for b in demo.blocks.values() if isinstance(b, gr.Tabs) and b.elem_id == "views"]
    # anything but a Tab among the children shifts the tab bar's labels in the browser
    assert [type(c).__name__ for c in tabs.children] == ["Tab"] * len(LABELS)
    assert [c.label for c in tabs.children] == LABELS
    assert len({c.id for c in tabs.children}) == len(LABELS)
