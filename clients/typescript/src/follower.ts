// The feed follower, with the semantics of `copex mirror`: ListChanges to the
// head, then WatchChanges; after UNAVAILABLE, WATCHER_TOO_SLOW or a silent
// stream it resumes from the last applied cursor with backoff; on
// CURSOR_EXPIRED it asks the caller to resync and starts over. Each change
// goes to the caller, and its cursor is stored only after the caller returns.

import { mkdir, open, readFile, rename } from "node:fs/promises";
import { dirname } from "node:path";
import type { Client } from "@connectrpc/connect";

import { Code, CertificateRejected, CopexError, HubUntrusted, toCopexError } from "./errors.js";
import type { RecordKind } from "./gen/copex/v1/record_pb.js";
import { SyncService, type Change } from "./gen/copex/v1/sync_pb.js";

/** Where a follower keeps its cursor between runs. */
export interface CursorStore {
  /** The stored cursor, or "" to start from the beginning. */
  load(): Promise<string>;
  /** Stores the cursor; must be durable when it returns. */
  save(cursor: string): Promise<void>;
}

/** A cursor kept in memory only: each run starts from the beginning. */
export class MemoryCursorStore implements CursorStore {
  cursor = "";
  async load(): Promise<string> {
    return this.cursor;
  }
  async save(cursor: string): Promise<void> {
    this.cursor = cursor;
  }
}

/**
 * A cursor in a JSON file, written atomically (temporary file, fsync, rename).
 *
 * `data` is any JSON value of yours, saved in the same write as the cursor:
 * change it in your onChange handler and it moves with the cursor, so a small
 * mirror kept in `data` never loses or repeats a change across a crash.
 */
export class FileCursorStore<T = unknown> implements CursorStore {
  readonly path: string;
  data: T | undefined;
  private loaded = false;

  constructor(path: string) {
    this.path = path;
  }

  async load(): Promise<string> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        this.loaded = true;
        return "";
      }
      throw err;
    }
    const parsed = JSON.parse(text) as { cursor?: unknown; data?: T };
    if (typeof parsed.cursor !== "string") throw new Error(`${this.path} holds no cursor`);
    this.data = parsed.data;
    this.loaded = true;
    return parsed.cursor;
  }

  async save(cursor: string): Promise<void> {
    if (!this.loaded) throw new Error(`${this.path}: load() before save(), or the stored data would be overwritten`);
    await mkdir(dirname(this.path), { recursive: true });
    const temp = `${this.path}.${process.pid}.tmp`;
    const file = await open(temp, "w");
    try {
      await file.writeFile(JSON.stringify({ cursor, data: this.data }));
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temp, this.path);
  }
}

export interface FollowerOptions {
  /** Where the cursor is kept. */
  store: CursorStore;
  /** Called with each change, in feed order; its cursor is stored after this returns. Throwing stops the follower. */
  onChange: (change: Change) => void | Promise<void>;
  /**
   * Called when the hub can no longer resume from the stored cursor
   * (CURSOR_EXPIRED, CURSOR_FROM_OTHER_HUB, an unknown cursor): drop your copy;
   * the feed then replays the current state from the beginning. Without it, such
   * an error stops the follower.
   */
  onResync?: (why: CopexError) => void | Promise<void>;
  /** Called each time the follower has caught up with the head of the feed. */
  onCaughtUp?: () => void | Promise<void>;
  /** Called before each reconnection, with the error and the delay. */
  onRetry?: (error: CopexError, delayMs: number) => void;
  /** Only these kinds (default: all). */
  kinds?: RecordKind[];
  /** Aborting stops the follower; run() then resolves. */
  signal?: AbortSignal;
  /** ListChanges page size (default 5000, the hub's maximum). */
  pageSize?: number;
  /** A watch stream silent this long is dead (default 35 s; the hub sends a bookmark every 10 s). */
  silenceMs?: number;
  /** Give up after this many failures in a row (default: never). */
  maxFailures?: number;
}

const BACKOFF_FIRST_MS = 200;
const BACKOFF_MAX_MS = 30_000;

/** A failure of the caller's handler or store: never retried. */
class LocalFailure {
  constructor(readonly error: unknown) {}
}

/** The stream was silent too long. */
class Silent extends CopexError {}

export class Follower {
  private readonly sync: Client<typeof SyncService>;
  private readonly options: FollowerOptions;
  private readonly stopper = new AbortController();
  private readonly signal: AbortSignal;
  private current = "";
  private started = false;
  private failures = 0;
  private nextDelay = BACKOFF_FIRST_MS;

  constructor(sync: Client<typeof SyncService>, options: FollowerOptions) {
    this.sync = sync;
    this.options = options;
    this.signal = options.signal ? AbortSignal.any([options.signal, this.stopper.signal]) : this.stopper.signal;
  }

  /** The cursor of the last change handed over and stored. */
  get cursor(): string {
    return this.current;
  }

  /** Stops run() (it resolves) after the change in hand, if any. */
  stop(): void {
    this.stopper.abort();
  }

