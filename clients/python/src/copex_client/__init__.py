"""The Python client of the copex hub.

    import copex_client
    with copex_client.connect(profile="ecpat-bundle/copex.toml") as hub:
        for practice in hub.list("practices", filter='regions:"KE"'):
            print(practice.name)
"""

from ._gen.copex.v1 import (
    common_pb2,
    partner_pb2,
    practice_pb2,
    record_pb2,
    search_pb2,
    sync_pb2,
    tool_pb2,
    workshop_pb2,
)
from .client import BatchReport, Client, ItemResult, connect
from .config import Profile, Settings, load_profile, resolve
from .errors import (
    Aborted,
    AlreadyExists,
    CertificateRejected,
    ConfigurationError,
    CopexError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    HubUnreachable,
    HubUntrusted,
    InvalidArgument,
    KeyMismatch,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TransportError,
    Unauthenticated,
    Unavailable,
)
from .follower import CursorStore, Follower, MemoryCursorStore, SqliteCursorStore

__all__ = [
    "Aborted", "AlreadyExists", "BatchReport", "CertificateRejected", "Client", "ConfigurationError",
    "CopexError", "CursorStore", "DeadlineExceeded", "FailedPrecondition", "FieldViolation", "Follower",
    "HubUnreachable", "HubUntrusted", "InvalidArgument", "ItemResult", "KeyMismatch", "MemoryCursorStore", "NotFound",
    "PermissionDenied", "Profile", "ResourceExhausted", "Settings", "SqliteCursorStore", "TransportError",
    "Unauthenticated", "Unavailable", "common_pb2", "connect", "load_profile", "partner_pb2", "practice_pb2",
    "record_pb2", "resolve", "search_pb2", "sync_pb2", "tool_pb2", "workshop_pb2",
]
