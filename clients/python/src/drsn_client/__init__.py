"""drsn-serve's gateway client: stream a sensor's vibration, get a fault class for every window, in order, exactly
once, across drains, rolling updates, aged connections and replicas that go away.

    from drsn_client import Client

    client = Client(["replica-a:50051", "replica-b:50051"], token="...")
    with client.stream("pump-7", "drive-end", sample_rate_hz=12_000) as stream:
        ...  # stream.send(samples) from the acquisition thread, stream.close() when it stops
        for event in stream:
            print(event)

`drsn_client.aio` has the same for asyncio.
"""

from drsn_client._channel import Tls
from drsn_client._core import (
    Adc,
    Backoff,
    BufferFull,
    ConditionChange,
    Event,
    Gap,
    Stats,
    StreamError,
    Window,
)
from drsn_client._proto import diagnosis_pb2 as pb
from drsn_client.client import Client, SensorStream

__all__ = [
    "Adc",
    "Backoff",
    "BufferFull",
    "Client",
    "ConditionChange",
    "Event",
    "Gap",
    "SensorStream",
    "Stats",
    "StreamError",
    "Tls",
    "Window",
    "pb",
]
__version__ = "0.1.0"
