"""engine/framing.py: round-trips, limits, recovery from bad frames."""

from __future__ import annotations

import asyncio
import io
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import framing as f

# -- helpers -----------------------------------------------------------------------------


def raw_frame(header_bytes: bytes, blob: bytes = b"") -> bytes:
    """A frame built by hand, so tests can send what `encode_frame` would refuse."""
    return struct.pack(">I", len(header_bytes)) + header_bytes + blob


def stream_reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


#: A good frame after a bad one: reading it proves the stream is still in sync.
NEXT_HEADER = {"type": "next", "n": 7}
NEXT = f.encode_frame(NEXT_HEADER)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
headers = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in ("type", "blob_size")), json_values, max_size=5
).flatmap(lambda d: st.text(min_size=1, max_size=12).map(lambda t: {**d, "type": t}))
blobs = st.binary(max_size=2048)
frame_lists = st.lists(st.tuples(headers, blobs), min_size=1, max_size=4)
hypothesis_settings = settings(max_examples=60, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])


def expected(header: dict, blob: bytes) -> f.Frame:
    return f.Frame({**header, **({"blob_size": len(blob)} if blob else {})}, blob)


# -- framing round-trips -------------------------------------------------------------------


@hypothesis_settings
@given(frame_lists)
def test_frames_round_trip_through_the_sync_reader(frames):
    data = b"".join(f.encode_frame(h, b) for h, b in frames)
    stream = io.BytesIO(data)
    assert [f.read_frame(stream) for _ in frames] == [expected(h, b) for h, b in frames]
    assert f.read_frame(stream) is None


@hypothesis_settings
@given(frame_lists)
def test_frames_round_trip_through_the_async_reader(frames):
    async def read_all():
        reader = stream_reader(b"".join(f.encode_frame(h, b) for h, b in frames))
        got = [await f.read_frame_async(reader) for _ in frames]
        return got, await f.read_frame_async(reader)

    got, after = asyncio.run(read_all())
    assert got == [expected(h, b) for h, b in frames]
    assert after is None


def test_clean_end_of_stream_reads_as_none():
    assert f.read_frame(io.BytesIO(b"")) is None


@pytest.mark.parametrize("cut", [2, 4 + 3, len(f.encode_frame({"type": "x"}, b"blob")) - 1])
def test_stream_ending_mid_frame_is_unrecoverable(cut):
    data = f.encode_frame({"type": "x"}, b"blob")[:cut]
    with pytest.raises(f.ProtocolError) as error:
        f.read_frame(io.BytesIO(data))
    assert not error.value.recoverable


async def test_async_stream_ending_mid_frame_is_unrecoverable():
    with pytest.raises(f.ProtocolError) as error:
        await f.read_frame_async(stream_reader(f.encode_frame({"type": "x"}, b"blob")[:-2]))
    assert not error.value.recoverable


# -- bad frames: error, then the stream is still in sync ------------------------------------


@pytest.mark.parametrize("header_bytes", [
    b"\xff\xfe not utf-8",
    b"{not json",
    b"[1, 2, 3]",
    b'{"no_type": 1}',
    b'{"type": ""}',
    b'{"type": "x", "blob_size": -1}',
    b'{"type": "x", "blob_size": "12"}',
    b'{"type": "x", "loss": NaN}',
], ids=["not-utf8", "not-json", "not-object", "no-type", "empty-type", "negative-blob",
        "string-blob", "nan"])
def test_malformed_header_is_a_recoverable_error_and_the_next_frame_reads(header_bytes):
    stream = io.BytesIO(raw_frame(header_bytes) + NEXT)
    with pytest.raises(f.ProtocolError) as error:
        f.read_frame(stream)
    assert error.value.recoverable
    assert f.read_frame(stream) == f.Frame(NEXT_HEADER)


