"""Following the hub's change feed as `copex mirror` does: ListChanges to
the head, then WatchChanges; after UNAVAILABLE or WATCHER_TOO_SLOW resume
from the last applied cursor with backoff; on CURSOR_EXPIRED start again
from an empty cursor after a resync hook. Each change goes to the caller's
handler, and its cursor is stored only after the handler returns."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Protocol, Union

import grpc

from ._gen.copex.v1 import record_pb2, sync_pb2
from .client import Client
from .errors import CopexError, TransportError

Change = sync_pb2.Change

# The hub sends a bookmark at least every 10 s; three missed means the
# stream is dead even if TCP has not noticed.
WATCH_SILENCE = 30.0
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0


class CursorStore(Protocol):
    """Where the follower keeps the cursor of the last applied change."""

    def load(self) -> str: ...

    def save(self, cursor: str) -> None: ...


class MemoryCursorStore:
    def __init__(self, cursor: str = "") -> None:
        self.cursor = cursor

    def load(self) -> str:
        return self.cursor

    def save(self, cursor: str) -> None:
        self.cursor = cursor


class SqliteCursorStore:
    """The cursor in a SQLite table. `connection` is open to the handler:
    what it writes there without committing commits together with the
    cursor, so a crash never loses a change nor applies one twice."""

    def __init__(self, path: Union[str, Path], name: str = "default") -> None:
        self.name = name
        self.connection = sqlite3.connect(str(path), isolation_level="DEFERRED", check_same_thread=False)
        self.connection.execute("PRAGMA journal_mode=WAL")
        # One commit per change: without an fsync each (WAL keeps every
        # commit atomic; a kill -9 loses nothing committed, a power cut at
        # most the last few, with their cursor).
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS copex_cursor (name TEXT PRIMARY KEY, cursor TEXT NOT NULL)"
        )
        self.connection.commit()

    def load(self) -> str:
        row = self.connection.execute("SELECT cursor FROM copex_cursor WHERE name = ?", (self.name,)).fetchone()
        return row[0] if row else ""

    def save(self, cursor: str) -> None:
        self.connection.execute(
            "INSERT INTO copex_cursor (name, cursor) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor",
            (self.name, cursor),
        )
        self.connection.commit()

    def close(self) -> None:
        self.connection.close()


class Follower:
    """`run()` applies every change after the stored cursor, then keeps
    watching until `stop()` (or, with `until_caught_up`, returns at the head).

    handler(change) is called once per change, in feed order; raising stops
    the follower with the cursor before that change. on_resync(error) is
    called when the stored cursor can no longer be resumed, with the
    CopexError that said so (reason CURSOR_EXPIRED or CURSOR_FROM_OTHER_HUB):
    drop the local copy, the feed then replays the current state from the
    start. Without it that error is raised. on_caught_up() is called each
    time the follower reaches the head of the feed (at the start, and again
    after each reconnection or resync), before it watches."""

    def __init__(
        self,
        client: Client,
        handler: Callable[[Change], None],
        store: Optional[CursorStore] = None,
        kinds: Iterable["record_pb2.RecordKind.ValueType"] = (),
        on_resync: Optional[Callable[[CopexError], None]] = None,
        page_size: int = 500,
        on_retry: Optional[Callable[[CopexError, float], None]] = None,
        on_caught_up: Optional[Callable[[], None]] = None,
    ) -> None:
        self.client = client
        self.handler = handler
        self.store: CursorStore = store if store is not None else MemoryCursorStore()
        self.kinds = list(kinds)
        self.on_resync = on_resync
        self.on_retry = on_retry
        self.on_caught_up = on_caught_up
        self.page_size = page_size
        self._stop = threading.Event()
        self._stream = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._stream is not None:
                self._stream.cancel()

    def _apply(self, change: Change) -> None:
        self.handler(change)
        self.store.save(change.cursor)

    def catch_up(self) -> str:
        """ListChanges from the stored cursor to the head; the cursor there."""
        cursor = self.store.load()
        while not self._stop.is_set():
            page = self.client.sync.ListChanges(
                sync_pb2.ListChangesRequest(cursor=cursor, kinds=self.kinds, page_size=self.page_size)
            )
            for change in page.changes:
                self._apply(change)
            if page.next_cursor and page.next_cursor != cursor:
                cursor = page.next_cursor
                self.store.save(cursor)
            if page.caught_up:
                break
        return cursor

    def _watch(self, cursor: str) -> None:
        stream = self.client.sync.WatchChanges(sync_pb2.WatchChangesRequest(cursor=cursor, kinds=self.kinds))
        with self._lock:
            self._stream = stream
        if self._stop.is_set():
            stream.cancel()
        last = [time.monotonic()]
        silent = threading.Event()

        def watchdog() -> None:
            while not self._stop.is_set() and not done.is_set():
                if time.monotonic() - last[0] > WATCH_SILENCE:
                    silent.set()
                    stream.cancel()
                    return
                done.wait(1.0)

        done = threading.Event()
        dog = threading.Thread(target=watchdog, daemon=True)
        dog.start()
        try:
            for message in stream:
                last[0] = time.monotonic()
                for change in message.changes:
                    self._apply(change)
                if message.cursor and message.cursor != cursor:
                    cursor = message.cursor
                    self.store.save(cursor)
        except CopexError as err:
            if self._stop.is_set():
                return
            if silent.is_set():
                raise CopexError(grpc.StatusCode.UNAVAILABLE, "the watch stream was silent") from None
            raise err
        finally:
            done.set()
            with self._lock:
                self._stream = None
        if not self._stop.is_set():
            raise CopexError(grpc.StatusCode.UNAVAILABLE, "the watch stream ended")

    def run(self, until_caught_up: bool = False) -> None:
        delay = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                cursor = self.catch_up()
                if self._stop.is_set():
                    return
                if self.on_caught_up is not None:
                    self.on_caught_up()
                if until_caught_up:
                    return
                delay = BACKOFF_FIRST
                self._watch(cursor)
            except TransportError:
                raise
            except CopexError as err:
                if self._stop.is_set():
                    return
                # Also a cursor the hub cannot read at all (its database was
                # restored, say): the contract says resync.
                foreign = err.code == grpc.StatusCode.INVALID_ARGUMENT and any(
                    v.field == "cursor" for v in err.field_violations
                )
                if err.reason in ("CURSOR_EXPIRED", "CURSOR_FROM_OTHER_HUB") or foreign:
                    if self.on_resync is None:
                        raise
                    self.on_resync(err)
                    self.store.save("")
                    continue
                if not (err.retryable or err.reason == "WATCHER_TOO_SLOW"):
                    raise
                wait = max(delay, err.retry_delay or 0.0)
                if self.on_retry is not None:
                    self.on_retry(err, wait)
                self._stop.wait(wait)
                delay = min(delay * 2, BACKOFF_MAX)
