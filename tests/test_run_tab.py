"""The Run tab's callbacks without a browser: opening (uploads, refusals, messages), a link's arrival, a step as
the page's rollout and the side-by-side view, on the example run shipped with the app."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from inspector.app.tabs import run as tab

DATA = Path(__file__).parent / "data" / "runs"


@pytest.fixture(autouse=True)
def _summaries(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTOR_RUN_SUMMARIES", str(tmp_path / "summaries"))
    monkeypatch.setenv("INSPECTOR_RUN_UPLOADS", str(tmp_path / "uploads"))


def test_the_example_run_is_small_and_opens():
    size = sum(p.stat().st_size for p in tab.EXAMPLE_RUN.iterdir())
    assert size < 300_000
    views = tab.open_callback("", None)
    state = views[0]
    assert state["link"] == "example" and state["run"].format == "inspector"
    assert len(state["run"].steps()) >= 4 and not state["run"].problems
    assert views[2] is not None and views[2].data  # the trend figure
    assert "sampler-trainer gap" in views[3] and "entropy" not in views[3]  # what the format lacks is said


def test_a_zip_member_over_the_limit_or_outside_the_folder_is_left_out(tmp_path):
    path = tmp_path / "run.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("run/1.jsonl", (DATA / "verl" / "1.jsonl").read_text())
        z.writestr("run/2.jsonl", "x" * 5000)
        z.writestr("../evil.jsonl", "{}")
    folder, link, problems = tab._unpack([str(path)], 2000)
    assert sorted(p.name for p in folder.iterdir()) == ["1.jsonl"] and link.startswith("upload:")
    assert not (tmp_path / "evil.jsonl").exists() and not (folder.parent.parent / "evil.jsonl").exists()
    assert any("2.jsonl" in p and "over the upload limit of 2,000" in p for p in problems)


def test_an_uploaded_run_has_a_link_that_opens_it_again(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTOR_HOSTED", "1")  # a link to an upload works where local paths are refused
    files = [str(p) for p in sorted((DATA / "verl").iterdir())]
    views = tab.open_callback("", files)
    link = views[0]["link"]
    assert link.startswith("upload:") and f"the uploaded run `{link}`" in views[1]
    assert tab.open_callback("", files)[0]["link"] == link  # the same files: the same upload, kept once
    out = tab.arrival({"run": link, "step": "2"})
    assert out[0]["link"] == link and out[0]["run"].steps() == views[0]["run"].steps() and out[-2] == 2
    assert not out[tab.VIEW_OUTPUTS.index("run_problems")]
    gone = tab.open_callback("upload:" + "0" * 20, None)[tab.VIEW_OUTPUTS.index("run_problems")]
    assert "is not on this server" in gone and "upload its files again" in gone
    odd = tab.open_callback("upload:../../etc", None)[tab.VIEW_OUTPUTS.index("run_problems")]
    assert "is not on this server" in odd


def test_a_run_that_cannot_open_says_why_and_keeps_the_screen():
    views = tab.open_callback("nobody-here/not-cached", None)
    msg = views[tab.VIEW_OUTPUTS.index("run_problems")]
    assert "nobody-here/not-cached" in msg and msg.startswith("**Not opened:**")
    assert views[0] == {"__type__": "update"}  # gr.skip(): the run on screen stays


def test_a_hosted_deployment_refuses_local_paths(monkeypatch):
    monkeypatch.setenv("INSPECTOR_HOSTED", "1")
    views = tab.open_callback(str(DATA / "verl"), None)
    assert "Local paths are refused" in views[tab.VIEW_OUTPUTS.index("run_problems")]


def test_a_links_step_and_tab_and_a_step_that_is_not_there():
    out = tab.arrival({"run": "example", "step": "3", "sample": "1", "tab": "logprobs"})
    assert out[-4]["active"] and out[-3] == "logprobs" and out[-2] == 3 and out[-1] == "1"
    out = tab.arrival({"run": "example", "step": "999"})
    assert "999" in out[tab.VIEW_OUTPUTS.index("run_problems")] and out[-2] is None


def test_the_arrival_reads_the_link_the_page_was_opened_with():
    """The page rewrites its address as the visitor picks tabs and steps, so the arrival's run step takes the link
    kept by the page's first event (`landing`), not the address of its own request, and hands the link's tab to
    the page's script (which leaves a tab the visitor picked meanwhile)."""
    import collections
    import inspect

    p = collections.defaultdict(object)
    event = tab.arrival_event(p)
    assert event["inputs"] == [p["landing"]] and list(inspect.signature(event["fn"]).parameters) == ["landing"]
    assert event["outputs"][-2] is p["arrival_tab"] and p["tabs"] not in event["outputs"]
    out = event["fn"]({"run": "example", "step": "3", "tab": "logprobs"})
    assert out[-2] == "logprobs" and out[tab.VIEW_OUTPUTS.index("run_step")]["value"] == 3
    assert tab.arrival_tab_event(p)["inputs"] == [p["arrival_tab"]] and "inspectorTabPicked" in tab.ARRIVAL_TAB_JS


def test_a_step_becomes_the_pages_rollout_and_two_steps_side_by_side():
    from inspector.app.rollouts import ROLLOUT_OUTPUTS

    state = tab.open_callback("", None)[0]
    first, last = state["run"].steps()[0], state["run"].steps()[-1]
    out = tab.step_views(state, first, "2", 0, "")
    r = out[0]
    assert len(out) == len(ROLLOUT_OUTPUTS) + 3 and r.settings["run_step"] == first and r.batch_size == 4
    assert out[ROLLOUT_OUTPUTS.index("sample")]["value"] == 2 and f"Step {first}" in out[3]
    choice = tab.prompt_choices(state, first, "")["choices"]
    assert len(choice) == 2
    html = tab.side_by_side(state, first, last, choice[1][1], "")
    assert html.count("class='run-side'") == 2 and f"step {last}" in html and "French" in html
