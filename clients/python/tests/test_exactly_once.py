"""Exactly once, as the gateway sees it, with real servers: a replica drained (SIGTERM) or killed (SIGKILL)
mid-stream, connections rotated by --max-connection-age, the server restarted on the same address. For each, with
the blocking and the asyncio client, every window arrives once, in order, with the result of an uninterrupted run."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from drsn_client import Client, Window
from drsn_client import aio as drsn_aio

RATE = 12_000.0
CHUNK = 4096
# A chunk every 20 ms: about 1.5 s of streaming, so that each interruption lands mid-stream.
PACE_S = 0.02
INTERRUPT_AT = 15


def stream_sync(addresses, samples, interrupt=None):
    """Streams `samples` paced, calls `interrupt` (on its own thread) once INTERRUPT_AT windows have arrived."""
    client = Client(addresses, backoff_base=0.05, backoff_cap=0.5)
    windows: list[Window] = []
    with client.stream("pump-7", "drive-end", RATE) as stream:

        def feed():
            for at in range(0, len(samples), CHUNK):
                stream.send(samples[at : at + CHUNK])
                time.sleep(PACE_S)
            stream.close()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        for event in stream:
            if isinstance(event, Window):
                windows.append(event)
                if len(windows) == INTERRUPT_AT and interrupt is not None:
                    threading.Thread(target=interrupt, daemon=True).start()
        feeder.join(30)
        return windows, stream.stats


def stream_async(addresses, samples, interrupt=None):
    async def run():
        client = drsn_aio.Client(addresses, backoff_base=0.05, backoff_cap=0.5)
        windows: list[Window] = []
        async with client.stream("pump-7", "drive-end", RATE) as stream:

            async def feed():
                for at in range(0, len(samples), CHUNK):
                    await stream.send(samples[at : at + CHUNK])
                    await asyncio.sleep(PACE_S)
                await stream.close()

            feeder = asyncio.create_task(feed())
            async for event in stream:
                if isinstance(event, Window):
                    windows.append(event)
                    if len(windows) == INTERRUPT_AT and interrupt is not None:
                        threading.Thread(target=interrupt, daemon=True).start()
            await feeder
            return windows, stream.stats

    return asyncio.run(run())


CLIENTS = {"sync": stream_sync, "asyncio": stream_async}


@pytest.fixture(scope="module")
def reference(recording, lone_server):
    """An uninterrupted run."""
    windows, stats = stream_sync([lone_server.addr], recording)
    assert stats.resumes == 0
    assert len(windows) == (len(recording) - 8192) // 4096 + 1
    return windows


def assert_same(windows: list[Window], reference: list[Window]):
    got = [(w.index, w.first_sample_index, w.label, w.status) for w in windows]
    want = [(w.index, w.first_sample_index, w.label, w.status) for w in reference]
    assert got == want
    # Batches may differ between runs: the same window's confidence to float precision, not bit for bit.
    np.testing.assert_allclose(
        [w.result.confidence for w in windows], [w.result.confidence for w in reference], rtol=0, atol=1e-4
    )
    assert len({w.result.model_version for w in windows}) == 1


@pytest.mark.parametrize("client", CLIENTS)
def test_a_replica_drained_mid_stream_hands_over_to_the_other(client, servers, recording, reference):
    a, b = servers(), servers()
    windows, stats = CLIENTS[client]([a.addr, b.addr], recording, interrupt=a.terminate)
    assert_same(windows, reference)
    assert stats.resumes >= 1 and a.proc.returncode == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_a_replica_killed_mid_stream_its_unanswered_windows_are_recomputed_elsewhere(
    client, servers, recording, reference
):
    a, b = servers(), servers()
    windows, stats = CLIENTS[client]([a.addr, b.addr], recording, interrupt=a.kill)
    assert_same(windows, reference)
    assert stats.resumes >= 1 and stats.samples_resent > 0


@pytest.mark.parametrize("client", CLIENTS)
def test_connections_rotated_by_age_lose_and_repeat_nothing(client, servers, recording, reference):
    a = servers(args=["--max-connection-age", "400ms"])
    windows, stats = CLIENTS[client]([a.addr], recording)
    assert_same(windows, reference)
    assert stats.resumes >= 2


@pytest.mark.parametrize("client", CLIENTS)
def test_the_server_restarted_on_the_same_address_is_found_again(client, servers, recording, reference):
    a = servers()
    port = a.port

    def restart():
        a.terminate()
        servers(port=port)

    windows, stats = CLIENTS[client]([a.addr], recording, interrupt=restart)
    assert_same(windows, reference)
    assert stats.resumes >= 1
