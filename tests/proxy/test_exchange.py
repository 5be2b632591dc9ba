"""An exchange is recorded exactly once, when the serving side and the mirror are done,
whichever ends first (``proxy.exchange.Completion``). No server: the halves are ended by
hand in every order the request path can end them."""

from __future__ import annotations

import pytest

from graygate.vocabulary import ErrorKind, Role, SkipReason
from proxy.capture import Capture
from proxy.exchange import Completion, Exchange
from proxy.tagging import Tags


def _exchange() -> Exchange:
    return Exchange(
        received_at=1_700_000_000.0,
        tags=Tags("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", None, "01", None),
        label="stable",
        method="GET",
        path="/orders/1",
        query="",
        headers=[("Accept", "application/json")],
        served_by=Role.PRIMARY,
        host="shop.example",
    )


def _answer(status: int | None = 200, error: str | None = None) -> Capture:
    cap = Capture(1024)
    cap.status, cap.error = status, error
    return cap


class Records:
    """The ``record`` callback: what it was handed, in order."""

    def __init__(self) -> None:
        self.got: list[Exchange] = []

    def __call__(self, exchange: Exchange) -> None:
        self.got.append(exchange)


def test_no_mirror_recorded_when_the_serving_side_ends() -> None:
    records = Records()
    ex = _exchange()
    ex.mirror_skipped = SkipReason.SAMPLED_OUT
    done = Completion(ex, records)
    assert records.got == []
    ex.captures[Role.PRIMARY] = _answer()
    done.served()
    assert records.got == [ex]
    assert set(ex.captures) == {Role.PRIMARY}


def test_mirror_first_waits_for_the_serving_side() -> None:
    records = Records()
    ex = _exchange()
    done = Completion(ex, records)
    done.mirror_started()
    ex.captures[Role.CANARY] = _answer()
    done.mirrored()
    assert records.got == []  # the client is still being served
    ex.captures[Role.PRIMARY] = _answer()
    done.served()
    assert records.got == [ex]
    assert set(ex.captures) == {Role.PRIMARY, Role.CANARY}


def test_served_first_waits_for_the_mirror() -> None:
    records = Records()
    ex = _exchange()
    done = Completion(ex, records)
    done.mirror_started()
    ex.captures[Role.PRIMARY] = _answer()
    done.served()
    assert records.got == []  # the canary has not answered yet
    ex.captures[Role.CANARY] = _answer(201)
    done.mirrored()
    assert records.got == [ex]
    assert ex.captures[Role.CANARY].status == 201


def test_client_aborted_recorded_at_once_as_what_happened() -> None:
    """The client broke off its body before any upstream was asked: no mirror was
    started, the serving side ends with a reset, and the exchange is recorded now."""
    records = Records()
    ex = _exchange()
    done = Completion(ex, records)
    gone = _answer(None, ErrorKind.RESET)
    gone.client_gone = True
    ex.captures[Role.PRIMARY] = gone
    ex.mirror_skipped = SkipReason.CLIENT_ABORTED
    done.served()
    assert records.got == [ex]
    assert ex.captures[Role.PRIMARY].error == ErrorKind.RESET


def test_mirror_timeout_recorded_with_the_timeout() -> None:
    """A target that did not answer within ``mirror.timeout_ms`` ends the mirror all the
    same: the record holds its timeout and the other target's answer."""
    records = Records()
    ex = _exchange()
    done = Completion(ex, records)
    done.mirror_started()
    ex.captures[Role.PRIMARY] = _answer()
    done.served()
    ex.captures[Role.CANARY] = _answer(None, ErrorKind.TIMEOUT)
    ex.captures[Role.SECONDARY] = _answer()
    done.mirrored()
    assert records.got == [ex]
    assert ex.captures[Role.CANARY].error == ErrorKind.TIMEOUT


def test_a_mirror_that_never_ends_leaves_it_unrecorded() -> None:
    """Cancelled by the app's drain, a mirror never says it ended: no half record."""
    records = Records()
    done = Completion(_exchange(), records)
    done.mirror_started()
    done.served()
    assert records.got == []


def test_each_half_ends_once() -> None:
    records = Records()
    done = Completion(_exchange(), records)
    done.served()
    with pytest.raises(RuntimeError, match="serving side ended twice"):
        done.served()
    with pytest.raises(RuntimeError, match="mirror ended twice, or had not started"):
        done.mirrored()
    assert len(records.got) == 1


def test_mirror_ending_twice_is_refused() -> None:
    records = Records()
    done = Completion(_exchange(), records)
    done.mirror_started()
    done.mirrored()
    with pytest.raises(RuntimeError, match="mirror ended twice"):
        done.mirrored()
    done.served()
    assert len(records.got) == 1


def test_a_mirror_starts_once_and_only_while_serving() -> None:
    started_twice = Completion(_exchange(), Records())
    started_twice.mirror_started()
    with pytest.raises(RuntimeError, match="a mirror can start once"):
        started_twice.mirror_started()
    records = Records()
    late = Completion(_exchange(), records)
    late.served()
    with pytest.raises(RuntimeError, match="only while the serving side runs"):
        late.mirror_started()
    assert len(records.got) == 1  # recorded when served; the late mirror changed nothing
