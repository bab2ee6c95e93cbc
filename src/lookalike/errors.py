"""Errors that the user can fix. The CLI prints their message as one line and exits with code 2."""


class LookalikeError(Exception):
    """A problem with the user's input (a path, an option, a file); never a bug in Lookalike."""


class BadImageError(LookalikeError):
    """One image could not be read; long runs skip it and name it at the end."""


class TransientImageError(BadImageError):
    """One image could not be decoded for a reason that may pass (not enough memory): skipped now, tried again on
    the next run instead of being remembered as a bad file."""
