"""User errors: anything a user can cause and fix. The app prints them as one line, no traceback."""


class UserError(Exception):
    """A problem with the user's input or environment; the message says what is wrong and what to do."""

    exit_code = 1
