"""Error responses: PACT's (``{"code", "message"}``) for the API, RFC 6749 §5.2's
(``{"error", "error_description"}``) for ``/auth/token``."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge_agent.hub.api.models import ErrorBody, ErrorCode, OAuthErrorBody

__all__ = ["ApiError", "OAuthError", "install_error_handlers", "pact_error"]

# PACT's error table (rest-api.md "Error responses"): each code's HTTP status.
STATUS: dict[str, int] = {
    "AccessDenied": 403,
    "BadRequest": 400,
    "NotFound": 404,
    "NotImplemented": 400,
    "TokenExpired": 401,
    "InternalError": 500,
}

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class ApiError(Exception):
    """A PACT error response. ``status`` defaults to the code's; 401s for a missing or
    invalid token keep the code BadRequest (PACT: "in all other cases ... BadRequest") with
    the HTTP status 401 the 3.0 text asks for."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.status = status or STATUS[code]
        self.headers = dict(headers or {})


class OAuthError(Exception):
    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.body = OAuthErrorBody.model_validate(
            {"error": error, "error_description": description}
        )
        self.status = status
        self.headers = dict(headers or {})


def pact_error(
    code: ErrorCode,
    message: str,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(code=code, message=message).model_dump(mode="json")
    return JSONResponse(
        body, status_code=status or STATUS[code], headers={**NO_STORE, **(headers or {})}
    )


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return pact_error(exc.code, exc.message, exc.status, exc.headers)

    async def on_oauth_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OAuthError)
        body = exc.body.model_dump(mode="json", exclude_none=True)
        return JSONResponse(body, status_code=exc.status, headers={**NO_STORE, **exc.headers})

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return pact_error("NotFound", f"no such resource: {request.url.path}")
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
            return pact_error(
                "BadRequest",
                f"method {request.method} is not allowed on {request.url.path}",
                405,
                {"Allow": allow} if allow else None,
            )
        code: ErrorCode = "InternalError" if exc.status_code >= 500 else "BadRequest"
        return pact_error(code, str(exc.detail), exc.status_code)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return pact_error("BadRequest", "; ".join(str(error.get("msg")) for error in exc.errors()))

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises it after this answer: the server logs the traceback.
        return pact_error("InternalError", "An internal or unexpected error has occurred")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(OAuthError, on_oauth_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
