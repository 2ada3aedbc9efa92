"""The error tables: codes on the wire, retry rules, HTTP statuses, exceptions to codes.

Plain calls. The gateway's status for a failure comes from its code alone: the last test rewords
the messages of client failures (even into text that reads like another code) and checks that
no status moves.
"""

from __future__ import annotations

import pytest

from inference.generation import GenerationError, PromptTooLong, WorkerBusy
from p2p.api.openai_errors import OPENAI_ERRORS, ApiError, error_from_ask
from p2p.client.network import AskError
from p2p.errors import (
    HTTP_STATUS,
    RETRYABLE,
    BadRequest,
    Busy,
    ErrorCode,
    GpunetError,
    RateLimited,
    ShuttingDown,
    Timeout,
    TooLong,
    Unavailable,
    UnknownModel,
    code_of,
)
from p2p.metrics import Outcome


def test_every_code_has_an_http_status_and_an_openai_error() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert set(OPENAI_ERRORS) == set(ErrorCode)
    assert all(400 <= status < 600 for status in HTTP_STATUS.values())
    # the client's fault is 4xx, the network's 5xx
    for code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LONG, ErrorCode.UNKNOWN_MODEL):
        assert 400 <= HTTP_STATUS[code] < 500
    for code in (ErrorCode.BUSY, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.TIMEOUT):
        assert HTTP_STATUS[code] >= 500
    assert HTTP_STATUS[ErrorCode.RATE_LIMITED] == 429


def test_retryable_codes_are_those_another_provider_may_answer_differently() -> None:
    retryable = {
        ErrorCode.BUSY,
        ErrorCode.RATE_LIMITED,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.TIMEOUT,
        ErrorCode.INTERNAL,
        ErrorCode.UNKNOWN_MODEL,  # one node's catalogue may lag the DHT's
        ErrorCode.RELAY_FULL,  # another relay of the node may have room
        ErrorCode.NO_RESERVATION,
        ErrorCode.PAUSED,  # its owner paused it; others serve
    }
    assert retryable == RETRYABLE
    # every honest provider refuses these alike; `unavailable` is the client's own verdict
    assert set(ErrorCode) - RETRYABLE == {
        ErrorCode.BAD_REQUEST,
        ErrorCode.TOO_LONG,
        ErrorCode.UNAVAILABLE,
        ErrorCode.FORBIDDEN,  # an owner-only operation: no other node would answer it for us
    }


def test_wire_values_round_trip_and_an_unknown_one_is_internal() -> None:
    for code in ErrorCode:
        assert ErrorCode.from_wire(code.value) is code
    assert ErrorCode.from_wire("a_code_from_a_newer_peer") is ErrorCode.INTERNAL
    assert ErrorCode.from_wire("") is ErrorCode.INTERNAL
    assert ErrorCode.from_wire("BUSY") is ErrorCode.INTERNAL  # values are exact, not folded


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (BadRequest("x", field="prompt"), ErrorCode.BAD_REQUEST),
        (TooLong("x"), ErrorCode.TOO_LONG),
        (Busy("x"), ErrorCode.BUSY),
        (RateLimited("x"), ErrorCode.RATE_LIMITED),
        (ShuttingDown("x"), ErrorCode.SHUTTING_DOWN),
        (UnknownModel("x"), ErrorCode.UNKNOWN_MODEL),
        (Timeout("x"), ErrorCode.TIMEOUT),
        (Unavailable("x"), ErrorCode.UNAVAILABLE),
        (GpunetError("x"), ErrorCode.INTERNAL),
        (GpunetError("x", code=ErrorCode.BUSY), ErrorCode.BUSY),
        (AskError("x"), ErrorCode.UNAVAILABLE),
        (AskError("x", ErrorCode.TOO_LONG), ErrorCode.TOO_LONG),
        # inference knows nothing of wire codes; the table maps its exceptions
        (WorkerBusy("queue full"), ErrorCode.BUSY),
        (PromptTooLong("prompt is 900 tokens"), ErrorCode.TOO_LONG),
        (GenerationError("bad grammar"), ErrorCode.BAD_REQUEST),
        (ValueError("busy"), ErrorCode.INTERNAL),  # the text says busy; the type does not
        (RuntimeError("too_long"), ErrorCode.INTERNAL),
    ],
)
def test_code_of(exc: BaseException, code: ErrorCode) -> None:
    assert code_of(exc) is code


def test_a_bad_request_names_its_field() -> None:
    exc = BadRequest("temperature must be a number", field="temperature")
    assert exc.field == "temperature" and exc.message == "temperature must be a number"


def test_client_failures_map_to_http_statuses_by_code() -> None:
    cases = {
        ErrorCode.UNKNOWN_MODEL: (404, "model_not_found", Outcome.UNKNOWN_MODEL),
        ErrorCode.UNAVAILABLE: (503, "providers_busy", Outcome.BUSY),
        ErrorCode.BUSY: (503, "providers_busy", Outcome.BUSY),
        ErrorCode.SHUTTING_DOWN: (503, "providers_busy", Outcome.BUSY),
        ErrorCode.RATE_LIMITED: (429, "rate_limited", Outcome.BUSY),
        ErrorCode.TOO_LONG: (400, "context_length_exceeded", Outcome.TOO_LONG),
        ErrorCode.BAD_REQUEST: (400, None, Outcome.BAD_REQUEST),
        ErrorCode.TIMEOUT: (504, "timeout", Outcome.ERROR),
        ErrorCode.INTERNAL: (502, "provider_error", Outcome.ERROR),
        ErrorCode.RELAY_FULL: (503, "providers_busy", Outcome.BUSY),
        ErrorCode.NO_RESERVATION: (502, "provider_error", Outcome.ERROR),
        ErrorCode.PAUSED: (503, "providers_busy", Outcome.BUSY),
        ErrorCode.FORBIDDEN: (403, "forbidden", Outcome.UNAUTHORIZED),
    }
    assert set(cases) == set(ErrorCode)
    for code, (status, openai_code, outcome) in cases.items():
        error = error_from_ask(AskError("whatever went wrong", code))
        assert (error.status, error.code, error.outcome) == (status, openai_code, outcome), code
        assert error.message == "whatever went wrong"  # passed on as it is
    assert error_from_ask(AskError("x", ErrorCode.UNKNOWN_MODEL)).param == "model"


MESSAGES = [
    "no node serves model 'x'; the network offers: a, b",
    "no provider could serve the request: abc: node is busy; try another",
    "too_long: prompt is 900 tokens",
    "bad_request: messages: at most 256",
    "unknown_model: 'x' is not served here",
    "node closed the connection mid-stream after 3 token chunks were delivered",
    "",
]


@pytest.mark.parametrize("code", list(ErrorCode))
def test_rewording_a_failure_changes_no_status(code: ErrorCode) -> None:
    seen = {_status_fields(error_from_ask(AskError(m, code))) for m in MESSAGES}
    assert seen == {_status_fields(ApiError.from_code(code, "reworded"))}


def _status_fields(error: ApiError) -> tuple[object, ...]:
    return (error.status, error.type, error.code, error.param, error.outcome)
