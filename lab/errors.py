"""Errors the user can fix; the CLI prints their message as one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user; the message is the one line they see."""