def test_empty_header_is_a_recoverable_error():
    stream = io.BytesIO(struct.pack(">I", 0) + NEXT)
    with pytest.raises(f.ProtocolError, match="empty"):
        f.read_frame(stream)
    assert f.read_frame(stream) == f.Frame(NEXT_HEADER)


def test_oversized_header_is_skipped_with_its_blob_and_names_the_job():
    header = json.dumps({"type": "submit", "job": "big", "pad": "x" * f.MAX_HEADER_SIZE,
                         "blob_size": 5}).encode()
    stream = io.BytesIO(raw_frame(header, b"12345") + NEXT)
    with pytest.raises(f.ProtocolError, match="exceeds") as error:
        f.read_frame(stream)
    assert error.value.recoverable and error.value.job == "big"
    assert f.read_frame(stream) == f.Frame(NEXT_HEADER)


async def test_async_reader_skips_an_oversized_header_too():
    header = json.dumps({"type": "x", "pad": "x" * f.MAX_HEADER_SIZE}).encode()
    reader = stream_reader(raw_frame(header) + NEXT)
    with pytest.raises(f.ProtocolError) as error:
        await f.read_frame_async(reader)
    assert error.value.recoverable
    assert await f.read_frame_async(reader) == f.Frame(NEXT_HEADER)


def test_oversized_blob_is_skipped_and_the_stream_stays_in_sync(monkeypatch):
    monkeypatch.setattr(f, "MAX_BLOB_SIZE", 1000)
    stream = io.BytesIO(raw_frame(b'{"type": "x", "job": "j", "blob_size": 3000}', b"b" * 3000)
                        + NEXT)
    with pytest.raises(f.ProtocolError, match="skipped") as error:
        f.read_frame(stream)
    assert error.value.recoverable and error.value.job == "j"
    assert f.read_frame(stream) == f.Frame(NEXT_HEADER)


async def test_async_reader_skips_an_oversized_blob(monkeypatch):
    monkeypatch.setattr(f, "MAX_BLOB_SIZE", 1000)
    reader = stream_reader(raw_frame(b'{"type": "x", "blob_size": 200000}', b"b" * 200000) + NEXT)
    with pytest.raises(f.ProtocolError) as error:
        await f.read_frame_async(reader)
    assert error.value.recoverable
    assert await f.read_frame_async(reader) == f.Frame(NEXT_HEADER)


def test_garbage_length_prefix_cannot_be_resynced():
    """Unframed bytes read as a length in the gigabytes: waiting for them would hang."""
    with pytest.raises(f.ProtocolError, match="cannot be resynced") as error:
        f.read_frame(io.BytesIO(b"GARBAGE GARBAGE"))
    assert not error.value.recoverable


def test_blob_too_large_to_skip_is_unrecoverable():
    header = json.dumps({"type": "x", "blob_size": f.MAX_SKIPPABLE_BLOB + 1}).encode()
    with pytest.raises(f.ProtocolError) as error:
        f.read_frame(io.BytesIO(raw_frame(header)))
    assert not error.value.recoverable


# -- writing -------------------------------------------------------------------------------


def test_encode_refuses_an_oversized_header():
    with pytest.raises(f.ProtocolError, match="exceeds"):
        f.encode_frame({"type": "x", "pad": "x" * f.MAX_HEADER_SIZE})


def test_encode_refuses_an_oversized_blob(monkeypatch):
    monkeypatch.setattr(f, "MAX_BLOB_SIZE", 10)
    with pytest.raises(f.ProtocolError, match="blob"):
        f.encode_frame({"type": "x"}, b"x" * 11)


def test_encode_refuses_nan_which_json_cannot_carry():
    with pytest.raises(f.ProtocolError):
        f.encode_frame({"type": "x", "value": float("nan")})


def test_encode_sets_blob_size_from_the_blob_not_the_header():
    frame = f.read_frame(io.BytesIO(f.encode_frame({"type": "x", "blob_size": 99}, b"abc")))
    assert frame.header["blob_size"] == 3 and frame.blob == b"abc"
