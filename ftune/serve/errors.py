"""The errors ftune serve answers with: OpenAI-style error objects (`{"error": {"message", "type", "code"}}`, plus
`param` where one field is at fault) and their HTTP status."""

from __future__ import annotations

from typing import Optional

# The `type` of an error object, by HTTP status, as OpenAI's API names them.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error",
               503: "overloaded_error"}


class ApiError(Exception):
    """A request the server refuses: its HTTP status, a one-line message that says what to do, a short `code`."""

    def __init__(self, status: int, message: str, *, code: str, param: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None):
        super().__init__(" ".join(str(message).split()))
        self.status, self.code, self.param, self.headers = status, code, param, headers or {}

    def body(self) -> dict:
        return error_body(self.status, str(self), self.code, self.param)


def error_body(status: int, message: str, code: str, param: Optional[str] = None) -> dict:
    error = {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "code": code}
    if param is not None:
        error["param"] = param
    return {"error": error}
