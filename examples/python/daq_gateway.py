"""A gateway that reads a recording at its real rate, block by block as a DAQ delivers them, and streams it to
drsn-serve through drsn_client: every window's class printed once, in order, whichever replica answers it.

    python examples/python/daq_gateway.py pump.wav --addr replica-a:50051 --addr replica-b:50051

A 16-bit WAV goes as its converter codes (`--scale`: input units per full scale, e.g. g); a CSV is one value per
line in the model's input unit, at `--rate`. `--speed` plays it faster than real time (the tests use it).
"""

import argparse
import threading
import time
import wave
from pathlib import Path

import numpy as np
from drsn_client import Adc, Client, ConditionChange, Window

BLOCK_S = 0.1  # a DAQ block


def read(path: str, rate: float | None, scale: float) -> tuple[np.ndarray, float, Adc | None]:
    if path.endswith(".wav"):
        with wave.open(path) as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise SystemExit("this example reads mono 16-bit WAV")
            codes = np.frombuffer(w.readframes(w.getnframes()), "<i2")
            return codes, float(w.getframerate()), Adc(scale=scale / 32768)
    if rate is None:
        raise SystemExit("a CSV needs --rate")
    return np.loadtxt(path, dtype=np.float32, ndmin=1), rate, None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recording")
    p.add_argument("--addr", action="append", required=True, help="a replica (repeat for several)")
    p.add_argument("--machine-id", default="machine-1")
    p.add_argument("--sensor-id", default="drive-end")
    p.add_argument("--rate", type=float, help="samples per second of a CSV")
    p.add_argument("--scale", type=float, default=1.0, help="a WAV's full scale in input units")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--token-file")
    args = p.parse_args()
    samples, rate, adc = read(args.recording, args.rate, args.scale)
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    client = Client(args.addr, token=token)
    with client.stream(args.machine_id, args.sensor_id, rate, adc=adc) as stream:

        def acquire():
            block = max(1, int(rate * BLOCK_S))
            start = time.monotonic()
            for at in range(0, len(samples), block):
                # Blocks come when the DAQ has them: at the recording's rate (times --speed).
                time.sleep(max(0.0, start + at / rate / args.speed - time.monotonic()))
                stream.send(samples[at : at + block])
            stream.close()

        threading.Thread(target=acquire, daemon=True).start()
        for event in stream:
            if isinstance(event, Window):
                r = event.result
                print(f"window {event.index} samples {r.first_sample_index}-{r.last_sample_index}: {r.label or '-'}")
            elif isinstance(event, ConditionChange):
                print(f"condition: {event.condition.summary}")
        s = stream.stats
        print(f"done: resumed {s.resumes} time(s), {s.samples_resent} samples sent again")


if __name__ == "__main__":
    main()
