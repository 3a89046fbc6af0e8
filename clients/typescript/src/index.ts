// @copex/client: a Node.js client for a copex hub.

export { connect, CopexClient, pageThrough, type ClientOptions } from "./client.js";
export { readProfile, resolveSettings, type ConnectOptions, type Profile, type Settings } from "./config.js";
export {
  CertificateRejected,
  Code,
  codeName,
  ConfigurationError,
  CopexError,
  HubUnreachable,
  HubUntrusted,
  KeyMismatch,
  toCopexError,
  type FieldViolation,
} from "./errors.js";
export {
  batchUpsert,
  BatchUpsertError,
  MAX_BATCH,
  type BatchReport,
  type BatchUpsertOptions,
  type ItemResult,
  type Outcome,
  type RecordInit,
} from "./batch.js";
export { FileCursorStore, Follower, MemoryCursorStore, type CursorStore, type FollowerOptions } from "./follower.js";

// The generated messages, enums and services of copex.v1.
export * from "./gen/copex/v1/audit_pb.js";
export * from "./gen/copex/v1/common_pb.js";
export * from "./gen/copex/v1/partner_pb.js";
export * from "./gen/copex/v1/practice_pb.js";
export * from "./gen/copex/v1/record_pb.js";
export * from "./gen/copex/v1/search_pb.js";
export * from "./gen/copex/v1/sync_pb.js";
export * from "./gen/copex/v1/tool_pb.js";
export * from "./gen/copex/v1/workshop_pb.js";
