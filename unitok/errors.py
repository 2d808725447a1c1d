"""Errors that carry a message meant for the user, shown by the CLI and the API without a traceback."""


class UserError(ValueError):
    """A mistake in the user's input or setup; the message says what was wrong and what to do.

    A ``ValueError``, so code that validates values may raise it where a ``ValueError`` is expected.
    """
