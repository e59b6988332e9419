"""How the API refuses: every refusal is a JSON ``Problem`` whose ``detail`` is one printable line.

The app installs these: the middleware that refuses a query parameter given twice, and the handlers
that turn a :class:`~farm.errors.FarmError` (by its ``status``) or a request that does not fit the
spec (422) into that one line.
"""

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from farm.errors import FarmError, Unauthorized


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` as one printable line: control characters escaped, at most ``limit`` characters."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def validation_detail(error: RequestValidationError) -> str:
    """The first problem of a request that does not fit the spec, in one line."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    if first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", "it cannot be parsed")
        return f"the request body is not valid JSON: {reason}"
    if not loc:  # the body as a whole
        if first["type"] == "missing":
            return "the request body is missing: send a JSON object"
        return "the request body must be a JSON object (Content-Type: application/json)"
    where = ".".join(one_line(p, 64) for p in loc)
    return f"{where}: {first['msg']}"


async def single_query_values(request: Request, call_next: Any) -> Any:
    """A query parameter given twice is refused: the spec says each is one value, and taking
    the last (what FastAPI does) would accept a request the spec forbids."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name in seen:
            detail = f"{one_line(name, 64)}: query parameter given more than once"
            return JSONResponse({"detail": detail, "errors": 1}, status_code=422)
        seen.add(name)
    return await call_next(request)


async def refused(_: Request, error: FarmError) -> JSONResponse:
    """A refusal of the farm's own, with the status its class carries (a 401 says how to
    authenticate, as HTTP asks)."""
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
    detail = {"detail": one_line(str(error))}
    return JSONResponse(detail, status_code=error.status, headers=headers)


async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
    """A request that does not fit the spec: its first problem, and how many there were."""
    return JSONResponse(
        {"detail": one_line(validation_detail(error)), "errors": len(error.errors())},
        status_code=422,
    )
