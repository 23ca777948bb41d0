"""The protocol's wire format, recorded byte for byte.

A bot and a worker from different commits must keep understanding each other while
PROTOCOL_VERSION stays the same, so these bytes were captured from the protocol as it was
written by hand, before its encoders were derived from the dataclasses; any change to
them is a change of the wire format and needs a new PROTOCOL_VERSION.
"""

from __future__ import annotations

import io
import math

import pytest

from engine import protocol as p

JOB = "j" * p.MAX_JOB_ID_CHARS

ENCODED = [
    ("submit-full",
     p.Submit("j1", (p.TextPromptSpec("a forest", 1.0), p.TextPromptSpec("fog ☁", -0.5)),
              width=64, height=32, iterations=5, seed=42, cutn=4, replace="the sky",
              progress_every=2, preview_size=64),
     b'\x00\x00\x00\xe7{"type":"submit","job":"j1","prompts":[{"text":"a forest","weight":1.0},'
     b'{"text":"fog \xe2\x98\x81","weight":-0.5}],"width":64,"height":32,"iterations":5,"seed":42,'
     b'"cutn":4,"replace":"the sky","progress_every":2,"preview_size":64,"parts":[]}'),
    ("submit-images",
     p.Submit("j2", (p.TextPromptSpec("x"),), init_image=b"INIT",
              image_prompts=(p.ImagePromptSpec(b"one", 2.0), p.ImagePromptSpec(b"", 0.5)),
              mask_image=b"MASK"),
     b'\x00\x00\x01k{"type":"submit","job":"j2","prompts":[{"text":"x","weight":1.0}],"width":512,'
     b'"height":512,"iterations":400,"seed":null,"cutn":32,"replace":null,"progress_every":10,'
     b'"preview_size":256,"parts":[{"kind":"init_image","size":4},{"kind":"image_prompt","size":3,'
     b'"weight":2.0},{"kind":"image_prompt","size":0,"weight":0.5},{"kind":"mask_image","size":4}],'
     b'"blob_size":11}INIToneMASK'),
    ("submit-defaults",
     p.Submit("j3", ()),
     b'\x00\x00\x00\xaa{"type":"submit","job":"j3","prompts":[],"width":512,"height":512,'
     b'"iterations":400,"seed":null,"cutn":32,"replace":null,"progress_every":10,'
     b'"preview_size":256,"parts":[]}'),
    ("cancel", p.Cancel("j1"), b'\x00\x00\x00\x1c{"type":"cancel","job":"j1"}'),
    ("ping", p.Ping(-3), b'\x00\x00\x00\x1a{"type":"ping","nonce":-3}'),
    ("shutdown", p.Shutdown(), b'\x00\x00\x00\x13{"type":"shutdown"}'),
    ("ready",
     p.Ready(1, "cuda:0", "vqgan_imagenet_f16_16384", "ViT-B/32", 4321, 4),
     b'\x00\x00\x00{{"type":"ready","version":1,"device":"cuda:0",'
     b'"vqgan":"vqgan_imagenet_f16_16384","clip":"ViT-B/32","pid":4321,"capacity":4}'),
    ("started", p.Started("j1"), b'\x00\x00\x00\x1d{"type":"started","job":"j1"}'),
    ("progress",
     p.Progress("j1", 2, 5, 0.75, 1.5, b"JPEG"),
     b'\x00\x00\x00^{"type":"progress","job":"j1","iteration":2,"total":5,"loss":0.75,'
     b'"elapsed":1.5,"blob_size":4}JPEG'),
    ("progress-diverged",
     p.Progress("j1", 2, 5, math.inf, 0.0, b""),
     b'\x00\x00\x00P{"type":"progress","job":"j1","iteration":2,"total":5,"loss":null,'
     b'"elapsed":0.0}'),
    ("done",
     p.Done("j1", b"PNG", 2**53, 3.25, 5, 64, 32),
     b'\x00\x00\x00u{"type":"done","job":"j1","seed":9007199254740992,"seconds":3.25,'
     b'"iterations":5,"width":64,"height":32,"blob_size":3}PNG'),
    ("failed",
     p.Failed("j1", "too big", p.FAIL_OUT_OF_MEMORY),
     b'\x00\x00\x00I{"type":"failed","job":"j1","message":"too big","reason":"out_of_memory"}'),
    ("cancelled",
     p.Cancelled("j1", unknown=True),
     b'\x00\x00\x00.{"type":"cancelled","job":"j1","unknown":true}'),
    ("pong", p.Pong(2**63 - 1), b'\x00\x00\x00+{"type":"pong","nonce":9223372036854775807}'),
    ("error-with-job",
     p.Error("dup", job="j1", fatal=True),
     b'\x00\x00\x008{"type":"error","message":"dup","fatal":true,"job":"j1"}'),
    ("error-without-job",
     p.Error("bad frame"),
     b'\x00\x00\x004{"type":"error","message":"bad frame","fatal":false}'),
]


