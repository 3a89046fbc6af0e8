"""The connection every example uses: mutual TLS to a copex hub.

Settings come from the same variables as the copex CLI (COPEX_HUB, COPEX_CA,
COPEX_CERT, COPEX_KEY); the defaults fit a hub started with
`cargo run --release -- serve` in the repository root.
"""

import os

import grpc

PKI = os.path.join(os.path.dirname(__file__), "..", "..", "copex-data", "pki")


def _read(variable, default):
    with open(os.environ.get(variable, os.path.join(PKI, default)), "rb") as f:
        return f.read()


def channel():
    """A secure channel to the hub, presenting the partner's certificate."""
    address = os.environ.get("COPEX_HUB", "https://localhost:50051").removeprefix("https://")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read("COPEX_CA", "ca.pem"),
        private_key=_read("COPEX_KEY", "admin.key"),
        certificate_chain=_read("COPEX_CERT", "admin.pem"),
    )
    return grpc.secure_channel(address, credentials)
