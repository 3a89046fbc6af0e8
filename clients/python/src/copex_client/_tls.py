"""Telling why a connection failed. gRPC reports every failed handshake as
UNAVAILABLE with library-specific text; one handshake by hand with Python's
ssl module says which side refused, and why."""

from __future__ import annotations

import socket
import ssl
from typing import Optional

from .config import Settings
from .errors import OPERATOR_ADVICE, CertificateRejected, CopexError, HubUnreachable, HubUntrusted

# The HTTP/2 connection preface and an empty SETTINGS frame: the hub answers
# with its own SETTINGS when it accepted our certificate, with an alert when
# not (TLS 1.3 sends its verdict after the client has finished its side).
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"

_REFUSED = {
    "TLSV1_ALERT_UNKNOWN_CA": "it was not issued by a CA the hub trusts (alert: unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "it was not issued by a CA the hub trusts (alert: bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "it has been revoked (alert: certificate revoked)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "it has expired (alert: certificate expired)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the hub requires a client certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the hub could not verify it (alert: certificate unknown)",
}


def probe(settings: Settings, timeout: float = 10.0) -> Optional[CopexError]:
    """The specific error for this hub and these files, or None when a
    handshake by hand succeeds (the failure was something else)."""
    hub = settings.hub
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(settings.ca))
        context.load_cert_chain(certfile=str(settings.cert), keyfile=str(settings.key))
        context.set_alpn_protocols(["h2"])
    except (OSError, ssl.SSLError) as err:
        return CertificateRejected(
            f"cannot use the CA {settings.ca}, certificate {settings.cert} or key {settings.key}: {err}. "
            "Check the files of your onboarding bundle, and that your key is beside copex.toml"
        )
    host, port = settings.target.rsplit(":", 1)
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=settings.server_name or settings.host) as tls:
                tls.sendall(_PREFACE)
                if not tls.recv(64):
                    return None
    except ssl.SSLCertVerificationError as err:
        why = err.verify_message or str(err)
        if "unable to get local issuer" in why or "self-signed" in why or "self signed" in why:
            why = "it was signed by another CA"
        elif "expired" in why:
            why = "it has expired; tell the hub's operator"
        elif "mismatch" in why.lower():
            why = "it is not valid for the name this client connects to; use the hub's DNS name, or set server_name"
        return HubUntrusted(
            f"the hub {hub}'s certificate is not trusted by {settings.ca}: {why}. "
            "Use the ca.pem from your onboarding bundle for this hub"
        )
    except ssl.SSLError as err:
        reason = getattr(err, "reason", None) or ""
        why = _REFUSED.get(reason, f"the TLS handshake ended with {reason or err}")
        if reason == "SSLV3_ALERT_CERTIFICATE_REVOKED":
            fix = OPERATOR_ADVICE["CERTIFICATE_REVOKED"]
        elif reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED":
            fix = OPERATOR_ADVICE["CERTIFICATE_EXPIRED"]
        else:
            fix = (
                "Use the certificate from your onboarding bundle for this hub, or make a new request "
                "(copex pki request) and ask the hub's operator to sign it"
            )
        return CertificateRejected(f"the hub {hub} refused this client's certificate {settings.cert}: {why}. {fix}")
    except (ConnectionResetError, BrokenPipeError) as err:
        # An alert can arrive as a reset when the hub closes at once.
        return CertificateRejected(
            f"the hub {hub} closed the connection during the TLS handshake ({err}): it most likely refused "
            f"this client's certificate {settings.cert}. Check it comes from your onboarding bundle for this hub"
        )
    except OSError as err:
        return HubUnreachable(f"cannot reach the hub at {hub}: {err}. Is it running, and is the address right?")
    return None
