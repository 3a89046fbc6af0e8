"""connect() and the Client: the service stubs with errors as exceptions,
iterators over pages, and batch upserts."""

from __future__ import annotations

import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import grpc

from . import _tls
from ._gen.copex.v1 import (
    audit_pb2_grpc,
    partner_pb2,
    partner_pb2_grpc,
    practice_pb2,
    practice_pb2_grpc,
    record_pb2,
    search_pb2,
    search_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
    tool_pb2,
    tool_pb2_grpc,
    workshop_pb2,
    workshop_pb2_grpc,
)
from .config import PathLike, Settings, resolve
from .errors import (
    CertificateRejected,
    ConfigurationError,
    CopexError,
    KeyMismatch,
    TransportError,
    Unauthenticated,
    from_rpc_error,
    from_status,
)

# The hub's own limits (API.md): a batch holds 1..1000 records.
MAX_BATCH = 1000
MAX_MESSAGE = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0


class _Stub:
    """A generated stub whose methods raise CopexError (and, when the
    connection itself failed, CertificateRejected/HubUntrusted/HubUnreachable)
    instead of grpc.RpcError, with a default deadline for unary calls."""

    def __init__(self, client: "Client", stub: Any, streaming: Sequence[str] = ()) -> None:
        self._client = client
        self._stub = stub
        self._streaming = set(streaming)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)
        client = self._client
        if name in self._streaming:

            def stream(request: Any, **kwargs: Any) -> Iterator[Any]:
                call = method(request, **kwargs)
                return _Stream(client, call)

            return stream

        def unary(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", client.timeout)
            try:
                return method(request, **kwargs)
            except grpc.RpcError as err:
                raise client._error(err) from None

        return unary


class _Stream:
    """A server stream whose errors are CopexErrors; cancel() ends it."""

    def __init__(self, client: "Client", call: Any) -> None:
        self._client = client
        self._call = call

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as err:
            raise self._client._error(err) from None

    def cancel(self) -> None:
        self._call.cancel()


@dataclass(frozen=True)
class ItemResult:
    """One record's outcome in batch_upsert, by its index in the input."""

    index: int
    name: str
    outcome: str  # CREATED, UPDATED, UNCHANGED or FAILED
    etag: str
    error: Optional[CopexError]


@dataclass
class BatchReport:
    results: List[ItemResult] = field(default_factory=list)

    @property
    def failed(self) -> List[ItemResult]:
        return [r for r in self.results if r.error is not None]

    @property
    def ok(self) -> bool:
        return not self.failed

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)


_KINDS = {
    "workshops": ("workshops", workshop_pb2.ListWorkshopsRequest, "ListWorkshops"),
    "practices": ("practices", practice_pb2.ListPracticesRequest, "ListPractices"),
    "tools": ("tools", tool_pb2.ListToolsRequest, "ListTools"),
}


