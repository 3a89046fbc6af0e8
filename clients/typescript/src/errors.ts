// Every failure a copex client sees, as one family of errors: CopexError
// carries the status code and the google.rpc details the hub sends; three
// subclasses name the connection failures a partner most often meets, with
// the likely cause, so no retry loop spins on them.

import { Code, ConnectError } from "@connectrpc/connect";
import type { Any } from "@bufbuild/protobuf/wkt";
import { anyUnpack, durationMs } from "@bufbuild/protobuf/wkt";

import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
  type BadRequest_FieldViolation,
  type ErrorInfo,
  type RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

export { Code };

/** A field the hub refused, as AIP-193 names it (e.g. `tool.sharing.tlp`). */
export interface FieldViolation {
  field: string;
  description: string;
}

interface Details {
  errorInfo?: ErrorInfo;
  fieldViolations: FieldViolation[];
  retryInfo?: RetryInfo;
}

const NEW_CERTIFICATE =
  "make a new key and request (`copex pki request --partner <your id>`) and ask the hub's operator to sign it (`copex pki sign`)";

/**
 * What a partner cannot fix alone, by ErrorInfo reason: whom to ask, and what
 * to ask for. The Python client says the same (copex_client/errors.py).
 */
export const OPERATOR_ADVICE: Readonly<Record<string, string>> = {
  UNKNOWN_PARTNER:
    "Ask the hub's operator to register your partner for this certificate (`copex partners create <your id>`), or to sign a certificate for the partner you are; send them the identity above",
  IDENTITY_NOT_REGISTERED:
    "Ask the hub's operator to register this certificate's identity (the SPIFFE ID or sha256 fingerprint above) on your partner",
  UNREGISTERED_CA:
    "Ask the hub's operator to register your CA on your partner (`copex partners create ... --ca`), sending them your CA certificate",
  IDENTITY_CHANGED:
    "The hub's operator changed which partner this certificate speaks for: ask them which partner it is now, or for a certificate of your partner",
  PARTNER_SUSPENDED:
    "Ask the hub's operator why your partner was suspended and to activate it again (`copex partners activate <your id>`); every call is refused until then",
  ROLE_REQUIRED: "Ask the hub's operator to grant your partner the role named above, if it should have it",
  CERTIFICATE_REVOKED: `The hub's operator revoked this certificate: ask them why, then ${NEW_CERTIFICATE}`,
  CERTIFICATE_EXPIRED: `This certificate has expired: ${NEW_CERTIFICATE}`,
  MULTIPLE_URI_SANS: `A partner certificate carries exactly one URI SAN: ${NEW_CERTIFICATE}`,
  BAD_CERTIFICATE: `The hub cannot read this certificate: ${NEW_CERTIFICATE}`,
};

/** The canonical upper-case name of a status code, as the hub and the CLI print it (`INVALID_ARGUMENT`). */
export function codeName(code: Code): string {
  return Code[code]?.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase().replace(/^CANCELED$/, "CANCELLED") ?? `CODE_${code}`;
}

// Codes a client may retry as they are (after retryDelay, or backoff), and
// the reasons under them that the same request meets again. The Python
// client has the same rule (clients/python/src/copex_client/errors.py).
const RETRYABLE_CODES: ReadonlySet<Code> = new Set([Code.Unavailable, Code.ResourceExhausted, Code.DeadlineExceeded]);
const NOT_RETRYABLE_REASONS: ReadonlySet<string> = new Set(["REQUEST_TOO_LARGE", "QUERY_TOO_LONG"]);

/**
 * An error from a copex hub, or on the way to one.
 *
 * - `code`: the gRPC status code (`Code.InvalidArgument`, ...), `codeName` its name;
 * - `reason`: the `google.rpc.ErrorInfo` reason (`ETAG_MISMATCH`, `CURSOR_EXPIRED`, ...), or "";
 * - `fieldViolations`: the `google.rpc.BadRequest` violations, for invalid input;
 * - `retryDelay`: milliseconds from `google.rpc.RetryInfo`, if the hub sent one;
 * - `retryable`: whether the same call may succeed if made again later.
 */
