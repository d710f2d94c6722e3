"""The one user-facing error type, caught once at the CLI edge (one line, exit code 2)."""


class UserError(Exception):
    """A failure caused by the user's input or environment, reported as one clear line."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most `limit` characters ('' for an empty message)."""
    lines = str(e).splitlines()
    return lines[0][:limit] if lines else ""
