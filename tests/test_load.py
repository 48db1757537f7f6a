"""Load on the launched app over loopback: concurrent clients, the bounded queue, and memory across rollouts."""

from __future__ import annotations

import gc
import threading

import pytest

from inspector import run_rollout

pytestmark = pytest.mark.integration


def rss_mb() -> float:
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_eight_concurrent_clients(app_url):
    from gradio_client import Client

    counts = {"served": 0, "busy": 0, "failed": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        c = Client(app_url, verbose=False)
        prompts = [f"Say a word about the number {k}.", f"Client {k}: name a colour."]
        try:
            # two tokens: the load is the requests (queue, sessions, records), each a whole rollout all the same
            record = c.predict(prompts=prompts, max_new_tokens=2, seed=k, api_name="/rollout")
            ok = record["prompts"] == prompts  # each client sees its own rollout, never another's
            with lock:
                counts["served" if ok else "failed"] += 1
                if not ok:
                    errors.append(f"client {k} got prompts {record['prompts']}")
        except Exception as exc:  # noqa: BLE001 - counted and reported below
            with lock:
                if "queue is full" in str(exc).lower():
                    counts["busy"] += 1
                else:
                    counts["failed"] += 1
                    errors.append(repr(exc))

    def round_of_clients() -> None:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        gc.collect()

    round_of_clients()  # the first round grows the allocator's arenas once, for every thread
    warm = rss_mb()
    round_of_clients()
    after = rss_mb()
    print(f"\n8 clients at once, twice: served {counts['served']}, refused as busy {counts['busy']}, "
          f"failed {counts['failed']}; process memory {warm:.0f} MB after the first round, {after:.0f} MB after "
          "the second")
    assert counts["failed"] == 0, errors
    assert counts["served"] + counts["busy"] == 16
    # 8 clients each wait for their answer, so at most 8 requests queue at once: none is refused
    assert counts["served"] == 16, counts
    assert after - warm < 150, f"memory grew by {after - warm:.0f} MB over a second round of the same load"


def test_no_leak_across_thirty_rollouts(models):
    prompts = ["Name a fruit.", "Say hello."]
    # what a rollout could leak is per rollout (its record, tensors, caches), not per token: two tokens each
    for _ in range(5):  # warm the allocator up
        run_rollout(models, prompts, max_new_tokens=2, seed=0)
    gc.collect()
    before = rss_mb()
    for i in range(30):
        run_rollout(models, prompts, max_new_tokens=2, seed=i)
    gc.collect()
    growth = rss_mb() - before
    print(f"\nmemory growth across 30 rollouts: {growth:+.1f} MB")
    assert growth < 90, f"memory grew by {growth:.0f} MB across 30 rollouts"


def test_a_full_queue_answers_busy_and_keeps_serving(models, monkeypatch):
    from gradio_client import Client

    from inspector.app import build_app, launch_kwargs

    monkeypatch.setenv("INSPECTOR_QUEUE_SIZE", "1")
    demo = build_app()
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    url = demo.local_url.rstrip("/")
    counts = {"served": 0, "busy": 0, "failed": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        try:
            Client(url, verbose=False).predict(prompts=["Tell me a story.", "Describe the sea."], max_new_tokens=24,
                                               seed=k, api_name="/rollout")
            key = "served"
        except Exception as exc:  # noqa: BLE001 - counted below
            text = str(exc).lower()
            key = "busy" if "queue" in text and "full" in text else "failed"
            if key == "failed":
                errors.append(repr(exc))
        with lock:
            counts[key] += 1

    try:
        threads = [threading.Thread(target=one, args=(k,)) for k in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        print(f"\nqueue of 1, 5 clients at once: served {counts['served']}, refused as busy {counts['busy']}, "
              f"failed {counts['failed']}")
        assert counts["failed"] == 0, errors
        assert counts["busy"] >= 1 and counts["served"] >= 1
        record = Client(url, verbose=False).predict(prompts=["Say hi."], max_new_tokens=3, api_name="/rollout")
        assert len(record["scores"]) == 1  # still serving
    finally:
        demo.close()
