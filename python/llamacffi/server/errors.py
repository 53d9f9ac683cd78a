"""Errors of the HTTP API, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json
import logging

from ..jsontypes import JSONObject
from ..service.errors import (
    ContextOverflowError,
    InferenceError,
    InvalidConfigError,
    ModelClosedError,
    ModelNotFoundError,
    QueueFullError,
)

log = logging.getLogger("llamacffi.server")


class APIError(Exception):
    """A request that fails with an HTTP status and an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> JSONObject:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json(self) -> bytes:
        return json.dumps(self.body()).encode()

    def anthropic_body(self) -> JSONObject:
        """The error in the shape of Anthropic's API, for its routes (:mod:`.messages`)."""
        return {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(self.status, "api_error"), "message": self.message},
        }


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


# A service field at fault -> the request field a client sets it with (the same name unless listed).
_PARAMS = {"GenerationOptions.json_schema": "response_format", "GenerationOptions.stop_sequences": "stop"}


def _param(field: str | None) -> str | None:
    if field is None or field in _PARAMS:
        return _PARAMS.get(field or "")
    owner, _, name = field.rpartition(".")
    return name if owner in ("", "GenerationOptions") else None


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request is malformed or a value is out of range."""
    return APIError(400, message, param=param, code=code)


def from_service(exc: BaseException, text_param: str = "messages") -> APIError:
    """The HTTP form of a service error; anything unexpected is a 500 that says only its class (and is logged with
    its traceback). ``text_param``: the field that holds the request's text, named when it does not fit the
    context."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextOverflowError):  # the service's hint is for its own callers, not a client's
        return APIError(400, f"{exc.reason}; shorten it", param=text_param, code="context_length_exceeded")
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), type="rate_limit_exceeded", code="queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, InvalidConfigError):
        return APIError(400, str(exc), param=_param(exc.field))
    if isinstance(exc, ModelClosedError):
        return APIError(503, str(exc), type="server_error", code="unavailable")
    if isinstance(exc, InferenceError):
        return APIError(500, str(exc), type="server_error")
    log.error("internal error (%s)", type(exc).__name__, exc_info=exc)
    return APIError(500, f"internal error ({type(exc).__name__})", type="server_error")
