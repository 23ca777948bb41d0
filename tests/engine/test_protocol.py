"""engine/protocol.py: the messages, their fields and their round-trips over frames."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import pytest

from engine import protocol as p

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


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_a_diverged_loss_still_travels_in_progress_as_nan(loss):
    """A NaN loss must not cost the user the preview: it travels as null."""
    message = p.read_message(io.BytesIO(p.encode_message(p.Progress("j", 1, 2, loss, 0.0, b"x"))))
    assert message.preview == b"x" and message.loss != message.loss


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


def test_the_framing_names_callers_use_are_the_protocols_too():
    """The bot imports only `engine.protocol`; framing moved out of it without them noticing."""
    from engine import framing

    for name in ("ProtocolError", "Frame", "read_frame", "read_frame_async", "encode_frame",
                 "write_frame", "write_frame_async", "MAX_HEADER_SIZE", "MAX_BLOB_SIZE",
                 "MAX_SKIPPABLE_BLOB"):
        assert getattr(p, name) is getattr(framing, name)


def test_a_bad_field_inside_a_list_names_its_place():
    header, _ = ALL_MESSAGES[0].to_frame()
    header["prompts"][1]["weight"] = "heavy"
    with pytest.raises(p.ProtocolError, match=r"`prompts\[1\]\.weight` must be a finite number"):
        p.decode_message(p.Frame(header))
