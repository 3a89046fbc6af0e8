// batchUpsert(): BatchUpsertRecords in chunks of up to 1,000 records (and
// under the hub's 4 MiB request limit), each with a request id derived from
// its content, so sending the same records again after a crash, within the
// hub's 24 hours of memory, gets the first answer instead of writing twice.

import { createHash } from "node:crypto";
import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import type { CallOptions, Client } from "@connectrpc/connect";

import { CopexError, statusToCopexError, toCopexError } from "./errors.js";
import { RecordSchema, type Record as CopexRecord } from "./gen/copex/v1/record_pb.js";
import { SyncService, UpsertOutcome } from "./gen/copex/v1/sync_pb.js";

export type RecordInit = MessageInitShape<typeof RecordSchema>;

export const MAX_BATCH = 1000;
/** Below the hub's 4 MiB request limit, leaving room for framing. */
const MAX_BATCH_BYTES = 3 << 20;

export interface BatchUpsertOptions {
  /** Records per request, 1..1000 (default 1000). */
  chunkSize?: number;
  /** How many times a chunk is sent again after UNAVAILABLE or RESOURCE_EXHAUSTED (default 5). */
  retries?: number;
  /** Per-call options (signal, timeoutMs, headers). */
  callOptions?: CallOptions;
  /** Called after each chunk with the items it reported. */
  onChunk?: (items: readonly ItemResult[]) => void | Promise<void>;
}

export type Outcome = "CREATED" | "UPDATED" | "UNCHANGED" | "FAILED";

export interface ItemResult {
  /** Position of the record in the input, from 0. */
  index: number;
  name: string;
  outcome: Outcome;
  etag: string;
  /** Why the item failed: code, reason and field violations (paths relative to the record, as `tool.sharing.tlp`). */
  error?: CopexError;
}

export interface BatchReport {
  created: number;
  updated: number;
  unchanged: number;
  failed: number;
  items: ItemResult[];
}

/** A whole chunk failed: the records from `firstUnsent` on were not written (those before were, see `report`). */
export class BatchUpsertError extends Error {
  readonly report: BatchReport;
  readonly firstUnsent: number;
  override readonly cause: CopexError;

  constructor(report: BatchReport, firstUnsent: number, cause: CopexError) {
    super(
      `the batch starting at record ${firstUnsent} failed, so it and every record after it were not sent (${report.items.length} before it were): ${cause.message}`,
    );
    this.name = "BatchUpsertError";
    this.report = report;
    this.firstUnsent = firstUnsent;
    this.cause = cause;
  }
}

const OUTCOMES: Partial<Record<UpsertOutcome, Outcome>> = {
  [UpsertOutcome.CREATED]: "CREATED",
  [UpsertOutcome.UPDATED]: "UPDATED",
  [UpsertOutcome.UNCHANGED]: "UNCHANGED",
  [UpsertOutcome.FAILED]: "FAILED",
};

interface Chunk {
  first: number;
  records: CopexRecord[];
  hash: ReturnType<typeof createHash>;
  bytes: number;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(timer), reject(signal.reason)), { once: true });
  });

export async function batchUpsert(
  sync: Client<typeof SyncService>,
  records: Iterable<RecordInit> | AsyncIterable<RecordInit>,
  options: BatchUpsertOptions = {},
): Promise<BatchReport> {
  const chunkSize = options.chunkSize ?? MAX_BATCH;
  if (!Number.isInteger(chunkSize) || chunkSize < 1 || chunkSize > MAX_BATCH) {
    throw new RangeError(`chunkSize must be 1..${MAX_BATCH}, not ${chunkSize}`);
  }
  const retries = options.retries ?? 5;
  const report: BatchReport = { created: 0, updated: 0, unchanged: 0, failed: 0, items: [] };

  const send = async (chunk: Chunk): Promise<void> => {
    const requestId = `batch-${chunk.hash.digest("hex")}`;
    let response;
    for (let attempt = 0; ; attempt++) {
      try {
        response = await sync.batchUpsertRecords({ records: chunk.records, requestId }, options.callOptions);
        break;
      } catch (err) {
        const error = toCopexError(err);
        if (!error.retryable || attempt >= retries) throw new BatchUpsertError(report, chunk.first, error);
        await sleep(Math.max(error.retryDelay ?? 0, 200 * 2 ** attempt), options.callOptions?.signal);
      }
    }
    if (response.results.length !== chunk.records.length) {
      const error = new CopexError(
        `the hub answered ${response.results.length} results for ${chunk.records.length} records`,
        2 /* UNKNOWN */,
      );
      throw new BatchUpsertError(report, chunk.first, error);
    }
    const items = response.results.map((result, i): ItemResult => {
      const outcome = OUTCOMES[result.outcome] ?? "FAILED";
      const item: ItemResult = { index: chunk.first + i, name: result.name, outcome, etag: result.etag };
      if (outcome === "FAILED") {
        item.error = result.error
          ? statusToCopexError(result.error, `records[${i}].`)
          : new CopexError(`the hub answered with outcome ${result.outcome}, which this client does not know`, 2);
      }
      return item;
    });
    for (const item of items) {
      if (item.outcome === "CREATED") report.created++;
      else if (item.outcome === "UPDATED") report.updated++;
      else if (item.outcome === "UNCHANGED") report.unchanged++;
      else report.failed++;
      report.items.push(item);
    }
    await options.onChunk?.(items);
  };

  let index = 0;
  let chunk: Chunk | undefined;
  for await (const init of records) {
    const record = create(RecordSchema, init);
    const bytes = toBinary(RecordSchema, record);
    if (chunk !== undefined && (chunk.records.length >= chunkSize || chunk.bytes + bytes.length > MAX_BATCH_BYTES)) {
      await send(chunk);
      chunk = undefined;
    }
    chunk ??= { first: index, records: [], hash: createHash("sha256"), bytes: 0 };
    chunk.records.push(record);
    // Length-prefixed, so no two different chunks hash alike.
    chunk.hash.update(`${bytes.length}:`).update(bytes);
    chunk.bytes += bytes.length;
    index++;
  }
  if (chunk !== undefined) await send(chunk);
  return report;
}
