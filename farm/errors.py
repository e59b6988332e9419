"""Errors a user can act on.

Every refusal of bad input is a :class:`FarmError` whose message is one line naming the problem.
Each kind of refusal is a subclass that says, once, what it is over HTTP (``status``) and to the
CLI (``exit_code``): the API answers with the status, the CLI prints ``error: …`` and exits with
the code, and the API's client raises the same class again from the status it gets back.
"""


class FarmError(Exception):
    """Bad input or an environment problem, reported to the user in one line: refused."""

    status = 400
    exit_code = 2


class NotFound(FarmError):
    """No such job, task, frame or scene (or none the caller may see)."""

    status = 404


class Forbidden(FarmError):
    """The caller's role, ownership or folder does not allow this."""

    status = 403


class Unauthorized(FarmError):
    """No token, or one that does not work: unknown, expired, revoked, or its user disabled."""

    status = 401


BY_STATUS: dict[int, type[FarmError]] = {e.status: e for e in (NotFound, Forbidden, Unauthorized)}


class RenderFailed(Exception):
    """A job ran but could not produce every output (after its retries); exit code 1."""

    exit_code = 1
