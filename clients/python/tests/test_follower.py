"""The feed follower against a live hub: catch-up then watch, resuming
after the hub goes away, and across kill -9 of the client process."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List

import pytest

import copex_client as copex
from copex_client import sync_pb2
from conftest import Hub
from test_client import new_tool

CHILD = Path(__file__).with_name("follow_child.py")


def wait_for(predicate: Callable[[], object], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_follower_catches_up_then_watches_and_resumes_after_the_hub_restarts(hub: Hub) -> None:
    profile = hub.create_partner("py-follow")
    kinds = [copex.record_pb2.RECORD_KIND_TOOL]
    seen: List[copex.sync_pb2.Change] = []
    retries: List[copex.CopexError] = []
    # How many changes had been applied each time the follower reached the head.
    caught_up: List[int] = []
    with copex.connect(profile=profile) as client:
        first = new_tool("partners/py-follow", "Before the follower")
        assert client.batch_upsert([first]).ok
        store = copex.MemoryCursorStore()
        follower = copex.Follower(
            client, seen.append, store, kinds=kinds, on_retry=lambda err, wait: retries.append(err),
            on_caught_up=lambda: caught_up.append(len(seen)),
        )
        thread = threading.Thread(target=follower.run, daemon=True)
        thread.start()
        assert wait_for(lambda: first.tool.name in [c.name for c in seen])
        assert wait_for(lambda: caught_up), "on_caught_up was not called at the head"
        assert first.tool.name in [c.name for c in seen[: caught_up[0]]], "caught up before the backlog was applied"
        second = new_tool("partners/py-follow", "While watching")
        assert client.batch_upsert([second]).ok
        assert wait_for(lambda: second.tool.name in [c.name for c in seen])

        hub.stop()
        assert wait_for(lambda: retries, 15), "the follower noticed the hub went away"
        hub.start()
        third = new_tool("partners/py-follow", "After the restart")
        with copex.connect(profile=profile) as writer:
            assert writer.batch_upsert([third]).ok
        assert wait_for(lambda: third.tool.name in [c.name for c in seen], 60)
        # Reconnected, it caught up again before watching.
        assert wait_for(lambda: len(caught_up) >= 2), caught_up
        follower.stop()
        thread.join(10)
        assert not thread.is_alive()
        cursors = [c.cursor for c in seen]
        assert len(cursors) == len(set(cursors)), "a change was applied twice"
        assert store.load() == seen[-1].cursor or store.load() > ""
        assert all(isinstance(e, copex.CopexError) and e.retryable for e in retries)


def test_on_caught_up_is_called_once_at_the_head_with_until_caught_up(hub: Hub) -> None:
    profile = hub.create_partner("py-caught-up")
    with copex.connect(profile=profile) as client:
        tools = [new_tool("partners/py-caught-up", f"Backlog {i}") for i in range(5)]
        assert client.batch_upsert(tools).ok
        seen: List[str] = []
        calls: List[List[str]] = []
        follower = copex.Follower(
            client, lambda change: seen.append(change.name), kinds=[copex.record_pb2.RECORD_KIND_TOOL],
            page_size=2, on_caught_up=lambda: calls.append(list(seen)),
        )
        follower.run(until_caught_up=True)
        assert len(calls) == 1, calls
        # Every page of the backlog was applied before the hook ran.
        assert set(t.tool.name for t in tools) <= set(calls[0])
        assert calls[0] == seen


def test_follower_stores_no_cursor_for_a_change_the_handler_refused(hub: Hub, tmp_path: Path) -> None:
    profile = hub.create_partner("py-refuse")
    with copex.connect(profile=profile) as client:
        assert client.batch_upsert([new_tool("partners/py-refuse", "One"), new_tool("partners/py-refuse", "Two")]).ok
        store = copex.SqliteCursorStore(tmp_path / "c.db")
        applied: List[str] = []

        def handler(change: copex.sync_pb2.Change) -> None:
            if change.type == sync_pb2.CHANGE_TYPE_UPSERTED and change.record.tool.display_name == "Two":
                raise RuntimeError("cannot apply")
            applied.append(change.cursor)

        follower = copex.Follower(client, handler, store, kinds=[copex.record_pb2.RECORD_KIND_TOOL])
        try:
            follower.run(until_caught_up=True)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the handler's error should stop the follower")
        # The stored cursor is the last change the handler accepted.
        assert applied and store.load() == applied[-1]


def test_follower_never_loses_or_double_applies_across_kill_9(hub: Hub, tmp_path: Path) -> None:
    profile = hub.create_partner("py-crash")
    db = tmp_path / "mirror.db"
    stop_writing = threading.Event()
    written: List[str] = []

    def writer() -> None:
        with copex.connect(profile=profile) as client:
            while not stop_writing.is_set():
                batch = [new_tool("partners/py-crash", f"Crash tool {len(written) + i}") for i in range(10)]
                assert client.batch_upsert(batch).ok
                written.extend(r.tool.name for r in batch)
                # Some deletions too, so tombstones go through the follower.
                if len(written) % 50 == 0:
                    client.tools.DeleteTool(copex.tool_pb2.DeleteToolRequest(name=batch[0].tool.name))
                time.sleep(0.02)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    kills = 0
    rng = random.Random(7)
    while kills < 5:
        child = subprocess.Popen([sys.executable, str(CHILD), str(profile), str(db), "watch"], env=env,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "following"
        time.sleep(rng.uniform(0.2, 0.8))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        kills += 1
    stop_writing.set()
    thread.join(60)
    assert len(written) > 100, len(written)
    # One last run to the head.
    done = subprocess.run([sys.executable, str(CHILD), str(profile), str(db), "once"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    with copex.connect(profile=profile) as client:
        feed = []
        cursor = ""
        while True:
            page = client.sync.ListChanges(sync_pb2.ListChangesRequest(cursor=cursor, page_size=5000))
            feed += [c.cursor for c in page.changes if c.name.startswith("partners/py-crash/")]
            cursor = page.next_cursor
            if page.caught_up:
                break
    applied = [row[0] for row in sqlite3.connect(db).execute("SELECT cursor FROM applied ORDER BY seq")]
    applied_crash = [c for c in applied if c in set(feed)]
    assert len(applied) == len(set(applied)), "a change was applied twice"
    assert set(feed) <= set(applied), f"{len(set(feed) - set(applied))} changes were lost"
    assert applied_crash == feed, "changes were applied out of feed order"


def test_a_cursor_of_another_hub_calls_the_resync_hook_then_replays(hub: Hub, tmp_path: Path) -> None:
    from conftest import Hub

    other = Hub(tmp_path / "other-data")
    other.start()
    try:
        with copex.connect(profile=other.pki / "admin.toml") as client:
            assert client.batch_upsert([new_tool("partners/admin", "On the other hub")]).ok
            page = client.sync.ListChanges(sync_pb2.ListChangesRequest(page_size=10))
            foreign = page.next_cursor
    finally:
        other.stop()
    assert foreign

    profile = hub.create_partner("py-resync")
    with copex.connect(profile=profile) as client:
        mine = new_tool("partners/py-resync", "Replayed after the resync")
        assert client.batch_upsert([mine]).ok
        seen: List[copex.sync_pb2.Change] = []
        resyncs: List[copex.CopexError] = []
        store = copex.MemoryCursorStore(foreign)
        copex.Follower(client, seen.append, store, on_resync=resyncs.append).run(until_caught_up=True)
        assert len(resyncs) == 1, resyncs
        assert isinstance(resyncs[0], copex.CopexError)
        assert resyncs[0].reason == "CURSOR_FROM_OTHER_HUB" or any(
            v.field == "cursor" for v in resyncs[0].field_violations
        ), resyncs[0]
        assert mine.tool.name in [c.name for c in seen]
        assert store.load() not in ("", foreign)
        # Without a hook the error is raised, not swallowed.
        with pytest.raises(copex.CopexError) as err:
            copex.Follower(client, seen.append, copex.MemoryCursorStore(foreign)).run(until_caught_up=True)
        assert err.value.reason == "CURSOR_FROM_OTHER_HUB" or any(
            v.field == "cursor" for v in err.value.field_violations
        )


def test_a_cursor_past_the_tombstone_retention_calls_the_resync_hook_and_the_copy_ends_right(tmp_path: Path) -> None:
    from conftest import Hub

    kinds = [copex.record_pb2.RECORD_KIND_TOOL]
    limited = Hub(tmp_path / "limits-data", extra_args=["--tombstone-retention", "1s"])
    limited.start()
    try:
        profile = limited.create_partner("ngo")
        with copex.connect(profile=profile) as client:
            kept, gone = new_tool("partners/ngo", "Kept"), new_tool("partners/ngo", "Gone")
            assert client.batch_upsert([kept, gone]).ok
            store = copex.MemoryCursorStore()
            copex.Follower(client, lambda change: None, store, kinds=kinds).run(until_caught_up=True)
            stale = store.load()
            assert stale

            client.tools.DeleteTool(copex.tool_pb2.DeleteToolRequest(name=gone.tool.name))
            later = new_tool("partners/ngo", "Later")
            assert client.batch_upsert([later]).ok
            time.sleep(2.5)  # past the retention and the purge that follows it

            copy = {kept.tool.name, gone.tool.name}
            resyncs: List[copex.CopexError] = []

            def handler(change: copex.sync_pb2.Change) -> None:
                if change.type == sync_pb2.CHANGE_TYPE_UPSERTED:
                    copy.add(change.name)
                else:
                    copy.discard(change.name)

            def on_resync(error: copex.CopexError) -> None:
                resyncs.append(error)
                copy.clear()

            copex.Follower(client, handler, store, kinds=kinds, on_resync=on_resync).run(until_caught_up=True)
            assert len(resyncs) == 1, resyncs
            assert isinstance(resyncs[0], copex.CopexError) and resyncs[0].reason == "CURSOR_EXPIRED", resyncs[0]
            assert store.load() not in ("", stale)
            listed = sorted(t.name for t in client.list("tools"))
            assert sorted(n for n in copy if "/tools/" in n) == listed
            assert listed == sorted([kept.tool.name, later.tool.name])
    finally:
        limited.stop()
