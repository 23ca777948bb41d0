"""engine/protocol.py: framing round-trips, limits, recovery from bad frames, messages."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import protocol as p

# -- helpers -----------------------------------------------------------------------------


def raw_frame(header_bytes: bytes, blob: bytes = b"") -> bytes:
    """A frame built by hand, so tests can send what `encode_frame` would refuse."""
    return struct.pack(">I", len(header_bytes)) + header_bytes + blob


def stream_reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


PING = p.encode_message(p.Ping(7))

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


def expected(header: dict, blob: bytes) -> p.Frame:
    return p.Frame({**header, **({"blob_size": len(blob)} if blob else {})}, blob)


# -- framing round-trips -------------------------------------------------------------------


@hypothesis_settings
@given(frame_lists)
def test_frames_round_trip_through_the_sync_reader(frames):
    data = b"".join(p.encode_frame(h, b) for h, b in frames)
    stream = io.BytesIO(data)
    assert [p.read_frame(stream) for _ in frames] == [expected(h, b) for h, b in frames]
    assert p.read_frame(stream) is None


@hypothesis_settings
@given(frame_lists)
def test_frames_round_trip_through_the_async_reader(frames):
    async def read_all():
        reader = stream_reader(b"".join(p.encode_frame(h, b) for h, b in frames))
        got = [await p.read_frame_async(reader) for _ in frames]
        return got, await p.read_frame_async(reader)

    got, after = asyncio.run(read_all())
    assert got == [expected(h, b) for h, b in frames]
    assert after is None


async def test_async_writer_output_is_read_back_by_the_sync_reader():
    """The client writes with asyncio, the worker reads blocking: both sides must agree."""
    chunks: list[bytes] = []

    class Transport(asyncio.Transport):
        def write(self, data):
            chunks.append(bytes(data))

        def is_closing(self):
            return False

        def close(self):
            pass

    loop = asyncio.get_running_loop()
    protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())
    writer = asyncio.StreamWriter(Transport(), protocol, None, loop)
    await p.write_message_async(writer, p.Progress("j", 3, 10, 0.5, 1.0, b"\xff\xd8jpeg"))
    assert p.read_message(io.BytesIO(b"".join(chunks))) == p.Progress("j", 3, 10, 0.5, 1.0,
                                                                       b"\xff\xd8jpeg")


def test_clean_end_of_stream_reads_as_none():
    assert p.read_frame(io.BytesIO(b"")) is None


@pytest.mark.parametrize("cut", [2, 4 + 3, len(p.encode_frame({"type": "x"}, b"blob")) - 1])
def test_stream_ending_mid_frame_is_unrecoverable(cut):
    data = p.encode_frame({"type": "x"}, b"blob")[:cut]
    with pytest.raises(p.ProtocolError) as error:
        p.read_frame(io.BytesIO(data))
    assert not error.value.recoverable


async def test_async_stream_ending_mid_frame_is_unrecoverable():
    with pytest.raises(p.ProtocolError) as error:
        await p.read_frame_async(stream_reader(p.encode_frame({"type": "x"}, b"blob")[:-2]))
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
    stream = io.BytesIO(raw_frame(header_bytes) + PING)
    with pytest.raises(p.ProtocolError) as error:
        p.read_frame(stream)
    assert error.value.recoverable
    assert p.decode_message(p.read_frame(stream)) == p.Ping(7)


def test_empty_header_is_a_recoverable_error():
    stream = io.BytesIO(struct.pack(">I", 0) + PING)
    with pytest.raises(p.ProtocolError, match="empty"):
        p.read_frame(stream)
    assert p.read_message(stream) == p.Ping(7)


def test_oversized_header_is_skipped_with_its_blob_and_names_the_job():
    header = json.dumps({"type": "submit", "job": "big", "pad": "x" * p.MAX_HEADER_SIZE,
                         "blob_size": 5}).encode()
    stream = io.BytesIO(raw_frame(header, b"12345") + PING)
    with pytest.raises(p.ProtocolError, match="exceeds") as error:
        p.read_frame(stream)
    assert error.value.recoverable and error.value.job == "big"
    assert p.read_message(stream) == p.Ping(7)


async def test_async_reader_skips_an_oversized_header_too():
    header = json.dumps({"type": "x", "pad": "x" * p.MAX_HEADER_SIZE}).encode()
    reader = stream_reader(raw_frame(header) + PING)
    with pytest.raises(p.ProtocolError) as error:
        await p.read_frame_async(reader)
    assert error.value.recoverable
    assert await p.read_message_async(reader) == p.Ping(7)


def test_oversized_blob_is_skipped_and_the_stream_stays_in_sync(monkeypatch):
    monkeypatch.setattr(p, "MAX_BLOB_SIZE", 1000)
    stream = io.BytesIO(raw_frame(b'{"type": "x", "job": "j", "blob_size": 3000}', b"b" * 3000)
                        + PING)
    with pytest.raises(p.ProtocolError, match="skipped") as error:
        p.read_frame(stream)
    assert error.value.recoverable and error.value.job == "j"
    assert p.read_message(stream) == p.Ping(7)


async def test_async_reader_skips_an_oversized_blob(monkeypatch):
    monkeypatch.setattr(p, "MAX_BLOB_SIZE", 1000)
    reader = stream_reader(raw_frame(b'{"type": "x", "blob_size": 200000}', b"b" * 200000) + PING)
    with pytest.raises(p.ProtocolError) as error:
        await p.read_frame_async(reader)
    assert error.value.recoverable
    assert await p.read_message_async(reader) == p.Ping(7)


def test_garbage_length_prefix_cannot_be_resynced():
    """Unframed bytes read as a length in the gigabytes: waiting for them would hang."""
    with pytest.raises(p.ProtocolError, match="cannot be resynced") as error:
        p.read_frame(io.BytesIO(b"GARBAGE GARBAGE"))
    assert not error.value.recoverable


def test_blob_too_large_to_skip_is_unrecoverable():
    header = json.dumps({"type": "x", "blob_size": p.MAX_SKIPPABLE_BLOB + 1}).encode()
    with pytest.raises(p.ProtocolError) as error:
        p.read_frame(io.BytesIO(raw_frame(header)))
    assert not error.value.recoverable


# -- writing -------------------------------------------------------------------------------


def test_encode_refuses_an_oversized_header():
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.encode_frame({"type": "x", "pad": "x" * p.MAX_HEADER_SIZE})


def test_encode_refuses_an_oversized_blob(monkeypatch):
    monkeypatch.setattr(p, "MAX_BLOB_SIZE", 10)
    with pytest.raises(p.ProtocolError, match="blob"):
        p.encode_frame({"type": "x"}, b"x" * 11)


def test_encode_refuses_nan_which_json_cannot_carry():
    with pytest.raises(p.ProtocolError):
        p.encode_frame({"type": "x", "value": float("nan")})


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_a_diverged_loss_still_travels_in_progress_as_nan(loss):
    """A NaN loss must not cost the user the preview: it travels as null."""
    message = p.read_message(io.BytesIO(p.encode_message(p.Progress("j", 1, 2, loss, 0.0, b"x"))))
    assert message.preview == b"x" and message.loss != message.loss


def test_encode_sets_blob_size_from_the_blob_not_the_header():
    frame = p.read_frame(io.BytesIO(p.encode_frame({"type": "x", "blob_size": 99}, b"abc")))
    assert frame.header["blob_size"] == 3 and frame.blob == b"abc"


# -- messages ------------------------------------------------------------------------------

ALL_MESSAGES = [
    p.Submit("j1", (p.TextPromptSpec("a forest", 1.0), p.TextPromptSpec("fog", -0.5)),
             width=64, height=32, iterations=5, seed=42, cutn=4, progress_every=2,
             preview_size=64, replace="the sky"),
    p.Submit("j2", (p.TextPromptSpec("x"),), init_image=b"\x89PNG init",
             image_prompts=(p.ImagePromptSpec(b"img-one", 2.0), p.ImagePromptSpec(b"", 0.5)),
             mask_image=b"mask!"),
    p.Cancel("j1"), p.Ping(3), p.Shutdown(),
    p.Ready(p.PROTOCOL_VERSION, "cpu", "tiny_vqgan", "tiny_clip", 1234),
    p.Started("j1"), p.Progress("j1", 2, 5, 0.75, 1.5, b"\xff\xd8\xff"),
    p.Done("j1", b"\x89PNG...", 42, 3.25, 5, 64, 32), p.Failed("j1", "too big", p.FAIL_OUT_OF_MEMORY),
    p.Cancelled("j1"), p.Cancelled("zz", unknown=True), p.Pong(3),
    p.Error("bad frame"), p.Error("dup", job="j1", fatal=True),
]


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: m.TYPE)
def test_every_message_round_trips(message):
    assert p.read_message(io.BytesIO(p.encode_message(message))) == message


def test_submit_images_travel_as_one_blob_listed_in_parts():
    header, blob = ALL_MESSAGES[1].to_frame()
    assert [part["kind"] for part in header["parts"]] == [
        "init_image", "image_prompt", "image_prompt", "mask_image"]
    assert blob == b"\x89PNG init" + b"img-one" + b"mask!"


def test_submit_parts_that_do_not_add_up_to_the_blob_are_rejected():
    header, blob = ALL_MESSAGES[1].to_frame()
    with pytest.raises(p.ProtocolError, match="add up") as error:
        p.decode_message(p.Frame({**header, "blob_size": len(blob) + 1}, blob + b"!"))
    assert error.value.job == "j2"


@pytest.mark.parametrize("field,value", [
    ("width", "big"), ("width", 0), ("iterations", 1.5), ("seed", -1), ("cutn", True),
    ("prompts", "a forest"), ("prompts", [{"text": "x", "weight": "heavy"}]), ("job", ""),
])
def test_submit_with_a_bad_field_names_the_field(field, value):
    header, _ = ALL_MESSAGES[0].to_frame()
    with pytest.raises(p.ProtocolError, match=field if field != "prompts" else "prompts|weight"):
        p.decode_message(p.Frame({**header, field: value}))


def test_unknown_message_type_is_a_recoverable_error_naming_the_job():
    with pytest.raises(p.ProtocolError, match="unknown message type") as error:
        p.decode_message(p.Frame({"type": "teleport", "job": "j9"}))
    assert error.value.recoverable and error.value.job == "j9"


def test_a_blob_on_a_message_that_takes_none_is_rejected():
    with pytest.raises(p.ProtocolError, match="no blob"):
        p.decode_message(p.Frame({"type": "ping", "blob_size": 1}, b"x"))


def test_importing_the_protocol_does_not_import_torch():
    code = "import sys, engine.protocol; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
