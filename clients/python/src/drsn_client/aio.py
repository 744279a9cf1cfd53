"""The asyncio client: the same streams as `drsn_client.client`, on grpc.aio and the running event loop. Python's
asyncio gRPC may read a drain's UNAVAILABLE as INTERNAL: both resume."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Self

import grpc
import grpc.aio

from drsn_client._channel import Replicas, Tls
from drsn_client._core import RETIRE, Adc, Backoff, BufferFull, Event, Sensor, Stats, StreamError, StreamState
from drsn_client._proto import diagnosis_pb2_grpc as rpc

_DONE = object()


class Client(Replicas):
    """Replicas to stream to: a list of `host:port` (tried in turn) or a DNS name standing for several.
    `stream(...)` opens a sensor's stream (use it with `async with`). Make it inside the running event loop."""

    def _open(self, address, options, credentials) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(address, options)
        return grpc.aio.secure_channel(address, credentials, options)

    async def close(self) -> None:
        """Closes the connections (streams still open on them end)."""
        for channel in self._take_channels():
            await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class SensorStream:
    """`await send(samples)`, `async for event in stream`, `close()` when the sensor stops."""

    def __init__(self, client: Client, sensor: Sensor, max_buffered_frames: int, on_resume=None, events: int = 1024):
        self.client = client
        self.state = StreamState(sensor, max_buffered_frames)
        self.on_resume = on_resume
        self._cond = asyncio.Condition()
        self._events: asyncio.Queue = asyncio.Queue(events)
        self._active: int | None = None
        self._failure: BaseException | None = None
        self._task: asyncio.Task | None = None
        self._cancelled = False

    @property
    def stats(self) -> Stats:
        return self.state.stats

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.cancel()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drive())

    async def send(self, samples, timeout: float | None = None) -> None:
        """Queues samples after the ones sent before; waits while the buffer of unanswered samples is full."""
        frames = self.state.frames_of(samples)
        self.start()
        async with self._cond:
            while len(frames):
                if self._failure is not None:
                    raise self._failure
                if self._cancelled:
                    raise StreamError(grpc.StatusCode.CANCELLED, "the stream was cancelled")
                room = self.state.room()
                if room <= 0:
                    try:
                        await asyncio.wait_for(self._cond.wait(), timeout)
                    except TimeoutError:
                        raise BufferFull(f"{self.state.held_frames} frames are waiting for the server's answer")
                    continue
                self.state.append(frames[:room])
                frames = frames[room:]
                self._cond.notify_all()

    async def close(self) -> None:
        async with self._cond:
            self.state.send_closed = True
            self._cond.notify_all()

    async def cancel(self) -> None:
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()
            # The driver catches its own errors (the iterator raises them): only the cancellation comes back.
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        self.start()
        while True:
            item = await self._events.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def _drive(self) -> None:
        backoff = Backoff(*self.client.backoff)
        call_id = 0
        wait_for_samples = False
        try:
            while True:
                async with self._cond:
                    idle = wait_for_samples
                    await self._cond.wait_for(
                        lambda idle=idle: (
                            not idle or self.state.send_closed or self.state.has_unsent(self.state.resume_at)
                        )
                    )
                    if self.state.finished() and call_id > 0:
                        break
                    call_id += 1
                    self._active = call_id
                    cursor = self.state.call_started()
                channel, address = self.client.channel()
                if call_id > 1 and self.on_resume is not None:
                    self.on_resume(self.stats, address)
                try:
                    code, details, trailers = await self._call(channel, call_id, cursor)
                finally:
                    async with self._cond:
                        self._active = None
                        self._cond.notify_all()
                async with self._cond:
                    end = self.state.on_end(code, details, trailers)
                if code in RETIRE:
                    self.client.retire(address, channel)
                if end.done:
                    break
                if end.error is not None:
                    await self._fail(end.error)
                    return
                delay, wait_for_samples = self.state.plan_retry(code, end, address, backoff)
                await asyncio.sleep(delay)
            await self._events.put(_DONE)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the driver must never die silently: the iterator raises it
            await self._fail(error)

    async def _fail(self, error: BaseException) -> None:
        async with self._cond:
            self._failure = error
            self._cond.notify_all()
        await self._events.put(error)

    async def _call(self, channel: grpc.aio.Channel, call_id: int, cursor: int):
        stub = rpc.DiagnosisStub(channel)
        call = stub.StreamDiagnose(self._requests(call_id, cursor), metadata=self.client.config.metadata())
        try:
            async for response in call:
                async with self._cond:
                    events = self.state.on_response(response)
                    self._cond.notify_all()
                for event in events:
                    await self._events.put(event)
            return await call.code(), await call.details() or "", await call.trailing_metadata()
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or "", err.trailing_metadata()

    async def _requests(self, call_id: int, cursor: int):
        yield self.state.open_message()
        while True:
            async with self._cond:
                await self._cond.wait_for(
                    lambda at=cursor: self._active != call_id or self.state.has_unsent(at) or self.state.send_closed
                )
                if self._active != call_id:
                    return
                chunks = self.state.chunks_from(cursor)
                if not chunks:
                    return
            for first, frames in chunks:
                yield self.state.chunk_message(first, frames)
                cursor = first + len(frames)
                self.state.sent(cursor)


__all__ = ["Adc", "BufferFull", "Client", "SensorStream", "StreamError", "Tls"]

Client._stream = SensorStream
