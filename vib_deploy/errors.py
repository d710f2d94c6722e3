"""The one user-facing error type, caught once at the CLI edge (one line, exit code 2)."""


class UserError(Exception):
    """A failure caused by the user's input or environment, reported as one clear line."""
