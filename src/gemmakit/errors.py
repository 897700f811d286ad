"""Domain errors. Every layer raises these; the server maps them to the OpenAI error object in one
place (`server/errors.py`), the CLI prints their message. Messages never hold prompt text, file
system paths of the installation or stack traces."""

from __future__ import annotations


class GemmakitError(Exception):
    """Base class: `status` is the HTTP status, `type`/`code`/`param` the OpenAI error fields."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers
        if code is not None:
            self.code = code


class InvalidRequestError(GemmakitError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"

    def __init__(self, *, prompt_tokens: int, max_tokens: int | None, context_length: int,
                 param: str = "messages"):
        if max_tokens is None:
            detail = f"your prompt has {prompt_tokens} tokens, which leaves no room for a completion"
        else:
            detail = (f"you requested {prompt_tokens + max_tokens} tokens "
                      f"({prompt_tokens} in the prompt, {max_tokens} for the completion)")
        super().__init__(
            f"This model's maximum context length is {context_length} tokens, however {detail}. "
            "Shorten the prompt or lower max_tokens; gemmakit never truncates silently.",
            param=param,
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class ModelNotFoundError(GemmakitError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class UnsupportedError(InvalidRequestError):
    """A valid request the loaded engine or model cannot serve (e.g. images to a text model)."""

    code = "unsupported"


class PayloadTooLargeError(GemmakitError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class OverloadedError(GemmakitError):
    """Every slot is busy and the waiting queue is full: come back later (never a hang)."""

    status = 429
    type = "rate_limit_error"
    code = "server_overloaded"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ServiceUnavailableError(GemmakitError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class EngineError(GemmakitError):
    """An engine failed internally: a 500 with a request id; details go to the log only."""

    status = 500
    type = "server_error"
    code = "internal_error"


class ConfigError(GemmakitError):
    """Settings or model files are wrong: raised before anything loads."""

    status = 500
    type = "server_error"
    code = "configuration_error"