@pytest.mark.parametrize(("name", "message", "wire"), ENCODED, ids=[c[0] for c in ENCODED])
def test_each_message_encodes_to_its_recorded_bytes(name, message, wire):
    assert p.encode_message(message) == wire


@pytest.mark.parametrize(("name", "message", "wire"), ENCODED, ids=[c[0] for c in ENCODED])
def test_recorded_bytes_decode_to_the_message(name, message, wire):
    decoded = p.read_message(io.BytesIO(wire))
    if name == "progress-diverged":  # a non-finite loss comes back as NaN
        assert math.isnan(decoded.loss)
        message = p.Progress("j1", 2, 5, decoded.loss, 0.0, b"")
    assert decoded == message


def test_every_message_type_has_a_recorded_encoding():
    assert {type(message) for _, message, _ in ENCODED} == set(p.MESSAGE_TYPES.values())


# Headers with fields left out or null: what each field becomes when it is not sent.
SPARSE = [
    ({"type": "submit", "job": "j", "prompts": [{"text": "a"}]},
     p.Submit("j", (p.TextPromptSpec("a", 1.0),))),
    ({"type": "submit", "job": "j", "prompts": [{"text": "", "weight": None}], "width": None,
      "height": None, "iterations": None, "seed": None, "cutn": None, "replace": None,
      "progress_every": None, "preview_size": None, "parts": None},
     p.Submit("j", (p.TextPromptSpec("", 1.0),))),
    ({"type": "submit", "job": JOB, "prompts": [], "width": 8192, "height": 1,
      "iterations": 100_000, "seed": 2**63 - 1, "cutn": 1024, "progress_every": 0,
      "preview_size": 16, "replace": ""},
     p.Submit(JOB, (), width=8192, height=1, iterations=100_000, seed=2**63 - 1, cutn=1024,
              progress_every=0, preview_size=16, replace="")),
    ({"type": "cancel", "job": "j"}, p.Cancel("j")),
    ({"type": "ping"}, p.Ping(0)),
    ({"type": "pong", "nonce": None}, p.Pong(0)),
    ({"type": "ping", "nonce": -(2**63)}, p.Ping(-(2**63))),
    ({"type": "shutdown", "unknown_field": [1, 2]}, p.Shutdown()),
    ({"type": "ready", "version": 1}, p.Ready(1, "", "", "", 0, 1)),
    ({"type": "started", "job": "j", "extra": True}, p.Started("j")),
    ({"type": "done", "job": "j", "seed": 0, "seconds": 2}, p.Done("j", b"", 0, 2.0, 0, 0, 0)),
    ({"type": "failed", "job": "j", "message": ""}, p.Failed("j", "", p.FAIL_ENGINE)),
    ({"type": "cancelled", "job": "j", "unknown": None}, p.Cancelled("j", False)),
    ({"type": "error", "message": "m", "job": ""}, p.Error("m", job="")),
    ({"type": "error", "message": "m", "job": None, "fatal": None}, p.Error("m")),
]


@pytest.mark.parametrize(("header", "message"), SPARSE, ids=lambda v: str(v)[:60])
def test_fields_left_out_or_null_take_their_recorded_defaults(header, message):
    assert p.decode_message(p.Frame(header)) == message


def test_a_progress_without_a_loss_has_a_nan_loss():
    decoded = p.decode_message(p.Frame({"type": "progress", "job": "j", "iteration": 1,
                                        "total": 2}))
    assert (decoded.job, decoded.iteration, decoded.total, decoded.elapsed, decoded.preview) == (
        "j", 1, 2, 0.0, b"")
    assert math.isnan(decoded.loss)


def _submit(**changes):
    return {"type": "submit", "job": "j", "prompts": [{"text": "a", "weight": 1.0}], **changes}


def _parts(*parts):
    return [{"kind": kind, "size": size, **extra} for kind, size, extra in parts]