export class CopexError extends ConnectError {
  readonly reason: string;
  readonly domain: string;
  readonly errorMetadata: Readonly<Record<string, string>>;
  readonly fieldViolations: readonly FieldViolation[];
  readonly retryDelay: number | undefined;

  constructor(message: string, code: Code, details: Partial<Details> = {}, metadata?: ConstructorParameters<typeof ConnectError>[2], cause?: unknown) {
    const advice = OPERATOR_ADVICE[details.errorInfo?.reason ?? ""];
    super(advice === undefined ? message : `${message}. ${advice}`, code, metadata, undefined, cause);
    this.name = new.target.name;
    this.reason = details.errorInfo?.reason ?? "";
    this.domain = details.errorInfo?.domain ?? "";
    this.errorMetadata = { ...(details.errorInfo?.metadata ?? {}) };
    this.fieldViolations = details.fieldViolations ?? [];
    const delay = details.retryInfo?.retryDelay;
    this.retryDelay = delay === undefined ? undefined : durationMs(delay);
  }

  // ConnectError answers `instanceof` by shape, so any ConnectError would pass
  // for a CopexError (or a HubUntrusted); these classes go by the prototype chain.
  static override [Symbol.hasInstance](value: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }

  /** What to ask the hub's operator, for errors a partner cannot fix alone (see OPERATOR_ADVICE); "" for the rest. */
  get advice(): string {
    return OPERATOR_ADVICE[this.reason] ?? "";
  }

  get codeName(): string {
    return codeName(this.code);
  }

  /**
   * Whether calling again later may succeed: the hub was unavailable or asked
   * us to slow down. A request over the hub's size limit fails the same way
   * every time, though its code is RESOURCE_EXHAUSTED.
   */
  get retryable(): boolean {
    if (NOT_RETRYABLE_REASONS.has(this.reason)) return false;
    return RETRYABLE_CODES.has(this.code) || this.retryDelay !== undefined;
  }
}

/** The hub refused this client's certificate: in the TLS handshake, or as mapping to no partner. */
export class CertificateRejected extends CopexError {
  override get retryable(): boolean {
    return false;
  }
}

/** This client does not trust the hub's certificate: the CA file is not the hub's, or the name does not match. */
export class HubUntrusted extends CopexError {
  override get retryable(): boolean {
    return false;
  }
}

/** Nothing answered at the hub's address: the hub is down, the address or port is wrong, or a firewall drops it. */
export class HubUnreachable extends CopexError {}

/** The client could not find or read its settings (hub, CA, certificate, key). */
export class ConfigurationError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ConfigurationError";
  }
}

/** The private key is not the one the certificate was issued for. Found before any connection: the hub never saw the pair. */
export class KeyMismatch extends ConfigurationError {
  constructor(
    readonly cert: string,
    readonly key: string,
    options?: { cause?: unknown },
  ) {
    super(
      `the private key ${key} does not belong to the certificate ${cert}. Use the key you made with \`copex pki request\` for the request this certificate was signed from, beside the bundle's copex.toml`,
      options,
    );
    this.name = "KeyMismatch";
  }
}

// Node's certificate verification codes for a server certificate we do not trust.
const UNTRUSTED = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_SIGNATURE_FAILURE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);
const UNREACHABLE = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN"]);

function nodeCodes(err: unknown): string[] {
  const codes: string[] = [];
  const seen = new Set<unknown>();
  let current: unknown = err;
  while (current instanceof Error && !seen.has(current)) {
    seen.add(current);
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string") codes.push(code);
    current = current.cause;
  }
  return codes;
}

function alertCause(code: string): string {
  if (code.includes("CERTIFICATE_EXPIRED")) return `the hub says this client's certificate has expired. ${OPERATOR_ADVICE.CERTIFICATE_EXPIRED}`;
  if (code.includes("CERTIFICATE_REVOKED")) return `the hub says this client's certificate is revoked. ${OPERATOR_ADVICE.CERTIFICATE_REVOKED}`;
  if (code.includes("UNKNOWN_CA") || code.includes("DECRYPT_ERROR") || code.includes("BAD_CERTIFICATE")) {
    return "the hub does not trust the CA that signed this client's certificate (a certificate from another hub or CA?); use the certificate the hub operator signed";
  }
  if (code.includes("CERTIFICATE_REQUIRED")) return "the hub wants a client certificate and got none";
  return "the hub refused this client's certificate (wrong, expired or revoked certificate, or a key that does not match it)";
}