  /** Follows the feed until stop() or the signal; rejects on an error that retrying cannot fix. */
  async run(): Promise<void> {
    await this.start();
    let caughtUp = false;
    while (!this.signal.aborted) {
      try {
        if (!caughtUp) {
          await this.catchUpOnce();
          caughtUp = true;
        }
        await this.watchOnce();
      } catch (err) {
        if (this.signal.aborted) return;
        if ((await this.recover(err)) === "resynced") caughtUp = false;
      }
    }
  }

  /** Applies every change up to the head of the feed, then returns (like `copex mirror --once`). */
  async catchUp(): Promise<void> {
    await this.start();
    for (;;) {
      try {
        await this.catchUpOnce();
        return;
      } catch (err) {
        if (this.signal.aborted) return;
        await this.recover(err);
      }
    }
  }

  private async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    this.current = await this.options.store.load();
  }

  private async catchUpOnce(): Promise<void> {
    for (;;) {
      const before = this.current;
      const page = await this.sync.listChanges(
        { cursor: this.current, kinds: this.options.kinds ?? [], pageSize: this.options.pageSize ?? 5000 },
        { signal: this.signal },
      );
      await this.apply(page.changes, page.nextCursor);
      this.goodMessage();
      if (page.caughtUp) break;
      if (page.changes.length === 0 && this.current === before) {
        throw new LocalFailure(new Error(`the hub's change feed did not advance from cursor ${JSON.stringify(before)}`));
      }
    }
    await this.local(() => this.options.onCaughtUp?.());
  }

  private async watchOnce(): Promise<void> {
    const silenceMs = this.options.silenceMs ?? 35_000;
    const stream = new AbortController();
    const signal = AbortSignal.any([this.signal, stream.signal]);
    const messages = this.sync
      .watchChanges({ cursor: this.current, kinds: this.options.kinds ?? [] }, { signal })
      [Symbol.asyncIterator]();
    for (;;) {
      let timer: NodeJS.Timeout | undefined;
      let silent = false;
      const next = messages.next();
      const result = await Promise.race([
        next,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            silent = true;
            stream.abort();
            reject(new Silent(`the watch stream was silent for ${silenceMs} ms`, Code.Unavailable));
          }, silenceMs);
        }),
      ]).finally(() => clearTimeout(timer));
      if (silent) next.catch(() => undefined);
      if (result.done) {
        throw new CopexError("the watch stream ended", Code.Unavailable);
      }
      await this.apply(result.value.changes, result.value.cursor);
      this.goodMessage();
    }
  }

  private async apply(changes: Change[], cursor: string): Promise<void> {
    for (const change of changes) {
      if (this.signal.aborted) return;
      await this.local(() => this.options.onChange(change));
      if (change.cursor !== "") await this.store(change.cursor);
    }
    // A bookmark, or the cursor after the last change: a message without one
    // leaves the last; resuming there repeats nothing.
    if (!this.signal.aborted && cursor !== "" && cursor !== this.current) await this.store(cursor);
  }

  private async store(cursor: string): Promise<void> {
    await this.local(() => this.options.store.save(cursor));
    this.current = cursor;
  }

  private async local<T>(f: () => T | Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (err) {
      throw new LocalFailure(err);
    }
  }

  private goodMessage(): void {
    this.failures = 0;
    this.nextDelay = BACKOFF_FIRST_MS;
  }

  private step(): number {
    const delay = this.nextDelay;
    this.nextDelay = Math.min(this.nextDelay * 2, BACKOFF_MAX_MS);
    this.failures++;
    return delay;
  }

  /** Decides what an interruption means: wait and retry, resync, or stop with the error. */
  private async recover(err: unknown): Promise<"retried" | "resynced"> {
    if (err instanceof LocalFailure) throw err.error;
    const error = toCopexError(err);
    const fatal = () => {
      throw error;
    };
    const resync =
      (error.code === Code.FailedPrecondition && (error.reason === "CURSOR_EXPIRED" || error.reason === "CURSOR_FROM_OTHER_HUB")) ||
      (error.code === Code.InvalidArgument && this.current !== "" && error.fieldViolations.some((v) => v.field === "cursor"));
    if (resync) {
      if (this.options.onResync === undefined) fatal();
      await this.local(() => this.options.onResync!(error));
      await this.store("");
      // Should the hub keep refusing, do not spin.
      const delay = this.step();
      if (this.failures > 1) await this.sleep(delay);
      return "resynced";
    }
    if (error instanceof CertificateRejected || error instanceof HubUntrusted) fatal();
    const permanent = [
      Code.Unauthenticated,
      Code.PermissionDenied,
      Code.InvalidArgument,
      Code.FailedPrecondition,
      Code.NotFound,
      Code.AlreadyExists,
      Code.OutOfRange,
      Code.Unimplemented,
    ];
    if (permanent.includes(error.code)) fatal();
    if (this.options.maxFailures !== undefined && this.failures + 1 >= this.options.maxFailures) {
      throw new CopexError(`giving up after ${this.failures + 1} attempts: ${error.rawMessage}`, error.code, {}, error.metadata, error);
    }
    const delay = Math.max(this.step(), error.retryDelay ?? 0);
    this.options.onRetry?.(error, delay);
    await this.sleep(delay);
    return "retried";
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.signal.aborted) return resolve();
      const timer = setTimeout(done, ms);
      const signal = this.signal;
      function done() {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      }
      signal.addEventListener("abort", done, { once: true });
    });
  }
}
