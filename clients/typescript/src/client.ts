// connect() and the CopexClient: the generated service clients over one
// gRPC transport with the partner's certificate, every error turned into a
// CopexError, and typed helpers that page, push and follow.

import { createClient, type CallOptions, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { DescService, MessageInitShape } from "@bufbuild/protobuf";

import { readPems, resolveSettings, type ConnectOptions, type Settings } from "./config.js";
import { Code, CopexError, toCopexError } from "./errors.js";
import { AuditService, type AuditEvent, type ListAuditEventsRequestSchema } from "./gen/copex/v1/audit_pb.js";
import { PartnerService, type ListPartnersRequestSchema, type Partner } from "./gen/copex/v1/partner_pb.js";
import { PracticeService, type ListPracticesRequestSchema, type Practice } from "./gen/copex/v1/practice_pb.js";
import { SearchService, type SearchHit, type SearchRequestSchema } from "./gen/copex/v1/search_pb.js";
import { SyncService } from "./gen/copex/v1/sync_pb.js";
import { ToolService, type ListToolsRequestSchema, type Tool } from "./gen/copex/v1/tool_pb.js";
import { WorkshopService, type ListWorkshopsRequestSchema, type Workshop } from "./gen/copex/v1/workshop_pb.js";
import { batchUpsert, type BatchUpsertOptions, type BatchReport, type RecordInit } from "./batch.js";
import { Follower, type FollowerOptions } from "./follower.js";

/** Messages up to this size are accepted: a feed page carries whole records. */
const READ_MAX_BYTES = 64 << 20;

export interface ClientOptions extends ConnectOptions {
  /** Extra connect-es interceptors. */
  interceptors?: Interceptor[];
  /** Deadline of each unary call, unless the call sets its own `timeoutMs` (default 60 s; 0: none). Streams have none. */
  timeoutMs?: number;
}

/**
 * Pages through a List or Search method: calls it with each next_page_token
 * until the hub returns none, yielding the items one by one.
 */
export async function* pageThrough<Req extends { pageToken?: string }, Res extends { nextPageToken: string }, Item>(
  call: (request: Req, options?: CallOptions) => Promise<Res>,
  request: Req,
  items: (response: Res) => Item[],
  options?: CallOptions,
): AsyncGenerator<Item, void, undefined> {
  let pageToken = request.pageToken ?? "";
  for (;;) {
    const response = await call({ ...request, pageToken }, options);
    yield* items(response);
    if (response.nextPageToken === "") return;
    pageToken = response.nextPageToken;
  }
}

/**
 * The generated client of a service, with every failure of every call, unary
 * or streaming, turned into a CopexError. (An interceptor cannot do this:
 * connect-es rejects a failed unary call with the transport's own error.)
 */
function copexClient<S extends DescService>(service: S, transport: Transport, hub: string, timeoutMs: number): Client<S> {
  const client = createClient(service, transport) as unknown as globalThis.Record<string, (...args: unknown[]) => unknown>;
  const wrapped: globalThis.Record<string, unknown> = {};
  for (const method of service.methods) {
    const call = client[method.localName].bind(client);
    if (method.methodKind === "unary") {
      wrapped[method.localName] = (request: unknown, options?: CallOptions) => {
        // A hub that accepts connections but never answers must not hang a caller.
        const timeout = options?.timeoutMs ?? (timeoutMs > 0 ? timeoutMs : undefined);
        return (call(request, { ...options, timeoutMs: timeout }) as Promise<unknown>).catch((err: unknown) => {
          const error = toCopexError(err, hub);
          if (error.code === Code.DeadlineExceeded && error.reason === "" && timeout !== undefined) {
            throw new CopexError(`${hub} did not answer within ${timeout} ms`, Code.DeadlineExceeded, {}, error.metadata, err);
          }
          throw error;
        });
      };
    } else {
      wrapped[method.localName] = (...args: unknown[]) => {
        const messages = call(...args) as AsyncIterable<unknown>;
        return (async function* () {
          try {
            yield* messages;
          } catch (err) {
            throw toCopexError(err, hub);
          }
        })();
      };
    }
  }
  return wrapped as Client<S>;
}

/** A connection to a copex hub. Make one with connect(). */
export class CopexClient {
  /** The settings used and where each came from. */
  readonly settings: Settings;
  readonly partner: Client<typeof PartnerService>;
  readonly workshop: Client<typeof WorkshopService>;
  readonly practice: Client<typeof PracticeService>;
  readonly tool: Client<typeof ToolService>;
  readonly search: Client<typeof SearchService>;
  readonly sync: Client<typeof SyncService>;
  readonly audit: Client<typeof AuditService>;
  private readonly sessions: Http2SessionManager;

  constructor(options: ClientOptions = {}) {
    this.settings = resolveSettings(options);
    const { ca, cert, key } = readPems(this.settings);
    const nodeOptions = {
      ca,
      cert,
      key,
      ...(this.settings.serverName !== undefined ? { servername: this.settings.serverName } : {}),
    };
    // Pings find a dead connection while a watch stream idles.
    this.sessions = new Http2SessionManager(this.settings.hub, { pingIntervalMs: 30_000, pingTimeoutMs: 15_000 }, nodeOptions);
    const transport = createGrpcTransport({
      baseUrl: this.settings.hub,
      sessionManager: this.sessions,
      readMaxBytes: READ_MAX_BYTES,
      interceptors: options.interceptors ?? [],
    });
    const hub = this.settings.hub;
    const timeout = options.timeoutMs ?? 60_000;
    this.partner = copexClient(PartnerService, transport, hub, timeout);
    this.workshop = copexClient(WorkshopService, transport, hub, timeout);
    this.practice = copexClient(PracticeService, transport, hub, timeout);
    this.tool = copexClient(ToolService, transport, hub, timeout);
    this.search = copexClient(SearchService, transport, hub, timeout);
    this.sync = copexClient(SyncService, transport, hub, timeout);
    this.audit = copexClient(AuditService, transport, hub, timeout);
  }

  /** The partner this client's certificate speaks for: the first call to make. */
  whoami(options?: CallOptions): Promise<Partner> {
    return this.partner.getCurrentPartner({}, options);
  }

  /** Every tool matching the request, across pages. `parent` defaults to `partners/-` (all partners). */
  listTools(request: Omit<MessageInitShape<typeof ListToolsRequestSchema>, "$typeName"> = {}, options?: CallOptions): AsyncGenerator<Tool> {
    return pageThrough((r, o) => this.tool.listTools(r, o), { parent: "partners/-", ...request }, (r) => r.tools, options);
  }

  /** Every workshop matching the request, across pages. */
  listWorkshops(
    request: Omit<MessageInitShape<typeof ListWorkshopsRequestSchema>, "$typeName"> = {},
    options?: CallOptions,
  ): AsyncGenerator<Workshop> {
    return pageThrough((r, o) => this.workshop.listWorkshops(r, o), { parent: "partners/-", ...request }, (r) => r.workshops, options);
  }

  /** Every practice matching the request, across pages. */
  listPractices(
    request: Omit<MessageInitShape<typeof ListPracticesRequestSchema>, "$typeName"> = {},
    options?: CallOptions,
  ): AsyncGenerator<Practice> {
    return pageThrough((r, o) => this.practice.listPractices(r, o), { parent: "partners/-", ...request }, (r) => r.practices, options);
  }

  /** Every partner, across pages. */
  listPartners(
    request: Omit<MessageInitShape<typeof ListPartnersRequestSchema>, "$typeName"> = {},
    options?: CallOptions,
  ): AsyncGenerator<Partner> {
    return pageThrough((r, o) => this.partner.listPartners(r, o), { ...request }, (r) => r.partners, options);
  }

  /** Audit events visible to this partner, across pages. */
  listAuditEvents(
    request: Omit<MessageInitShape<typeof ListAuditEventsRequestSchema>, "$typeName"> = {},
    options?: CallOptions,
  ): AsyncGenerator<AuditEvent> {
    return pageThrough((r, o) => this.audit.listAuditEvents(r, o), { ...request }, (r) => r.auditEvents, options);
  }

  /** Every search hit, best first, across pages. */
  searchHits(request: Omit<MessageInitShape<typeof SearchRequestSchema>, "$typeName">, options?: CallOptions): AsyncGenerator<SearchHit> {
    return pageThrough((r, o) => this.search.search(r, o), { ...request }, (r) => r.hits, options);
  }

  /** Creates or updates records in batches of up to 1,000 and reports on every item. */
  batchUpsert(records: Iterable<RecordInit> | AsyncIterable<RecordInit>, options?: BatchUpsertOptions): Promise<BatchReport> {
    return batchUpsert(this.sync, records, options);
  }

  /** A follower of the change feed; call its run(). */
  follower(options: FollowerOptions): Follower {
    return new Follower(this.sync, options);
  }

  /** Closes the connection; calls in flight fail. */
  close(): void {
    this.sessions.abort();
  }
}

/**
 * Makes a client from arguments, COPEX_* variables or a copex.toml profile
 * (first match wins, per setting). No call is made yet: `await client.whoami()`
 * is the first one, and shows whether the certificates fit.
 */
export function connect(options: ClientOptions = {}): CopexClient {
  return new CopexClient(options);
}
