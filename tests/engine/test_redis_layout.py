"""engine/redis_layout.py: key names, and entries that carry exactly one protocol frame."""

from __future__ import annotations

import json

import pytest

from engine import protocol as p
from engine.redis_layout import (
    EVENT_TYPES,
    JOB_TYPES,
    MAX_ENTRY_BYTES,
    Expectation,
    Heartbeat,
    LayoutError,
    RedisLayout,
    check_worker_name,
    decode_frame,
    entry_fields,
    heartbeat_fields,
    read_entry,
    read_expectation,
    read_heartbeat,
    stream_entries,
)

SUBMIT = p.Submit("k3q7", (p.TextPromptSpec("a red fox"),), 64, 64, iterations=5,
                  init_image=b"\x89PNG fake")


def as_redis(fields: dict[str, bytes]) -> dict[bytes, bytes]:
    """What redis-py hands back: bytes keys."""
    return {key.encode(): value for key, value in fields.items()}


def test_every_key_is_under_the_prefix() -> None:
    layout = RedisLayout("vqc-test:")
    keys = [layout.jobs, layout.workers, layout.inbox, layout.expect, layout.heartbeat("w1"),
            layout.control("w1"), layout.events("k3q7", "ab12")]
    assert all(key.startswith("vqc-test:") for key in keys)
    assert len(set(keys)) == len(keys)
    assert RedisLayout().jobs == "vqgan-clip:jobs"


@pytest.mark.parametrize("prefix", ["", "a*", "with space:", "x" * 65, "é:"])
def test_a_prefix_with_glob_or_odd_characters_is_refused(prefix: str) -> None:
    with pytest.raises(LayoutError, match="prefix"):
        RedisLayout(prefix)


@pytest.mark.parametrize("name", ["", "-w", "w 1", "w:1", "w*", "x" * 65])
def test_a_bad_worker_name_is_refused(name: str) -> None:
    with pytest.raises(LayoutError, match="worker name"):
        check_worker_name(name)


def test_an_entry_round_trips_its_message_and_text_fields() -> None:
    entry = read_entry(as_redis(entry_fields(SUBMIT, run="ab12", worker="w1", instance="i9")),
                       JOB_TYPES)
    assert (entry.message, entry.run, entry.worker, entry.instance) == (SUBMIT, "ab12", "w1", "i9")


def test_stream_entries_flattens_an_xread_reply() -> None:
    reply = [[b"k1", [(b"1-0", {b"frame": b"x"}), (b"2-0", None)]], [b"k2", [(b"3-0", {})]]]
    assert stream_entries(reply) == [("k1", "1-0", {b"frame": b"x"}), ("k2", "3-0", {})]
    assert stream_entries(None) == []


def frame_bytes(message: p.Message) -> bytes:
    return p.encode_message(message)


@pytest.mark.parametrize("fields, words", [
    ({}, "no `frame`"),
    ({"frame": b""}, "empty"),
    ({"frame": frame_bytes(SUBMIT)[:-3]}, "ended in the middle"),
    ({"frame": frame_bytes(SUBMIT) + b"x"}, "after its frame"),
    ({"frame": b"\x00\x00\x00\x05{bad}"}, "not valid UTF-8 JSON"),
    ({"frame": frame_bytes(p.Started("k3q7"))}, "does not belong"),
    ({"frame": p.encode_frame({"type": "submit", "job": "k3q7", "prompts": "nope"})}, "prompts"),
    ({"frame": frame_bytes(SUBMIT), "run": b"has space"}, "run"),
    ({"frame": frame_bytes(SUBMIT), "worker": b"w:1"}, "worker"),
    ({"frame": frame_bytes(SUBMIT), "instance": b"a b"}, "instance"),
])
def test_a_malformed_entry_is_a_protocol_error_naming_the_problem(
        fields: dict[str, bytes], words: str) -> None:
    with pytest.raises(p.ProtocolError, match=words):
        read_entry(as_redis(fields), JOB_TYPES)


def test_an_entry_error_names_the_job_when_it_can() -> None:
    bad = p.encode_frame({"type": "submit", "job": "k3q7", "width": -1, "prompts": []})
    with pytest.raises(p.ProtocolError) as caught:
        read_entry({b"frame": bad}, JOB_TYPES)
    assert caught.value.job == "k3q7"


def test_an_oversized_blob_is_refused_with_the_pipe_limits() -> None:
    raw = json.dumps({"type": "done", "job": "k3q7", "blob_size": p.MAX_BLOB_SIZE + 1}).encode()
    data = len(raw).to_bytes(4, "big") + raw + b"\0" * (p.MAX_BLOB_SIZE + 1)
    with pytest.raises(p.ProtocolError, match="exceeds"):
        decode_frame(data)
    with pytest.raises(p.ProtocolError, match="over the"):
        decode_frame(b"\0" * (MAX_ENTRY_BYTES + 1))


def test_a_done_event_with_its_png_round_trips() -> None:
    done = p.Done("k3q7", b"\x89PNG" + bytes(range(256)) * 100, 42, 1.5, 5, 64, 64)
    assert read_entry(as_redis(entry_fields(done, worker="w1")), EVENT_TYPES).message == done


def test_a_heartbeat_round_trips_and_carries_the_ready_frame() -> None:
    beat = Heartbeat("gpu-0", p.Ready(1, "cuda:0", "vq", "ViT-B/32", 12, 4), busy=3, done=17,
                     ttl=15.0, instance="abc", draining=True)
    fields = as_redis(heartbeat_fields(beat))
    assert fields[b"ready"] == p.encode_message(beat.ready)
    assert read_heartbeat(fields) == beat


@pytest.mark.parametrize("change, words", [
    ({b"ready": None}, "no `ready`"),
    ({b"ready": p.encode_message(p.Pong(1))}, "pong"),
    ({b"busy": b"many"}, "numbers"),
    ({b"busy": b"999"}, "out of range"),
    ({b"ttl": b"0"}, "out of range"),
    ({b"name": b"bad name"}, "worker name"),
])
def test_a_malformed_heartbeat_is_refused(change: dict[bytes, bytes | None], words: str) -> None:
    fields = as_redis(heartbeat_fields(Heartbeat("w1", p.Ready(1, "cpu", "v", "c"))))
    for key, value in change.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    with pytest.raises(p.ProtocolError, match=words):
        read_heartbeat(fields)


def test_the_expectation_refuses_another_protocol_version_or_other_models() -> None:
    expect = read_expectation(as_redis({"version": b"1", "vqgan": b"vq16", "clip": b""}))
    assert expect == Expectation(1, "vq16", None)
    assert expect.refusal(p.Ready(1, "cuda", "vq16", "anything")) is None
    assert "protocol version 2" in (expect.refusal(p.Ready(2, "cuda", "vq16", "c")) or "")
    refusal = expect.refusal(p.Ready(1, "cuda", "wikiart", "c")) or ""
    assert "'wikiart'" in refusal and "'vq16'" in refusal and "--vqgan" in refusal
