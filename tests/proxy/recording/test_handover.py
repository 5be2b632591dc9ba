"""The frames a proxy process hands to its record writer: an exchange crosses the pipe
and is built, on the other side, into the very record it would have been built into here."""

from __future__ import annotations

import marshal

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from config.load import config_from_mapping
from proxy.recording.building import RecordBuilder
from proxy.recording.handover import (
    EXCHANGE,
    LOSSES,
    decode_exchange,
    encode_exchange,
    encode_losses,
    frames,
)
from tests.proxy.recording.exchanges import exchange


def _builder() -> RecordBuilder:
    cfg = config_from_mapping(
        {
            "run": "test",
            "upstreams": {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"},
            "redact": {"json_fields": ["$.card"]},
            "compare": {"endpoints": [{"match": "POST /api/orders/{order}"}]},
        },
        env={},
    )
    return RecordBuilder.from_config(cfg, 3)


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("i", [1, 7])
def test_an_exchange_is_built_alike_on_either_side_of_the_pipe(i: int, block: bool) -> None:
    builder = _builder()
    ex = exchange(i)
    if block:  # as the upstream's parser gives them: bytes (one outside UTF-8)
        for cap in ex.captures.values():
            if cap.headers is not None:
                fields = CIMultiDict(cap.headers)
                fields.add("X-Bytes", "caf\udce9")
                cap.headers = CIMultiDictProxy(fields)
                parts = [x.encode("utf-8", "surrogateescape") for kv in fields.items() for x in kv]
                cap.head_block = b"\n".join(parts)
    here = builder.build(ex)
    [(_end, message)] = list(frames(encode_exchange(ex)))
    assert message[0] == EXCHANGE
    there = builder.build(decode_exchange(message))
    assert there == here
    assert there.endpoint == "POST /api/orders/{order}"
    assert there.request_body is not None and b"4111" not in there.request_body
    assert there.secondary is not None and there.secondary.error == "timeout"


def test_frames_are_read_whole_and_a_partial_one_waits() -> None:
    data = encode_exchange(exchange(1)) + encode_losses(3, "queue_full", 2)
    got = list(frames(data))
    assert [m[0] for _, m in got] == [EXCHANGE, LOSSES]
    assert got[1][1] == (LOSSES, 3, "queue_full", 2)
    assert got[-1][0] == len(data)
    cut = data[:-1]
    assert [m[0] for _, m in frames(cut)] == [EXCHANGE]  # the last waits for its last byte


def test_only_builtins_cross() -> None:
    payload = encode_exchange(exchange(2))[4:]
    assert type(marshal.loads(payload)) is tuple
