"""A gateway for several sensors of several machines: one stream per sensor, all over one connection per replica,
each fed by its own acquisition thread; every window and condition change printed with its machine and sensor.

    python examples/python/multi_sensor_gateway.py pump-7:drive-end=de.csv pump-7:fan-end=fe.csv fan-2:bearing=b.csv \
        --rate 12000 --addr replica-a:50051 --addr replica-b:50051

Each recording is a CSV of one value per line in the model's input unit, played at its real rate (times --speed).
"""

import argparse
import threading
import time

import numpy as np
from drsn_client import Client, ConditionChange, Window

BLOCK_S = 0.1


def run_sensor(client: Client, machine: str, sensor: str, samples: np.ndarray, rate: float, speed: float, out) -> None:
    with client.stream(machine, sensor, rate) as stream:

        def acquire():
            block = max(1, int(rate * BLOCK_S))
            start = time.monotonic()
            for at in range(0, len(samples), block):
                time.sleep(max(0.0, start + at / rate / speed - time.monotonic()))
                stream.send(samples[at : at + block])
            stream.close()

        threading.Thread(target=acquire, daemon=True).start()
        for event in stream:
            if isinstance(event, Window):
                out(f"{machine}/{sensor} window {event.index}: {event.label or '-'}")
            elif isinstance(event, ConditionChange):
                out(f"{machine}/{sensor} condition: {event.condition.summary}")
        out(f"{machine}/{sensor} done: {stream.stats.resumes} resume(s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sensors", nargs="+", help="MACHINE:SENSOR=recording.csv")
    p.add_argument("--addr", action="append", required=True, help="a replica (repeat for several)")
    p.add_argument("--rate", type=float, required=True, help="samples per second of every recording")
    p.add_argument("--speed", type=float, default=1.0)
    args = p.parse_args()
    lock = threading.Lock()

    def out(line: str) -> None:
        with lock:
            print(line, flush=True)

    with Client(args.addr) as client:
        threads = []
        for spec in args.sensors:
            ids, _, path = spec.partition("=")
            machine, _, sensor = ids.partition(":")
            samples = np.loadtxt(path, dtype=np.float32, ndmin=1)
            t = threading.Thread(target=run_sensor, args=(client, machine, sensor, samples, args.rate, args.speed, out))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()


if __name__ == "__main__":
    main()
