"""The one error type of the HTTP API, shared by the daemon, its routes and the client."""

from __future__ import annotations

from hospes.errors import HospesError


class ApiError(HospesError):
    """A request refused: ``status`` is the HTTP status (0: the daemon could not be reached),
    the text the daemon's message for people."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


__all__ = ["ApiError"]
