"""The stream's bookkeeping without a server: what is held and released, where a new call starts, repeats dropped,
how endings are judged, backoff, and the address rotation."""

from __future__ import annotations

import random

import grpc
import numpy as np
import pytest

from drsn_client import Adc, Backoff, StreamError, Window, pb
from drsn_client._core import CONDITION_TRAILER, RESUME_TRAILER, Sensor, StreamState, Targets

HOP = 4096


def state(**sensor) -> StreamState:
    s = StreamState(Sensor("m", "s", 12_000.0, **sensor), max_buffered_frames=100_000, chunk_frames=1000)
    s.on_response(
        pb.StreamDiagnoseResponse(opened=pb.StreamOpened(window=8192, hop=HOP, model_sample_rate_hz=12_000.0))
    )
    return s


def window(first: int) -> pb.StreamDiagnoseResponse:
    return pb.StreamDiagnoseResponse(
        window=pb.WindowResult(first_sample_index=first, last_sample_index=first + 8191, label="x")
    )


def test_answered_samples_are_released_and_a_new_call_starts_where_the_server_says():
    s = state()
    s.append(s.frames_of(np.zeros(20_000, np.float32)))
    s.call_started()
    s.sent(20_000)
    assert [w.index for w in s.on_response(window(0)) + s.on_response(window(HOP))] == [0, 1]
    # Samples before the last answered window are not needed again.
    assert s.held_from() == HOP and s.held_frames == 20_000 - HOP
    end = s.on_end(grpc.StatusCode.UNAVAILABLE, "draining", [(RESUME_TRAILER, str(2 * HOP))])
    assert end.retry and end.resume_at == 2 * HOP
    assert s.call_started() == 2 * HOP
    assert s.stats.resumes == 1 and s.stats.samples_resent == 20_000 - 2 * HOP
    first, frames = s.chunks_from(2 * HOP)[0]
    assert first == 2 * HOP and len(frames) == 1000


def test_a_broken_connection_resumes_after_the_last_window_delivered_and_repeats_are_dropped():
    s = state()
    s.append(s.frames_of(np.zeros(30_000, np.float32)))
    s.call_started()
    s.on_response(window(0))
    end = s.on_end(grpc.StatusCode.UNAVAILABLE, "Socket closed", ())
    assert end.resume_at == HOP
    s.call_started()
    # A replica that resumes earlier than needed repeats a window: delivered once.
    assert s.on_response(window(0)) == []
    [w] = s.on_response(window(HOP))
    assert isinstance(w, Window) and w.index == 1 and s.stats.windows_repeated == 1


def test_nothing_received_resumes_from_the_first_held_sample():
    s = state(first_sample_index=500)
    s.append(s.frames_of(np.zeros(10_000, np.float32)))
    s.call_started()
    end = s.on_end(grpc.StatusCode.UNAVAILABLE, "shutting down", [(RESUME_TRAILER, "start")])
    assert end.resume_at == 500


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED])
def test_an_ending_resending_cannot_fix_is_raised(code):
    s = state()
    end = s.on_end(code, "bad", ())
    assert isinstance(end.error, StreamError) and end.error.code == code


def test_the_condition_carry_is_kept_from_events_and_the_ending_trailer_and_sent_on_the_next_open():
    s = state()
    carry = pb.ConditionCarry(condition=pb.CONDITION_FAULT, windows=7)
    s.on_response(pb.StreamDiagnoseResponse(condition=pb.SensorCondition(carry=carry)))
    assert s.open_message().open.resume_condition.windows == 7
    later = pb.ConditionCarry(condition=pb.CONDITION_FAULT, windows=9)
    s.on_end(grpc.StatusCode.UNAVAILABLE, "", [(CONDITION_TRAILER, later.SerializeToString())])
    assert s.open_message().open.resume_condition.windows == 9


def test_the_model_named_goes_on_every_open_and_none_named_leaves_the_server_to_choose():
    pinned = state(model="pump-de", model_version="2").open_message().open
    assert (pinned.model, pinned.model_version) == ("pump-de", "2")
    default = state().open_message().open
    assert (default.model, default.model_version) == ("", "")


def test_int16_codes_go_as_i16le_with_their_scale_and_floats_as_f32le():
    s = state(adc=Adc(scale=0.001, offset=2.0, bits=12))
    chunk = s.chunk_message(0, s.frames_of(np.array([1, -2, 3], np.int16))).chunk
    assert chunk.i16le.scale == pytest.approx(0.001) and chunk.i16le.adc_bits == 12
    assert np.frombuffer(chunk.i16le.data, "<i2").tolist() == [1, -2, 3]
    with pytest.raises(ValueError, match="int16"):
        s.frames_of(np.zeros(3, np.float32))
    f = state()
    assert np.frombuffer(f.chunk_message(0, f.frames_of(b"\x00\x00\x80\x3f")).chunk.f32le, "<f4").tolist() == [1.0]
    with pytest.raises(ValueError, match="Adc"):
        f.frames_of(np.zeros(3, np.int16))


def test_the_buffer_is_bounded():
    s = StreamState(Sensor("m", "s", 12_000.0), max_buffered_frames=1000)
    s.append(s.frames_of(np.zeros(600, np.float32)))
    assert s.room() == 400


def test_backoff_grows_with_jitter_up_to_its_cap_and_resets():
    b = Backoff(base=0.1, cap=1.0, rng=random.Random(1))
    delays = [b.next() for _ in range(20)]
    assert all(0 <= d <= 1.0 for d in delays) and max(delays[:2]) <= 0.2 and max(delays[5:]) > 0.2
    b.reset()
    assert b.next() <= 0.1


def test_addresses_are_tried_in_turn_and_names_stand_for_every_address_they_resolve_to():
    t = Targets(["a:1", "b:2"], resolve=lambda a: [(a, None)])
    assert [t.next()[0] for _ in range(4)] == ["a:1", "b:2", "a:1", "b:2"]
    many = Targets("svc:50051", resolve=lambda a: [("10.0.0.1:50051", "svc"), ("10.0.0.2:50051", "svc")])
    assert [many.next() for _ in range(3)] == [
        ("10.0.0.1:50051", "svc"),
        ("10.0.0.2:50051", "svc"),
        ("10.0.0.1:50051", "svc"),
    ]
