"""How a connection to a replica is made, for both clients: TLS or mutual TLS, the bearer token, and channel options
(keepalive that finds a dead replica, quick reconnection to a replica that comes back, gRPC's own retries off: the
stream resumes itself)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

# A ping this often finds a replica that vanished without closing the connection; no answer in the timeout breaks it.
KEEPALIVE_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
MAX_MESSAGE = 64 << 20


@dataclass(frozen=True)
class Tls:
    """TLS to the server: the CA to check it with (None: the system's), and for mutual TLS this client's
    certificate chain and private key (PEM bytes)."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def from_files(cls, ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None):
        def read(path):
            return Path(path).read_bytes() if path else None

        return cls(read(ca), read(cert), read(key))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


@dataclass(frozen=True)
class ChannelConfig:
    tls: Tls | None = None
    token: str | None = None

    def options(self, server_name: str | None) -> list[tuple[str, object]]:
        options = [
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.enable_retries", 0),
            # A client's connection is its own (not shared with other clients in the process).
            ("grpc.use_local_subchannel_pool", 1),
            # A replica that comes back (a restart on the same address) is reconnected to within a second or so,
            # not after gRPC's default backoff of up to two minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if server_name and self.tls is not None:
            options.append(("grpc.ssl_target_name_override", server_name))
        return options

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()
