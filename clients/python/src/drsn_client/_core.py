"""The part of a resuming sensor stream that does no I/O, shared by the sync and asyncio clients: the samples not yet
answered, where a new call starts, which windows were already delivered, how a call's end is judged, and backoff."""

from __future__ import annotations

import logging
import random
from collections import deque
from dataclasses import dataclass, field

import grpc
import numpy as np

from drsn_client._proto import diagnosis_pb2 as pb

log = logging.getLogger("drsn_client")

# The trailers a stream's ending status carries: where to go on (a sample index, or `start`), and the sensor's
# condition state to send back as `resume_condition`.
RESUME_TRAILER = "drsn-resume-from"
CONDITION_TRAILER = "drsn-condition-bin"

# Endings after which the stream goes on elsewhere from the resume point: a drain, a connection at its maximum age,
# a replica that went away (a broken connection reads UNAVAILABLE, and Python's gRPC sometimes INTERNAL), a stream
# closed for being idle, a replica with no room for another stream.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# Endings that mean the connection is done (a drain, its maximum age, a replica gone): the next call needs a new one.
RETIRE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})

DETAIL = {"compact": pb.RESULT_DETAIL_COMPACT, "full": pb.RESULT_DETAIL_FULL}


class StreamError(Exception):
    """The stream ended for a reason that resending cannot fix (bad input, a wrong token, a model that does not take
    this sensor): `code` and `details` are the server's."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class BufferFull(Exception):
    """`send` waited its timeout for room: the server has not answered for as many samples as the buffer holds."""


@dataclass(frozen=True)
class Window:
    """One window's result. `index` counts the stream's windows from 0 across every resume, as one uninterrupted
    stream would; `result` is the server's `WindowResult` (its own `window_index` restarts on each new call)."""

    index: int
    result: pb.WindowResult

    @property
    def label(self) -> str:
        return self.result.label

    @property
    def first_sample_index(self) -> int:
        return self.result.first_sample_index

    @property
    def status(self) -> int:
        return self.result.status


@dataclass(frozen=True)
class ConditionChange:
    """The sensor's debounced condition changed (onset, class change, zone rise, clear, sensor fault)."""

    condition: pb.SensorCondition


@dataclass(frozen=True)
class Gap:
    """Samples did not continue where the previous ones ended (the gateway's own indices); windowing restarted."""

    discontinuity: pb.Discontinuity


Event = Window | ConditionChange | Gap


@dataclass
class Stats:
    """What a gateway may export: calls opened, resumes after an interrupted call, samples sent again, and windows
    a new call repeated that were dropped because they had been delivered already."""

    calls: int = 0
    resumes: int = 0
    samples_resent: int = 0
    windows_repeated: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class Adc:
    """How int16 samples passed to `send` are sent: as the converter's codes, value = (code - offset) * scale."""

    scale: float
    offset: float = 0.0
    bits: int = 16


@dataclass(frozen=True)
class Sensor:
    """What a stream is: which machine and sensor, its rate, and what to send back."""

    machine_id: str
    sensor_id: str
    sample_rate_hz: float
    channels: int = 1
    hop: int = 0
    detail: str = "compact"
    machine_group: int = 0
    foundation: int = 0
    adc: Adc | None = None
    first_sample_index: int = 0
    # The model to serve the stream, and its version: empty for the server's default model and its newest version
    # (taken afresh at every resume, so a stream follows a rolling model update; name a version to pin it).
    model: str = ""
    model_version: str = ""


class Backoff:
    """Jittered exponential backoff ("full jitter"): a delay drawn from [0, min(cap, base * 2^n)]."""

    def __init__(self, base: float = 0.1, cap: float = 10.0, rng: random.Random | None = None):
        self.base, self.cap = base, cap
        self.attempt = 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class End:
    """How a call ended: `done` (every window answered), `retry` from `resume_at`, or `error` to raise."""

    done: bool = False
    retry: bool = False
    error: StreamError | None = None
    resume_at: int = 0