function detailsOf(err: ConnectError): Details {
  const [errorInfo] = err.findDetails(ErrorInfoSchema);
  const violations = err.findDetails(BadRequestSchema).flatMap((b) => b.fieldViolations);
  const [retryInfo] = err.findDetails(RetryInfoSchema);
  return {
    errorInfo,
    fieldViolations: violations.map((v: BadRequest_FieldViolation) => ({ field: v.field, description: v.description })),
    retryInfo,
  };
}

/** Turns anything a call threw into a CopexError (or a subclass); a CopexError comes back unchanged. */
export function toCopexError(err: unknown, hub = "the hub"): CopexError {
  if (err instanceof CopexError) return err;
  const ce = ConnectError.from(err);
  const codes = nodeCodes(err).concat(nodeCodes(ce.cause));
  const untrusted = codes.find((c) => UNTRUSTED.has(c));
  if (untrusted !== undefined) {
    const why =
      untrusted === "ERR_TLS_CERT_ALTNAME_INVALID"
        ? `the hub's certificate is not for this address; connect by the name in its certificate, or set serverName`
        : untrusted === "CERT_HAS_EXPIRED" || untrusted === "CERT_NOT_YET_VALID"
          ? `the hub's certificate is outside its validity period (${untrusted}); tell the hub operator`
          : `the hub's certificate does not chain to the CA file this client trusts (${untrusted}); use the ca.pem of the hub's bundle`;
    return new HubUntrusted(`cannot trust ${hub}: ${why}`, Code.Unavailable, {}, ce.metadata, err);
  }
  const alert = codes.find((c) => c.startsWith("ERR_SSL_") && c.includes("ALERT"));
  if (alert !== undefined) {
    return new CertificateRejected(`${hub} refused the TLS handshake: ${alertCause(alert)} (${alert})`, Code.Unavailable, {}, ce.metadata, err);
  }
  const unreachable = codes.find((c) => UNREACHABLE.has(c));
  if (unreachable !== undefined) {
    return new HubUnreachable(
      `cannot reach ${hub} (${unreachable}): is the hub running, and are the address and port right?`,
      Code.Unavailable,
      {},
      ce.metadata,
      err,
    );
  }
  const details = detailsOf(ce);
  if (ce.code === Code.Unauthenticated) {
    const reason = details.errorInfo?.reason ?? "UNAUTHENTICATED";
    const unmapped = ["UNKNOWN_PARTNER", "IDENTITY_NOT_REGISTERED", "UNREGISTERED_CA"].includes(reason);
    const what = unmapped ? "verified this client's certificate but it maps to no partner" : "refused this client's certificate";
    return new CertificateRejected(
      `${hub} ${what} (${reason}): ${ce.rawMessage}`,
      ce.code,
      details,
      ce.metadata,
      err,
    );
  }
  return new CopexError(ce.rawMessage, ce.code, details, ce.metadata, err);
}

/**
 * The CopexError for one item of a batch: a `google.rpc.Status` inside the
 * response. `prefix` (`records[3].`) is cut from field paths: the item is known.
 */
export function statusToCopexError(status: Status, prefix = ""): CopexError {
  const unpack = <T>(f: (any: Any) => T | undefined): T[] =>
    status.details.map(f).filter((x): x is T => x !== undefined);
  const errorInfo = unpack((a) => anyUnpack(a, ErrorInfoSchema))[0];
  const fieldViolations = unpack((a) => anyUnpack(a, BadRequestSchema))
    .flatMap((b) => b.fieldViolations)
    .map((v) => ({ field: v.field.startsWith(prefix) ? v.field.slice(prefix.length) : v.field, description: v.description }));
  const retryInfo = unpack((a) => anyUnpack(a, RetryInfoSchema))[0];
  const code = status.code in Code ? (status.code as Code) : Code.Unknown;
  return new CopexError(status.message, code, { errorInfo, fieldViolations, retryInfo });
}
