"""Xenstore watches of one connection and how changes match them.

A watch is ``(path, token)``.  It fires for a change of its node or of any
descendant, and for the removal of the node itself or of an ancestor (a
recursive rm reports every removed node; see :meth:`Tree.rm`).  A watch on
``/`` sees everything.  Special paths (``@introduceDomain``,
``@releaseDomain``) only match events of exactly that name.

The event names the *changed* node.  If the watch was registered with a
relative path the event path is relative too: the home prefix
``/local/domain/<domid>/`` is stripped (xenstored keeps a prefix length per
watch; so does :class:`Watch`).

Registering a duplicate ``(path, token)`` is ``EEXIST``; more than the quota
of watches is ``E2BIG`` (both as xenstored).  The immediate event every new
watch gets is the caller's business (see :mod:`.wire`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

from hospes.state import StateError, check_version

from .errors import StoreError
from .tree import Change, Quota, canonicalize, home_path, is_special


def is_child(child: str, parent: str) -> bool:
    """True if ``child`` is ``parent`` or below it (``/`` contains everything)."""
    if parent == "/":
        return True
    return child == parent or child.startswith(parent + "/")


@dataclass(frozen=True, slots=True)
class Watch:
    """One registered watch; ``path`` is canonical (absolute or special)."""

    path: str
    token: str
    prefix_len: int

    @property
    def registered_path(self) -> str:
        """The path in the form the client used (relative if it was)."""
        return self.path[self.prefix_len :]

    def matches(self, change_path: str, exact: bool) -> bool:
        if exact or is_special(self.path) or is_special(change_path):
            return change_path == self.path
        return is_child(change_path, self.path)

    def event_path(self, change_path: str) -> str:
        return change_path[self.prefix_len :]


@dataclass(frozen=True)
class WatchesState:
    """Saved watches: ``(path as registered, token)`` in registration order."""

    VERSION: ClassVar[int] = 1
    watches: tuple[tuple[str, str], ...]
    version: int = VERSION


class WatchList:
    """The watches of one connection (domain ``domid``)."""

    def __init__(self, domid: int, quota: Quota | None = None) -> None:
        self._domid = domid
        self._quota = quota
        self._watches: list[Watch] = []

    def __len__(self) -> int:
        return len(self._watches)

    def __iter__(self) -> Iterator[Watch]:
        return iter(self._watches)

    def _canonical(self, path: str) -> tuple[str, int]:
        name = canonicalize(path, self._domid, allow_special=True, quota=self._quota)
        relative = not path.startswith("/") and not is_special(path)
        return name, (len(home_path(self._domid)) + 1 if relative else 0)

    def add(self, path: str, token: str) -> Watch:
        """Register a watch; raise EINVAL, EEXIST or E2BIG."""
        name, prefix_len = self._canonical(path)
        for watch in self._watches:
            if watch.path == name and watch.token == token:
                raise StoreError("EEXIST", f"watch {path} {token}")
        if self._quota is not None and len(self._watches) >= self._quota.max_watches:
            raise StoreError("E2BIG", "too many watches")
        watch = Watch(name, token, prefix_len)
        self._watches.append(watch)
        return watch

    def remove(self, path: str, token: str) -> Watch:
        """Unregister a watch; raise EINVAL or ENOENT."""
        name, _ = self._canonical(path)
        for i, watch in enumerate(self._watches):
            if watch.path == name and watch.token == token:
                del self._watches[i]
                return watch
        raise StoreError("ENOENT", f"no watch {path} {token}")

    def clear(self) -> None:
        self._watches.clear()

    def events(self, change: Change) -> list[tuple[str, str]]:
        """``(event path, token)`` for every watch ``change`` fires."""
        return [
            (w.event_path(change.path), w.token)
            for w in self._watches
            if w.matches(change.path, change.exact)
        ]

    def save(self) -> WatchesState:
        return WatchesState(tuple((w.registered_path, w.token) for w in self._watches))

    @classmethod
    def restore(
        cls, state: WatchesState, domid: int, quota: Quota | None = None
    ) -> WatchList:
        check_version(state, f"xenstore watches of domain {domid}")
        watches = cls(domid, quota)
        for path, token in state.watches:
            try:
                name, prefix_len = watches._canonical(path)
            except StoreError as e:
                raise StateError(
                    f"The saved xenstore watch {path!r} of domain {domid} is malformed: {e}"
                ) from e
            watches._watches.append(Watch(name, token, prefix_len))
        return watches
