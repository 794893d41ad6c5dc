"""The root of every exception Hospes raises on purpose.

Each package derives its own errors from :class:`HospesError`; the CLI prints
their text (which starts with a capital letter and says what to do) instead of
a traceback.
"""


class HospesError(Exception):
    """An error whose message is meant for the user."""
