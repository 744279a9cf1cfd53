"""The blocking client: `Client` for one or more replicas, and `SensorStream`, one sensor's stream that goes on where
the server says after a drain, an aged connection, a replica gone or restarted, delivering every window once and in
order. gRPC runs the calls on its own threads; one driver thread per stream opens them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Self

import grpc

from drsn_client._channel import Replicas, Tls
from drsn_client._core import RETIRE, Adc, Backoff, BufferFull, Event, Sensor, Stats, StreamError, StreamState
from drsn_client._proto import diagnosis_pb2_grpc as rpc

_DONE = object()


class Client(Replicas):
    """Replicas to stream to: a list of `host:port` (tried in turn) or a DNS name standing for several. `stream(...)`
    opens a sensor's stream (use it with `with`)."""

    def _open(self, address, options, credentials) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(address, options)
        return grpc.secure_channel(address, credentials, options)

    def close(self) -> None:
        """Closes the connections (streams still open on them end)."""
        for channel in self._take_channels():
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SensorStream:
    """Send samples with `send` (from any thread), iterate the events (`Window`, `ConditionChange`, `Gap`), and
    `close` when the sensor stops: the iteration ends once every window has been answered."""

    def __init__(self, client: Client, sensor: Sensor, max_buffered_frames: int, on_resume=None, events: int = 1024):
        self.client = client
        self.state = StreamState(sensor, max_buffered_frames)
        self.on_resume = on_resume
        self._cond = threading.Condition()
        self._events: queue.Queue = queue.Queue(events)
        self._cancelled = threading.Event()
        self._active: int | None = None
        self._failure: BaseException | None = None
        self._driver = threading.Thread(target=self._drive, name=f"drsn-stream-{sensor.sensor_id}", daemon=True)
        self._started = False

    @property
    def stats(self) -> Stats:
        return self.state.stats

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._driver.start()

    def send(self, samples, timeout: float | None = None) -> None:
        """Queues samples (a numpy array or f32le bytes) after the ones sent before; blocks while the buffer of
        unanswered samples is full (`BufferFull` after `timeout` seconds)."""
        frames = self.state.frames_of(samples)
        self.start()
        with self._cond:
            while len(frames):
                if self._failure is not None:
                    raise self._failure
                if self._cancelled.is_set():
                    raise StreamError(grpc.StatusCode.CANCELLED, "the stream was cancelled")
                room = self.state.room()
                if room <= 0:
                    if not self._cond.wait(timeout):
                        raise BufferFull(f"{self.state.held_frames} frames are waiting for the server's answer")
                    continue
                self.state.append(frames[:room])
                frames = frames[room:]
                self._cond.notify_all()

    def close(self) -> None:
        """No more samples: the stream ends once the server has answered for every whole window."""
        with self._cond:
            self.state.send_closed = True
            self._cond.notify_all()

    def cancel(self) -> None:
        """Stops now, without waiting for answers."""
        self._cancelled.set()
        with self._cond:
            self._active = None
            self._cond.notify_all()

    def __iter__(self) -> Iterator[Event]:
        self.start()
        while True:
            item = self._events.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    # --- the driver thread ----------------------------------------------------------------------------------

    def _put(self, item) -> bool:
        while not self._cancelled.is_set():
            try:
                self._events.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            self._failure = error
            self._cond.notify_all()
        self._put(error)

    def _drive(self) -> None:
        backoff = Backoff(*self.client.backoff)
        call_id = 0
        wait_for_samples = False
        try:
            while not self._cancelled.is_set():
                with self._cond:
                    while wait_for_samples and not (
                        self._cancelled.is_set()
                        or self.state.send_closed
                        or self.state.has_unsent(self.state.resume_at)
                    ):
                        self._cond.wait()
                    if self.state.finished() and call_id > 0:
                        break
                    call_id += 1
                    self._active = call_id
                    cursor = self.state.call_started()
                if self._cancelled.is_set():
                    return
                channel, address = self.client.channel()
                if call_id > 1 and self.on_resume is not None:
                    self.on_resume(self.stats, address)
                code, details, trailers = self._call(channel, call_id, cursor)
                with self._cond:
                    self._active = None
                    self._cond.notify_all()
                    end = self.state.on_end(code, details, trailers)
                if code in RETIRE:
                    self.client.retire(address, channel)
                if end.done:
                    break
                if end.error is not None:
                    self._fail(end.error)
                    return
                delay, wait_for_samples = self.state.plan_retry(code, end, address, backoff)
                if self._cancelled.wait(delay):
                    return
            self._put(_DONE)
        except BaseException as error:  # noqa: BLE001 - the driver must never die silently: the iterator raises it
            self._fail(error)

    def _call(self, channel: grpc.Channel, call_id: int, cursor: int):
        stub = rpc.DiagnosisStub(channel)
        call = stub.StreamDiagnose(self._requests(call_id, cursor), metadata=self.client.config.metadata())
        try:
            for response in call:
                with self._cond:
                    events = self.state.on_response(response)
                    self._cond.notify_all()  # answered samples were released: room for `send`
                for event in events:
                    if not self._put(event):
                        call.cancel()
                        break
            return call.code(), call.details() or "", call.trailing_metadata()
        except grpc.RpcError as err:
            return err.code(), err.details() or "", err.trailing_metadata()

    def _requests(self, call_id: int, cursor: int):
        # Never yield holding the lock: gRPC may never ask for the next message (a call that failed to connect).
        with self._cond:
            opening = self.state.open_message()
        yield opening
        while True:
            with self._cond:
                while self._active == call_id and not (
                    self.state.has_unsent(cursor) or self.state.send_closed or self._cancelled.is_set()
                ):
                    self._cond.wait()
                if self._active != call_id or self._cancelled.is_set():
                    return
                chunks = self.state.chunks_from(cursor)
                if not chunks:
                    return  # closed for sending, all sent: half-close
            for first, frames in chunks:
                yield self.state.chunk_message(first, frames)
                cursor = first + len(frames)
                with self._cond:
                    self.state.sent(cursor)


__all__ = ["Adc", "BufferFull", "Client", "SensorStream", "StreamError", "Tls"]

Client._stream = SensorStream
