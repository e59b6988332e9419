"""Errors a user can act on.

Every refusal of bad input is a :class:`FarmError` whose message is one line naming the problem;
the CLI prints it as ``error: …`` and exits with code 2.
"""


class FarmError(Exception):
    """Bad input or an environment problem, reported to the user in one line."""

    exit_code = 2


class RenderFailed(Exception):
    """A job ran but could not produce every output (after its retries); exit code 1."""

    exit_code = 1
