"""copex errors as exceptions: the gRPC code, the google.rpc details the hub
sends (ErrorInfo reason, BadRequest field violations, RetryInfo), and
whether trying again can help. docs/partners.md has the table of reasons."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import grpc
from google.rpc import error_details_pb2, status_pb2


class ConfigurationError(Exception):
    """No usable hub, CA, certificate or key was found."""


class KeyMismatch(ConfigurationError):
    """The private key is not the one the certificate was issued for. Found
    before any connection: the hub never saw this pair."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        super().__init__(
            f"the private key {key} does not belong to the certificate {cert}. Use the key you made with "
            "`copex pki request` for the request this certificate was signed from, beside the bundle's copex.toml"
        )


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


# Codes a client may retry as they are (after RetryInfo's delay, or backoff).
# The TypeScript client has the same rule (clients/typescript/src/errors.ts).
_RETRYABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Reasons under those codes that the same request will meet again.
_NOT_RETRYABLE_REASONS = {"REQUEST_TOO_LARGE", "QUERY_TOO_LONG"}

_NEW_CERTIFICATE = (
    "make a new key and request (`copex pki request --partner <your id>`) and ask the hub's operator "
    "to sign it (`copex pki sign`)"
)
# What a partner cannot fix alone: whom to ask, and what to ask for. The
# TypeScript client says the same (clients/typescript/src/errors.ts).
OPERATOR_ADVICE: Dict[str, str] = {
    "UNKNOWN_PARTNER": (
        "Ask the hub's operator to register your partner for this certificate (`copex partners create "
        "<your id>`), or to sign a certificate for the partner you are; send them the identity above"
    ),
    "IDENTITY_NOT_REGISTERED": (
        "Ask the hub's operator to register this certificate's identity (the SPIFFE ID or sha256 fingerprint "
        "above) on your partner"
    ),
    "UNREGISTERED_CA": (
        "Ask the hub's operator to register your CA on your partner (`copex partners create ... --ca`), "
        "sending them your CA certificate"
    ),
    "IDENTITY_CHANGED": (
        "The hub's operator changed which partner this certificate speaks for: ask them which partner it is "
        "now, or for a certificate of your partner"
    ),
    "PARTNER_SUSPENDED": (
        "Ask the hub's operator why your partner was suspended and to activate it again "
        "(`copex partners activate <your id>`); every call is refused until then"
    ),
    "ROLE_REQUIRED": "Ask the hub's operator to grant your partner the role named above, if it should have it",
    "CERTIFICATE_REVOKED": f"The hub's operator revoked this certificate: ask them why, then {_NEW_CERTIFICATE}",
    "CERTIFICATE_EXPIRED": f"This certificate has expired: {_NEW_CERTIFICATE}",
    "MULTIPLE_URI_SANS": f"A partner certificate carries exactly one URI SAN: {_NEW_CERTIFICATE}",
    "BAD_CERTIFICATE": f"The hub cannot read this certificate: {_NEW_CERTIFICATE}",
}


class CopexError(Exception):
    """A call the hub (or the way to it) refused."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        metadata: Optional[Dict[str, str]] = None,
        field_violations: Optional[List[FieldViolation]] = None,
        retry_delay: Optional[float] = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations or [])
        self.retry_delay = retry_delay
        super().__init__(self._text())

    @property
    def advice(self) -> str:
        """What to ask the hub's operator, for errors a partner cannot fix
        alone (a suspended partner, an unregistered or revoked certificate);
        "" for the rest."""
        return OPERATOR_ADVICE.get(self.reason, "")

    def _text(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason:
            text += f" (reason {self.reason})"
        if self.advice:
            text += f". {self.advice}"
        for v in self.field_violations:
            text += f"\n  {v.field}: {v.description}"
        return text

    @property
    def retryable(self) -> bool:
        if self.reason in _NOT_RETRYABLE_REASONS:
            return False
        return self.code in _RETRYABLE_CODES or self.retry_delay is not None


class InvalidArgument(CopexError):
    pass


class NotFound(CopexError):
    pass


class AlreadyExists(CopexError):
    pass


class PermissionDenied(CopexError):
    pass


class Unauthenticated(CopexError):
    pass


class FailedPrecondition(CopexError):
    pass


class Aborted(CopexError):
    pass


class ResourceExhausted(CopexError):
    pass


class Unavailable(CopexError):
    pass


class DeadlineExceeded(CopexError):
    pass


class TransportError(CopexError):
    """The TLS connection itself failed. Never retried: the same settings
    fail the same way until someone fixes them."""

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        reason: str = "",
        metadata: Optional[Dict[str, str]] = None,
    ) -> None:
        super().__init__(code, message, reason, metadata)

    def _text(self) -> str:
        return f"{self.message}. {self.advice}" if self.advice else self.message

    @property
    def retryable(self) -> bool:
        return False


class CertificateRejected(TransportError):
    """The hub refused this client's certificate: in the TLS handshake
    (unknown CA, revoked, expired; code UNAVAILABLE, no reason), or, at
    connect(), in its first answer (code UNAUTHENTICATED with the reason,
    such as UNKNOWN_PARTNER or IDENTITY_NOT_REGISTERED, and the advice)."""

    @classmethod
    def from_answer(cls, hub: str, error: CopexError) -> "CertificateRejected":
        unmapped = error.reason in ("UNKNOWN_PARTNER", "IDENTITY_NOT_REGISTERED", "UNREGISTERED_CA")
        what = "verified this client's certificate but it maps to no partner" if unmapped else (
            "refused this client's certificate"
        )
        return cls(
            f"the hub {hub} {what} ({error.reason or error.code.name}): {error.message}",
            error.code,
            error.reason,
            error.metadata,
        )


class HubUntrusted(TransportError):
    """The hub's certificate is not trusted by the CA this client was given."""


class HubUnreachable(CopexError):
    """Nothing answers at the hub's address. Retryable: a hub restarts."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)

    def _text(self) -> str:
        return self.message


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}
_CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def from_status(status: status_pb2.Status) -> CopexError:
    """A google.rpc.Status (a call's, or a batch item's) as an exception."""
    code = _CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    reason = ""
    metadata: Dict[str, str] = {}
    violations: List[FieldViolation] = []
    retry_delay: Optional[float] = None
    for detail in status.details:
        # Unpack answers False, leaving the message alone, for another type.
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad):
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Unpack(retry):
            retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    cls = _BY_CODE.get(code, CopexError)
    return cls(code, status.message, reason, metadata, violations, retry_delay)


def from_rpc_error(err: grpc.RpcError) -> CopexError:
    """A failed call as an exception, with the details from the
    grpc-status-details-bin trailer when the hub sent them."""
    from grpc_status import rpc_status

    # The errors grpc raises for a call are also the call (grpc.Call), with
    # its code, details and trailers.
    if not isinstance(err, grpc.Call):
        return from_status(status_pb2.Status(code=grpc.StatusCode.UNKNOWN.value[0], message=str(err)))
    status = None
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        status = None  # trailer and status disagree: use the plain status
    if status is None:
        status = status_pb2.Status(code=err.code().value[0], message=err.details() or "")
    return from_status(status)
