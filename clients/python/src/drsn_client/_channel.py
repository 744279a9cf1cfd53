"""How a connection to a replica is made, for both clients: TLS or mutual TLS, the bearer token, and channel options
(keepalive that finds a dead replica, quick reconnection to a replica that comes back, gRPC's own retries off: the
stream resumes itself)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from drsn_client._core import Adc, Sensor, Targets

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


class Replicas:
    """What both clients share: the addresses to try in turn, one connection per address shared by every stream of
    the client (a gateway's sensors go over one connection), and how a stream is described. A subclass says how a
    channel is made (`_open`) and what a stream is (`_stream`)."""

    _stream: type

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        token: str | None = None,
        tls: Tls | None = None,
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
    ):
        self.targets = Targets(addresses)
        self.config = ChannelConfig(tls, token)
        self.backoff = (backoff_base, backoff_cap)
        self._channels: dict = {}
        self._lock = threading.Lock()

    def _open(self, address: str, options: list, credentials: grpc.ChannelCredentials | None):
        raise NotImplementedError

    def channel(self):
        """The next address, and the connection to it (made on first use)."""
        with self._lock:
            address, server_name = self.targets.next()
            channel = self._channels.get(address)
            if channel is None:
                credentials = self.config.tls.credentials() if self.config.tls is not None else None
                channel = self._open(address, self.config.options(server_name), credentials)
                self._channels[address] = channel
            return channel, address

    def retire(self, address: str, channel) -> None:
        """A connection the server is done with (draining, aged, gone): the next stream to this address gets a new
        one. Streams still on the old one end on their own; it is closed once none holds it."""
        with self._lock:
            if self._channels.get(address) is channel:
                del self._channels[address]

    def _take_channels(self) -> list:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        return channels

    def stream(
        self,
        machine_id: str,
        sensor_id: str,
        sample_rate_hz: float,
        *,
        channels: int = 1,
        hop: int = 0,
        detail: str = "compact",
        adc: Adc | None = None,
        first_sample_index: int = 0,
        max_buffered_seconds: float = 60.0,
        on_resume=None,
        model: str = "",
        model_version: str = "",
    ):
        """A sensor's stream. It holds up to `max_buffered_seconds` of samples the server has not answered for;
        `on_resume(stats, address)` is called before each new call after the first. `model` and `model_version`
        name what serves it (empty: the server's default model, its newest version, chosen again at every resume)."""
        sensor = Sensor(
            machine_id,
            sensor_id,
            sample_rate_hz,
            channels,
            hop,
            detail,
            adc=adc,
            first_sample_index=first_sample_index,
            model=model,
            model_version=model_version,
        )
        return self._stream(self, sensor, max(1, int(max_buffered_seconds * sample_rate_hz)), on_resume)
