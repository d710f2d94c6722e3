"""The one user-facing error type, caught once at the CLI edge (one line, exit code 2)."""


class UserError(Exception):
    """A failure caused by the user's input or environment, reported as one clear line."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most `limit` characters), for a one-line error."""
    text = str(error)
    return text.splitlines()[0][:limit] if text.strip() else type(error).__name__