# Headers the decoder refuses (blob in the second item), each for one bad field.
REJECTED = [
    (_submit(job=""), b""), (_submit(job="j" * 129), b""), (_submit(job=5), b""),
    ({"type": "submit", "job": "j"}, b""), (_submit(prompts="a"), b""),
    (_submit(prompts=[{"text": "a"}] * 65), b""), (_submit(prompts=["a"]), b""),
    (_submit(prompts=[{"weight": 1.0}]), b""), (_submit(prompts=[{"text": "a" * 4001}]), b""),
    (_submit(prompts=[{"text": "a", "weight": "2"}]), b""),
    (_submit(prompts=[{"text": "a", "weight": True}]), b""),
    (_submit(prompts=[{"text": "a", "weight": math.inf}]), b""),
    (_submit(width=0), b""), (_submit(width=8193), b""), (_submit(width=1.0), b""),
    (_submit(height=True), b""), (_submit(iterations=0), b""), (_submit(iterations=100_001), b""),
    (_submit(seed=-1), b""), (_submit(seed=2**63), b""), (_submit(seed="1"), b""),
    (_submit(cutn=0), b""), (_submit(cutn=1025), b""), (_submit(progress_every=-1), b""),
    (_submit(progress_every=100_001), b""), (_submit(preview_size=15), b""),
    (_submit(preview_size=8193), b""), (_submit(replace="r" * 4001), b""), (_submit(replace=1), b""),
    (_submit(parts={}), b""), (_submit(parts=["init_image"]), b"x"),
    (_submit(parts=_parts(("init_image", 2, {}))), b"x"),
    (_submit(parts=_parts(("init_image", 1, {}))), b"xy"),
    (_submit(parts=_parts(("init_image", -1, {}))), b""),
    (_submit(parts=_parts(("init_image", 1.0, {}))), b"x"),
    (_submit(parts=_parts(("sketch", 1, {}))), b"x"),
    (_submit(parts=[{"size": 1}]), b"x"),
    (_submit(parts=_parts(("init_image", 1, {}), ("init_image", 1, {}))), b"xy"),
    (_submit(parts=_parts(("mask_image", 1, {}), ("mask_image", 1, {}))), b"xy"),
    (_submit(parts=_parts(*[("image_prompt", 1, {})] * 9)), b"x" * 9),
    (_submit(parts=_parts(("image_prompt", 1, {"weight": "heavy"}))), b"x"),
    (_submit(parts=_parts(("image_prompt", 1, {"weight": math.nan}))), b"x"),
    (_submit(), b"stray blob"),
    ({"type": "cancel"}, b""), ({"type": "cancel", "job": ""}, b""),
    ({"type": "cancel", "job": "j"}, b"x"),
    ({"type": "ping", "nonce": 2**63}, b""), ({"type": "ping", "nonce": 1.0}, b""),
    ({"type": "ping", "nonce": False}, b""), ({"type": "shutdown"}, b"x"),
    ({"type": "ready"}, b""), ({"type": "ready", "version": -1}, b""),
    ({"type": "ready", "version": "1"}, b""), ({"type": "ready", "version": 1, "device": 5}, b""),
    ({"type": "ready", "version": 1, "clip": "c" * 10_001}, b""),
    ({"type": "ready", "version": 1, "pid": -1}, b""),
    ({"type": "ready", "version": 1, "capacity": 0}, b""),
    ({"type": "ready", "version": 1, "capacity": 65}, b""), ({"type": "ready", "version": 1}, b"x"),
    ({"type": "started", "job": 1}, b""),
    ({"type": "progress", "job": "j", "total": 2}, b""),
    ({"type": "progress", "job": "j", "iteration": 1}, b""),
    ({"type": "progress", "job": "j", "iteration": -1, "total": 2}, b""),
    ({"type": "progress", "job": "j", "iteration": 1, "total": 2, "loss": "low"}, b""),
    ({"type": "progress", "job": "j", "iteration": 1, "total": 2, "elapsed": True}, b""),
    ({"type": "progress", "iteration": 1, "total": 2}, b""),
    ({"type": "done", "job": "j", "seconds": 1.0}, b""),
    ({"type": "done", "job": "j", "seed": 1}, b""),
    ({"type": "done", "job": "j", "seed": -1, "seconds": 1.0}, b""),
    ({"type": "done", "job": "j", "seed": 1, "seconds": 1.0, "width": -1}, b""),
    ({"type": "done", "job": "j", "seed": 1, "seconds": 1.0, "iterations": 0.5}, b""),
    ({"type": "failed", "job": "j"}, b""), ({"type": "failed", "job": "j", "message": 3}, b""),
    ({"type": "failed", "job": "j", "message": "m", "reason": 3}, b""),
    ({"type": "failed", "job": "j", "message": "m"}, b"x"),
    ({"type": "cancelled", "job": "j", "unknown": "yes"}, b""),
    ({"type": "cancelled", "job": "j", "unknown": 1}, b""),
    ({"type": "error"}, b""), ({"type": "error", "message": "m", "fatal": 1}, b""),
    ({"type": "error", "message": "m", "job": 5}, b""),
    ({"type": "error", "message": "m", "job": "j" * 129}, b""),
    ({"type": "teleport", "job": "j"}, b""),
]


@pytest.mark.parametrize(("header", "blob"), REJECTED, ids=lambda v: str(v)[:70])
def test_each_recorded_bad_header_is_refused_recoverably_naming_its_job(header, blob):
    with pytest.raises(p.ProtocolError) as error:
        p.decode_message(p.Frame({**header, **({"blob_size": len(blob)} if blob else {})}, blob))
    assert error.value.recoverable
    assert error.value.job == (header["job"] if isinstance(header.get("job"), str) else None)