@dataclass
class StreamState:
    """The samples a stream holds until the server has answered for them, and what has been delivered.

    Samples are released once a later window has been answered: a new call always restarts at a window boundary the
    server named (or, after a broken connection, the one after the last window delivered), so nothing before it is
    needed again. Windows a new call repeats are dropped: each window is delivered once, in order.
    """

    sensor: Sensor
    max_buffered_frames: int
    chunk_frames: int = 4096
    stats: Stats = field(default_factory=Stats)
    # (first sample index, samples[frames, channels]) not yet released.
    held: deque = field(default_factory=deque)
    held_frames: int = 0
    next_index: int = 0
    resume_at: int = 0
    send_closed: bool = False
    last_first: int | None = None
    delivered: int = 0
    carry: pb.ConditionCarry | None = None
    # Client samples per window step, learnt from StreamOpened: after a broken connection the next window starts
    # this far after the last one delivered.
    hop_frames: int | None = None
    # Progress on the current call, to reset backoff once a call has delivered something.
    call_delivered: int = 0
    # The furthest sample index sent on any call: what a new call sends again before it is counted as resent.
    sent_until: int = 0

    def __post_init__(self) -> None:
        self.next_index = self.resume_at = self.sent_until = self.sensor.first_sample_index
        if self.sensor.adc is None and self.sensor.channels < 1:
            raise ValueError("channels must be at least 1")

    # --- the gateway's side -----------------------------------------------------------------------------------

    def frames_of(self, samples) -> np.ndarray:
        """Samples as [frames, channels], float32 or (with an ADC) int16; bytes are f32le."""
        if isinstance(samples, (bytes, bytearray, memoryview)):
            array = np.frombuffer(samples, dtype="<f4")
        else:
            array = np.asarray(samples)
        if array.dtype == np.int16:
            if self.sensor.adc is None:
                raise ValueError("int16 samples need the sensor's Adc (scale, offset, bits) to be set")
        elif array.dtype.kind in "iuf":
            if self.sensor.adc is not None:
                raise ValueError("this stream sends ADC codes: pass int16 samples")
            array = array.astype(np.float32, copy=False)
        else:
            raise TypeError(f"samples of dtype {array.dtype} cannot be sent")
        channels = self.sensor.channels
        if array.size % channels:
            raise ValueError(f"{array.size} samples are not whole frames of {channels} channels")
        return array.reshape(-1, channels)

    def room(self) -> int:
        return self.max_buffered_frames - self.held_frames

    def append(self, frames: np.ndarray) -> None:
        if self.send_closed:
            raise ValueError("the stream was closed for sending")
        if len(frames) == 0:
            return
        self.held.append((self.next_index, frames))
        self.held_frames += len(frames)
        self.next_index += len(frames)

    def has_unsent(self, cursor: int) -> bool:
        return cursor < self.next_index

    def chunks_from(self, cursor: int) -> list[tuple[int, np.ndarray]]:
        """The held samples from `cursor` on, in chunks of at most chunk_frames."""
        out = []
        for first, frames in self.held:
            end = first + len(frames)
            if end <= cursor:
                continue
            start = max(cursor, first) - first
            for at in range(start, len(frames), self.chunk_frames):
                out.append((first + at, frames[at : at + self.chunk_frames]))
        return out

    # --- messages -------------------------------------------------------------------------------------------

    def open_message(self) -> pb.StreamDiagnoseRequest:
        s = self.sensor
        if s.detail not in DETAIL:
            raise ValueError(f"detail must be one of {sorted(DETAIL)}")
        open_ = pb.StreamOpen(
            machine_id=s.machine_id,
            sensor_id=s.sensor_id,
            sample_rate_hz=s.sample_rate_hz,
            channels=s.channels,
            hop=s.hop,
            detail=DETAIL[s.detail],
            machine_group=s.machine_group,
            foundation=s.foundation,
            model=s.model,
            model_version=s.model_version,
        )
        if self.carry is not None:
            open_.resume_condition.CopyFrom(self.carry)
        return pb.StreamDiagnoseRequest(open=open_)

    def chunk_message(self, first: int, frames: np.ndarray) -> pb.StreamDiagnoseRequest:
        chunk = pb.SampleChunk(first_sample_index=first)
        if frames.dtype == np.int16:
            adc = self.sensor.adc
            chunk.i16le.data = frames.astype("<i2", copy=False).tobytes()
            chunk.i16le.scale, chunk.i16le.offset, chunk.i16le.adc_bits = adc.scale, adc.offset, adc.bits
        else:
            chunk.f32le = frames.astype("<f4", copy=False).tobytes()
        return pb.StreamDiagnoseRequest(chunk=chunk)

    # --- the server's side ----------------------------------------------------------------------------------

    def call_started(self) -> int:
        """A new call begins at `resume_at`; returns that cursor."""
        self.stats.calls += 1
        self.call_delivered = 0
        if self.stats.calls > 1:
            self.stats.resumes += 1
            self.stats.samples_resent += max(0, self.sent_until - self.resume_at)
        return self.resume_at

    def sent(self, until: int) -> None:
        self.sent_until = max(self.sent_until, until)

    def on_response(self, response: pb.StreamDiagnoseResponse) -> list[Event]:
        kind = response.WhichOneof("event")
        if kind == "opened":
            opened = response.opened
            if opened.model_sample_rate_hz > 0:
                ratio = self.sensor.sample_rate_hz / opened.model_sample_rate_hz
                self.hop_frames = max(1, round(opened.hop * ratio))
            if opened.HasField("condition") and opened.condition.HasField("carry"):
                self.carry = opened.condition.carry
            return []
        if kind == "window":
            result = response.window
            first = result.first_sample_index
            if self.last_first is not None and first <= self.last_first:
                self.stats.windows_repeated += 1
                return []
            self.last_first = first
            window = Window(self.delivered, result)
            self.delivered += 1
            self.call_delivered += 1
            self.release_before(first)
            return [window]
        if kind == "condition":
            if response.condition.HasField("carry"):
                self.carry = response.condition.carry
            return [ConditionChange(response.condition)]
        if kind == "discontinuity":
            return [Gap(response.discontinuity)]
        return []

    def release_before(self, index: int) -> None:
        while self.held:
            first, frames = self.held[0]
            end = first + len(frames)
            if end <= index:
                self.held.popleft()
                self.held_frames -= len(frames)
            elif first < index:
                cut = index - first
                self.held[0] = (index, frames[cut:])
                self.held_frames -= cut
                break
            else:
                break

    def held_from(self) -> int:
        return self.held[0][0] if self.held else self.next_index

    def on_end(self, code: grpc.StatusCode, details: str, trailers) -> End:
        """Judges a call's end. `trailers` is its trailing metadata (pairs), possibly empty."""
        meta = dict(trailers or ())
        carry = meta.get(CONDITION_TRAILER)
        if isinstance(carry, bytes) and carry:
            self.carry = pb.ConditionCarry.FromString(carry)
        if code == grpc.StatusCode.OK:
            if self.send_closed:
                return End(done=True)
            # The server ended a stream we still send on: go on from the next window.
            code = grpc.StatusCode.UNAVAILABLE
        if code not in RETRYABLE:
            return End(error=StreamError(code, details))
        self.stats.last_error = f"{code.name}: {details}"
        named = meta.get(RESUME_TRAILER)
        if named == "start":
            resume = self.held_from()
        elif isinstance(named, str) and named.isdigit():
            resume = int(named)
        elif self.last_first is not None and self.hop_frames is not None:
            resume = self.last_first + self.hop_frames
        else:
            resume = self.held_from()
        # Never before what is held (released samples were answered for), never past what was sent.
        self.resume_at = min(max(resume, self.held_from()), self.next_index)
        return End(retry=True, resume_at=self.resume_at)

    def plan_retry(self, code: grpc.StatusCode, end: End, address: str, backoff: Backoff) -> tuple[float, bool]:
        """After a call that ended to be resumed: how long to wait before the next one (backoff, reset once a call
        has delivered), logged; and whether to wait for new samples first (a stream the server closed as idle)."""
        if self.call_delivered:
            backoff.reset()
        delay = backoff.next()
        s = self.sensor
        log.info(
            "stream %s/%s ended with %s on %s; resuming from sample %d in %.2fs",
            s.machine_id,
            s.sensor_id,
            code.name,
            address,
            end.resume_at,
            delay,
        )
        return delay, code == grpc.StatusCode.DEADLINE_EXCEEDED

    def finished(self) -> bool:
        """Nothing more to do: the gateway closed, and no call is needed for what remains."""
        return self.send_closed and self.resume_at >= self.next_index


class Targets:
    """The addresses to try, in turn: each `host:port` of the list, a DNS name standing for each address it
    resolves to (resolved again on every round, so replicas added later are found)."""

    def __init__(self, addresses, resolve=None):
        if isinstance(addresses, str):
            addresses = [addresses]
        if not addresses:
            raise ValueError("at least one address is needed")
        self.addresses = list(addresses)
        self.resolve = resolve or _resolve
        self.round: list[tuple[str, str | None]] = []

    def next(self) -> tuple[str, str | None]:
        """(address to dial, TLS server name to check when it differs from the address's host)."""
        if not self.round:
            for address in self.addresses:
                self.round.extend(self.resolve(address))
            if not self.round:
                self.round = [(a, None) for a in self.addresses]
        return self.round.pop(0)


def _resolve(address: str) -> list[tuple[str, str | None]]:
    import ipaddress
    import socket

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return [(address, None)]
    try:
        ipaddress.ip_address(host)
        return [(address, None)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError:
        return [(address, None)]
    seen, out = set(), []
    for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        if ip in seen:
            continue
        seen.add(ip)
        dial = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        out.append((dial, host))
    return out