class Client:
    """A connection to a hub as one partner. Use as a context manager, or
    call close()."""

    def __init__(self, settings: Settings, channel: grpc.Channel, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.settings = settings
        self.channel = channel
        self.timeout = timeout
        self.partners = _Stub(self, partner_pb2_grpc.PartnerServiceStub(channel))
        self.workshops = _Stub(self, workshop_pb2_grpc.WorkshopServiceStub(channel))
        self.practices = _Stub(self, practice_pb2_grpc.PracticeServiceStub(channel))
        self.tools = _Stub(self, tool_pb2_grpc.ToolServiceStub(channel))
        self.search_service = _Stub(self, search_pb2_grpc.SearchServiceStub(channel))
        self.sync = _Stub(self, sync_pb2_grpc.SyncServiceStub(channel), streaming=("WatchChanges",))
        self.audit = _Stub(self, audit_pb2_grpc.AuditServiceStub(channel))

    def _error(self, err: grpc.RpcError) -> CopexError:
        error = from_rpc_error(err)
        # A failed handshake looks like any other UNAVAILABLE; find out which.
        if error.code == grpc.StatusCode.UNAVAILABLE and not error.reason:
            specific = _tls.probe(self.settings)
            if specific is not None:
                return specific
        return error

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def whoami(self) -> partner_pb2.Partner:
        partner: partner_pb2.Partner = self.partners.GetCurrentPartner(partner_pb2.GetCurrentPartnerRequest())
        return partner

    def list(
        self,
        collection: str,
        parent: str = "partners/-",
        filter: str = "",
        order_by: str = "",
        page_size: int = 1000,
    ) -> Iterator[Any]:
        """Every record of a collection ("workshops", "practices", "tools")
        matching `filter`, page after page."""
        try:
            field_name, request_type, method = _KINDS[collection]
        except KeyError:
            raise ValueError(f"collection must be one of {', '.join(_KINDS)}, not {collection!r}") from None
        stub = {"workshops": self.workshops, "practices": self.practices, "tools": self.tools}[collection]
        token = ""
        while True:
            page = getattr(stub, method)(
                request_type(parent=parent, filter=filter, order_by=order_by, page_size=page_size, page_token=token)
            )
            yield from getattr(page, field_name)
            token = page.next_page_token
            if not token:
                return

    def search(
        self,
        query: str,
        kinds: Iterable["record_pb2.RecordKind.ValueType"] = (),
        filter: str = "",
        page_size: int = 100,
        wait_for_index: bool = False,
    ) -> Iterator[search_pb2.SearchHit]:
        """Every hit for `query`, best first, page after page.

        Search is an index that follows the change feed (within a second);
        `wait_for_index` makes the first page wait until every write committed
        before the call is indexed, to read your own writes."""
        token = ""
        while True:
            page = self.search_service.Search(
                search_pb2.SearchRequest(
                    query=query,
                    kinds=list(kinds),
                    filter=filter,
                    page_size=page_size,
                    page_token=token,
                    wait_for_index=wait_for_index and not token,
                )
            )
            yield from page.hits
            token = page.next_page_token
            if not token:
                return

    def batch_upsert(
        self,
        records: Iterable[record_pb2.Record],
        chunk_size: int = MAX_BATCH,
        attempts: int = 5,
    ) -> BatchReport:
        """Creates or replaces records, `chunk_size` (at most 1000) per call,
        and reports each one. A chunk is retried with the same request id
        while the hub is unavailable or busy, so a chunk the hub committed
        but could not answer is answered from its first outcome, not applied
        twice."""
        if not 1 <= chunk_size <= MAX_BATCH:
            raise ValueError(f"chunk_size must be 1 to {MAX_BATCH}")
        report = BatchReport()
        chunk: List[record_pb2.Record] = []
        for record in records:
            chunk.append(record)
            if len(chunk) == chunk_size:
                self._upsert_chunk(chunk, len(report.results), report, attempts)
                chunk = []
        if chunk:
            self._upsert_chunk(chunk, len(report.results), report, attempts)
        return report

    def _upsert_chunk(self, chunk: List[record_pb2.Record], offset: int, report: BatchReport, attempts: int) -> None:
        request = sync_pb2.BatchUpsertRecordsRequest(records=chunk, request_id=str(uuid.uuid4()))
        delay = 0.2
        for attempt in range(attempts):
            try:
                response = self.sync.BatchUpsertRecords(request)
                break
            except CopexError as err:
                if not err.retryable or attempt == attempts - 1:
                    raise
                time.sleep(max(delay, err.retry_delay or 0))
                delay = min(delay * 2, 10)
        for i, result in enumerate(response.results):
            outcome = sync_pb2.UpsertOutcome.Name(result.outcome).removeprefix("UPSERT_OUTCOME_")
            error = from_status(result.error) if result.HasField("error") else None
            report.results.append(ItemResult(offset + i, result.name, outcome, result.etag, error))


def _check_key_pair(settings: Settings) -> None:
    """A key that is not the certificate's fails here, naming both files;
    gRPC would only report a handshake that never started."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        # An empty password: an encrypted key fails instead of prompting.
        context.load_cert_chain(certfile=str(settings.cert), keyfile=str(settings.key), password="")
    except ssl.SSLError as err:
        if getattr(err, "reason", None) == "KEY_VALUES_MISMATCH":
            raise KeyMismatch(str(settings.cert), str(settings.key)) from err
        raise ConfigurationError(
            f"cannot use the certificate {settings.cert} with the key {settings.key}: {err}. Both must be PEM, "
            "the key unencrypted"
        ) from err


def connect(
    hub: Optional[str] = None,
    ca: Optional[PathLike] = None,
    cert: Optional[PathLike] = None,
    key: Optional[PathLike] = None,
    profile: Optional[PathLike] = None,
    server_name: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
) -> Client:
    """Connects to a hub over mutual TLS. Settings come from the arguments,
    then COPEX_HUB/COPEX_CA/COPEX_CERT/COPEX_KEY, then a profile (`profile`,
    else COPEX_PROFILE, else ./copex.toml). With `check`, one call is made
    at once so a refused certificate (in the handshake, or UNAUTHENTICATED
    in the first answer), an untrusted hub or a hub that is down raises
    here (CertificateRejected, HubUntrusted, HubUnreachable). A key that is
    not the certificate's raises KeyMismatch before any connection."""
    settings = resolve(hub, ca, cert, key, profile, server_name)
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=settings.ca.read_bytes(),
            private_key=settings.key.read_bytes(),
            certificate_chain=settings.cert.read_bytes(),
        )
    except OSError as err:
        raise ConfigurationError(
            f"cannot read {err.filename}: {err.strerror} (settings from "
            f"{settings.profile or 'arguments and COPEX_* variables'}; the key you made with "
            "`copex pki request` goes beside the bundle's copex.toml)"
        ) from err
    _check_key_pair(settings)
    options: List[Tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        # Fail a call at once while the hub is down, instead of waiting.
        ("grpc.enable_retries", 0),
    ]
    if settings.server_name:
        options.append(("grpc.ssl_target_name_override", settings.server_name))
    channel = grpc.secure_channel(settings.target, credentials, options=options)
    client = Client(settings, channel, timeout)
    if check:
        try:
            client.whoami()
        except TransportError:
            channel.close()
            raise
        except Unauthenticated as err:
            # The hub refused the certificate in its first answer (it maps to
            # no partner, or was revoked): the same error as a refusal in the
            # handshake, as connect() promises and the TypeScript client throws.
            channel.close()
            raise CertificateRejected.from_answer(settings.hub, err) from err
        except CopexError:
            channel.close()
            raise
    return client
