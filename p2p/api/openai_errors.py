"""OpenAI-shaped errors: `ApiError`, and the table from gpunet's `ErrorCode` to what a client sees.

One mapping, keyed by code: the HTTP status comes from `p2p.errors.HTTP_STATUS`, OpenAI's error
`type` and `code` from `OPENAI_ERRORS` below, the metrics outcome from `p2p.metrics.Outcome.of`.
A failure of the network reaches the gateway as `AskError`, whose `.code` is all that is read;
its message is passed to the client as it is, so rewording it can change no status.

Errors that are the gateway's own and no network code (a missing API key, a body too large, an
unknown route, a bug) are built directly with their status.
"""

from __future__ import annotations

from typing import Any

import attrs
from starlette.responses import JSONResponse

from p2p.client.network import AskError
from p2p.errors import HTTP_STATUS, ErrorCode
from p2p.metrics import Outcome


@attrs.frozen
class OpenAIError:
    """OpenAI's names for a failure: its `type`, its `code`, the request field it blames."""

    type: str
    code: str | None = None
    param: str | None = None


# Chosen to match what OpenAI's own API answers for the nearest case, so client libraries react
# the same way (a 503 `server_error` is retried; `context_length_exceeded` is a known code).
OPENAI_ERRORS: dict[ErrorCode, OpenAIError] = {
    ErrorCode.UNKNOWN_MODEL: OpenAIError("invalid_request_error", "model_not_found", "model"),
    ErrorCode.BAD_REQUEST: OpenAIError("invalid_request_error"),
    ErrorCode.TOO_LONG: OpenAIError("invalid_request_error", "context_length_exceeded"),
    ErrorCode.BUSY: OpenAIError("server_error", "providers_busy"),
    ErrorCode.SHUTTING_DOWN: OpenAIError("server_error", "providers_busy"),
    # every provider was tried and none could serve: to the caller as good as all busy
    ErrorCode.UNAVAILABLE: OpenAIError("server_error", "providers_busy"),
    ErrorCode.RATE_LIMITED: OpenAIError("rate_limit_error", "rate_limited"),
    ErrorCode.TIMEOUT: OpenAIError("server_error", "timeout"),
    ErrorCode.INTERNAL: OpenAIError("server_error", "provider_error"),
    ErrorCode.RELAY_FULL: OpenAIError("server_error", "providers_busy"),
    ErrorCode.NO_RESERVATION: OpenAIError("server_error", "provider_error"),
    ErrorCode.PAUSED: OpenAIError("server_error", "providers_busy"),
    ErrorCode.FORBIDDEN: OpenAIError("permission_error", "forbidden"),
}


@attrs.frozen
class ApiError(Exception):
    """An OpenAI-shaped error: HTTP status + `{"error": {message, type, param, code}}`."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    outcome: Outcome = Outcome.BAD_REQUEST  # what it counts as in the gateway's metrics

    @classmethod
    def from_code(cls, code: ErrorCode, message: str, param: str | None = None) -> ApiError:
        """The error a request that ended in *code* gets; *param* overrides the table's."""
        names = OPENAI_ERRORS[code]
        return cls(
            HTTP_STATUS[code],
            message,
            names.type,
            code=names.code,
            param=param or names.param,
            outcome=Outcome.of(code),
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"retry-after": "1"} if self.status == 503 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError.from_code(ErrorCode.BAD_REQUEST, message, param)


def error_from_ask(exc: AskError) -> ApiError:
    """The HTTP error for a request the network could not serve: by `exc.code` alone."""
    return ApiError.from_code(exc.code, str(exc))


def internal_error(exc: BaseException) -> ApiError:
    """A bug of the gateway (or a DHT failure): a 500 naming the exception's type only."""
    return ApiError(
        500, f"internal error: {type(exc).__name__}", "server_error", outcome=Outcome.ERROR
    )
