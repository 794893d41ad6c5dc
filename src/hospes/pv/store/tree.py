"""The xenstore node tree: paths, permissions, quotas and the tree itself.

Nodes are immutable :class:`Node` values kept in a flat ``{path: Node}`` map.
Because nothing mutates a node in place, a transaction's snapshot is a shallow
copy of that map (see :mod:`.transactions`) and costs one dict copy.

Paths
    Canonical paths are absolute (``/local/domain/3/device``).  A client's
    relative path is resolved against its *home*, ``/local/domain/<domid>``
    (:func:`canonicalize`).  Allowed characters, the ``//`` and trailing-``/``
    rules and the length limits follow xenstored (xs_wire.h
    ``XENSTORE_ABS_PATH_MAX`` = 3072, ``XENSTORE_REL_PATH_MAX`` = 2048).
    Special paths (``@introduceDomain``, ``@releaseDomain``) exist only for
    watches and never as nodes.

Permissions
    A node's permission list is a sequence of :class:`Perm` ("n0", "r5", ...).
    The first entry names the *owner* and the access every domain not listed
    later gets; later entries grant access to specific domains.  The owner and
    the privileged domain (dom0, the toolstack) may do anything.  A missing
    node is reported as ``ENOENT`` only when its nearest existing ancestor
    grants the access asked for, else ``EACCES`` (xenstored does not leak
    existence).  Nodes created by a write inherit the permissions of their
    nearest existing ancestor; a guest becomes the owner of what it creates.

Quotas (unprivileged callers only)
    Nodes owned per domain, value size, permissions per node, path length
    under the home.  They bound how much host memory a guest can make the
    store hold; violations are ``ENOSPC``.

Generations
    Every node carries the tree's generation counter value of its last change
    (value, permissions or child list).  Transactions compare generations to
    detect conflicts; ``XS_DIRECTORY_PART`` reports them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import ClassVar, Iterable, Iterator, Sequence

from hospes.state import StateError, check_version

from .errors import StoreError

#: The privileged domain: the toolstack, allowed everything.
PRIVILEGED_DOMID = 0

#: xs_wire.h XENSTORE_ABS_PATH_MAX / XENSTORE_REL_PATH_MAX.
ABS_PATH_MAX = 3072
REL_PATH_MAX = 2048

_VALID_PATH = re.compile(r"[A-Za-z0-9\-/_@]+")
_HOME_PREFIX = re.compile(r"/local/domain/\d{1,5}/")

# Access bits (internal; xenstored uses the same idea).
READ = 1
WRITE = 2
OWNER = 4
_ALL = READ | WRITE | OWNER
_KIND_BITS = {"n": 0, "r": READ, "w": WRITE, "b": READ | WRITE}


@dataclass(frozen=True, slots=True)
class Perm:
    """One permission entry: ``kind`` is one of ``n r w b``, ``domid`` a domain."""

    kind: str
    domid: int

    @classmethod
    def parse(cls, text: str) -> Perm:
        """Parse ``"r5"``-style text; raise ``StoreError("EINVAL")`` if malformed."""
        if len(text) < 2 or text[0] not in _KIND_BITS or not text[1:].isdigit():
            raise StoreError("EINVAL", f"bad permission {text!r}")
        domid = int(text[1:])
        if domid > 0xFFFF:
            raise StoreError("EINVAL", f"bad permission {text!r}")
        return cls(text[0], domid)

    def __str__(self) -> str:
        return f"{self.kind}{self.domid}"


Perms = tuple[Perm, ...]


def parse_perms(texts: Iterable[str]) -> Perms:
    """Parse a permission list; it must not be empty."""
    perms = tuple(Perm.parse(t) for t in texts)
    if not perms:
        raise StoreError("EINVAL", "empty permission list")
    return perms


def access_for(domid: int, perms: Perms) -> int:
    """The READ/WRITE/OWNER bits ``domid`` has on a node with ``perms``."""
    if domid == PRIVILEGED_DOMID or perms[0].domid == domid:
        return _ALL
    for perm in perms[1:]:
        if perm.domid == domid:
            return _KIND_BITS[perm.kind]
    return _KIND_BITS[perms[0].kind]


@dataclass(frozen=True, slots=True)
class Quota:
    """Per-domain limits applied to unprivileged clients (xenstored defaults)."""

    max_nodes: int = 1000
    max_value_size: int = 2048
    max_perms: int = 5
    max_watches: int = 128
    max_transactions: int = 10
    max_rel_path: int = REL_PATH_MAX


def home_path(domid: int) -> str:
    """A domain's home directory, against which its relative paths resolve."""
    return f"/local/domain/{domid}"


def is_special(path: str) -> bool:
    """True for watch-only special paths such as ``@releaseDomain``."""
    return path.startswith("@")


def canonicalize(
    path: str, domid: int, *, allow_special: bool = False, quota: Quota | None = None
) -> str:
    """Return the absolute form of ``path`` as seen by ``domid``.

    Raises ``StoreError("EINVAL")`` for empty paths, bad characters, ``//``, a
    trailing ``/`` (except the root), special paths when not allowed, and
    over-long paths.  ``quota`` (unprivileged callers) adds the relative-length
    limit on the part below ``/local/domain/<n>/``.
    """
    if not path or not _VALID_PATH.fullmatch(path):
        raise StoreError("EINVAL", f"bad path {path!r}")
    if is_special(path):
        if not allow_special:
            raise StoreError("EINVAL", f"special path {path!r} not allowed here")
        name = path
    elif path.startswith("/"):
        name = path
    else:
        name = f"{home_path(domid)}/{path}"
    if not is_special(name):
        if (name.endswith("/") and name != "/") or "//" in name:
            raise StoreError("EINVAL", f"bad path {path!r}")
    if len(name) > ABS_PATH_MAX:
        raise StoreError("EINVAL", "path too long")
    if quota is not None:
        home = _HOME_PREFIX.match(name)
        rel = len(name) - (home.end() if home else 0)
        if rel > quota.max_rel_path:
            raise StoreError("EINVAL", "path too long")
    return name


def parent_of(path: str) -> str:
    """The parent of a canonical, non-root path."""
    head = path.rsplit("/", 1)[0]
    return head or "/"


def basename(path: str) -> str:
    """The last component of a canonical, non-root path."""
    return path.rsplit("/", 1)[1]


def child_path(parent: str, name: str) -> str:
    """Join a canonical directory path and a child name."""
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


@dataclass(frozen=True, slots=True)
class Node:
    """An immutable xenstore node."""

    value: bytes
    perms: Perms
    children: tuple[str, ...]
    generation: int

    @property
    def owner(self) -> int:
        return self.perms[0].domid


@dataclass(frozen=True, slots=True)
class Change:
    """A modification, to be matched against watches.

    ``exact`` changes fire only watches on exactly ``path`` (descendants
    deleted by a recursive rm); others fire watches on ``path`` and its
    ancestors.  An unprivileged watcher sees the event only if one of
    ``perm_sets`` (node, old node permissions, parent) grants it read access.
    """

    path: str
    exact: bool
    perm_sets: tuple[Perms, ...]

    def visible_to(self, domid: int) -> bool:
        return any(access_for(domid, perms) & READ for perms in self.perm_sets)


@dataclass(frozen=True)
class NodeRecord:
    """Saved form of one node."""

    VERSION: ClassVar[int] = 1
    path: str
    value: bytes
    perms: tuple[str, ...]
    children: tuple[str, ...]
    generation: int
    version: int = VERSION


@dataclass(frozen=True)
class TreeState:
    """Saved form of a whole tree: every node with perms and generation."""

    VERSION: ClassVar[int] = 1
    nodes: tuple[NodeRecord, ...]
    generation: int
    version: int = VERSION


ROOT_PERMS: Perms = (Perm("n", PRIVILEGED_DOMID),)


class Tree:
    """The node map plus per-owner node counts.

    Every public method takes the *caller* domid (for permission checks and
    quotas) and canonical absolute paths; mutators return the
    :class:`Change` records to fire.  A tree made by :meth:`snapshot` also
    records every path it looks up (``accessed``: path -> generation seen
    first, or None if absent) and every path it stores (``written``).
    """

    def __init__(self, quota: Quota | None = None) -> None:
        self.quota = quota or Quota()
        self._generation = 0
        self._nodes: dict[str, Node] = {"/": Node(b"", ROOT_PERMS, (), 0)}
        self._owned: dict[int, int] = {PRIVILEGED_DOMID: 1}
        self.accessed: dict[str, int | None] | None = None
        self.written: set[str] | None = None

    # -- low level ------------------------------------------------------
    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def _get(self, path: str) -> Node | None:
        node = self._nodes.get(path)
        if self.accessed is not None and path not in self.accessed:
            self.accessed[path] = node.generation if node else None
        return node

    def peek(self, path: str) -> Node | None:
        """The node at ``path`` without permission checks or tracking."""
        return self._nodes.get(path)

    def install(self, path: str, node: Node | None) -> None:
        """Store (or with None delete) a node verbatim, keeping counts right."""
        old = self._nodes.get(path)
        if self.accessed is not None and path not in self.accessed:
            self.accessed[path] = old.generation if old else None
        if old is not None:
            self._owned[old.owner] -= 1
            if not self._owned[old.owner]:
                del self._owned[old.owner]
        if node is None:
            self._nodes.pop(path, None)
        else:
            self._nodes[path] = node
            self._owned[node.owner] = self._owned.get(node.owner, 0) + 1
        if self.written is not None:
            self.written.add(path)

    def restamp(self, path: str) -> None:
        """Give an existing node a fresh generation (used by commit)."""
        node = self._nodes[path]
        self._nodes[path] = replace(node, generation=self._next_generation())

    def owned_count(self, domid: int) -> int:
        return self._owned.get(domid, 0)

    def __len__(self) -> int:
        return len(self._nodes)

    def paths(self) -> Iterator[str]:
        return iter(self._nodes)

    def snapshot(self) -> Tree:
        """A private copy that tracks accesses, for a transaction."""
        view = Tree.__new__(Tree)
        view.quota = self.quota
        view._generation = self._generation
        view._nodes = dict(self._nodes)
        view._owned = dict(self._owned)
        view.accessed = {}
        view.written = set()
        return view

    # -- permission helpers --------------------------------------------
    def _nearest_existing(self, path: str) -> tuple[str, Node]:
        while True:
            path = parent_of(path)
            node = self._get(path)
            if node is not None:
                return path, node

    def _lookup(self, caller: int, path: str, need: int) -> Node:
        node = self._get(path)
        if node is not None:
            if access_for(caller, node.perms) & need != need:
                raise StoreError("EACCES", path)
            return node
        if path != "/":
            _, ancestor = self._nearest_existing(path)
            if not access_for(caller, ancestor.perms) & need:
                raise StoreError("EACCES", path)
        raise StoreError("ENOENT", path)

    def _parent_perms(self, path: str) -> tuple[Perms, ...]:
        if path == "/":
            return ()
        parent = self._nodes.get(parent_of(path))
        return (parent.perms,) if parent else ()

    def _check_perm_count(self, caller: int, perms: Perms) -> None:
        if caller != PRIVILEGED_DOMID and len(perms) > self.quota.max_perms:
            raise StoreError("ENOSPC", "too many permissions")

    # -- queries -------------------------------------------------------
    def read(self, caller: int, path: str) -> bytes:
        return self._lookup(caller, path, READ).value

    def node(self, caller: int, path: str) -> Node:
        """The node itself (read permission needed)."""
        return self._lookup(caller, path, READ)

    def directory(self, caller: int, path: str) -> tuple[str, ...]:
        return self._lookup(caller, path, READ).children

    def get_perms(self, caller: int, path: str) -> Perms:
        return self._lookup(caller, path, READ).perms

    # -- mutators ------------------------------------------------------
    def write(self, caller: int, path: str, value: bytes) -> list[Change]:
        """Set ``path``'s value, creating it and missing parents."""
        if caller != PRIVILEGED_DOMID and len(value) > self.quota.max_value_size:
            raise StoreError("ENOSPC", "value too big")
        try:
            node = self._lookup(caller, path, WRITE)
        except StoreError as err:
            if err.errno_name != "ENOENT":
                raise
            node = self._create(caller, path, value)
        else:
            node = replace(node, value=value, generation=self._next_generation())
            self.install(path, node)
        return [Change(path, False, (node.perms,) + self._parent_perms(path))]

    def mkdir(self, caller: int, path: str) -> list[Change]:
        """Create ``path`` (and parents) with an empty value; existing is fine."""
        try:
            self._lookup(caller, path, WRITE)
            return []
        except StoreError as err:
            if err.errno_name != "ENOENT":
                raise
        node = self._create(caller, path, b"")
        return [Change(path, False, (node.perms,) + self._parent_perms(path))]

    def _create(self, caller: int, path: str, value: bytes) -> Node:
        missing = [path]
        anc_path, ancestor = path, None
        while ancestor is None:
            anc_path = parent_of(anc_path)
            ancestor = self._get(anc_path)
            if ancestor is None:
                missing.append(anc_path)
        if caller != PRIVILEGED_DOMID:
            if self.owned_count(caller) + len(missing) > self.quota.max_nodes:
                raise StoreError("ENOSPC", "too many nodes")
        perms = ancestor.perms
        if caller != PRIVILEGED_DOMID:
            perms = (Perm(perms[0].kind, caller),) + perms[1:]
        parent_path, parent = anc_path, ancestor
        created: Node | None = None
        for new_path in reversed(missing):
            parent = replace(
                parent,
                children=parent.children + (basename(new_path),),
                generation=self._next_generation(),
            )
            self.install(parent_path, parent)
            created = Node(
                value if new_path == path else b"",
                perms,
                (),
                self._next_generation(),
            )
            self.install(new_path, created)
            parent_path, parent = new_path, created
        assert created is not None
        return created

    def rm(self, caller: int, path: str) -> list[Change]:
        """Remove ``path`` and everything below it.

        A missing node whose parent exists is not an error (xenstored).
        """
        if path == "/":
            raise StoreError("EINVAL", "cannot remove the root")
        try:
            self._lookup(caller, path, WRITE)
        except StoreError as err:
            if err.errno_name == "ENOENT" and self._get(parent_of(path)) is not None:
                return []
            raise
        changes: list[Change] = []
        self._remove_subtree(path, path, changes)
        parent_path = parent_of(path)
        parent = self._nodes[parent_path]
        name = basename(path)
        self.install(
            parent_path,
            replace(
                parent,
                children=tuple(c for c in parent.children if c != name),
                generation=self._next_generation(),
            ),
        )
        return changes

    def _remove_subtree(self, root: str, path: str, changes: list[Change]) -> None:
        node = self._nodes[path]
        for child in node.children:
            self._remove_subtree(root, child_path(path, child), changes)
        parent = self._nodes.get(parent_of(path))
        perm_sets = (node.perms,) + ((parent.perms,) if parent else ())
        changes.append(Change(path, path != root, perm_sets))
        self.install(path, None)

    def set_perms(self, caller: int, path: str, perms: Sequence[Perm]) -> list[Change]:
        """Replace ``path``'s permissions; only its owner or dom0 may."""
        perms = tuple(perms)
        if not perms:
            raise StoreError("EINVAL", "empty permission list")
        self._check_perm_count(caller, perms)
        node = self._lookup(caller, path, WRITE | OWNER)
        if caller != PRIVILEGED_DOMID and perms[0].domid != node.owner:
            raise StoreError("EACCES", "a guest may not change a node's owner")
        new = replace(node, perms=perms, generation=self._next_generation())
        self.install(path, new)
        return [Change(path, False, (perms, node.perms) + self._parent_perms(path))]

    # -- save / restore -----------------------------------------------
    def save(self) -> TreeState:
        return TreeState(
            nodes=tuple(
                NodeRecord(
                    path,
                    node.value,
                    tuple(str(p) for p in node.perms),
                    node.children,
                    node.generation,
                )
                for path, node in self._nodes.items()
            ),
            generation=self._generation,
        )

    @classmethod
    def restore(cls, state: TreeState, quota: Quota | None = None) -> Tree:
        """Rebuild a tree; raise :class:`StateError` if it is inconsistent."""
        check_version(state, "xenstore tree")
        tree = cls(quota)
        tree._nodes = {}
        tree._owned = {}
        for rec in state.nodes:
            check_version(rec, f"xenstore node {rec.path}")
            try:
                if canonicalize(rec.path, PRIVILEGED_DOMID) != rec.path:
                    raise StoreError("EINVAL", "not an absolute path")
                perms = parse_perms(rec.perms)
            except StoreError as e:
                raise StateError(f"The saved xenstore node {rec.path!r} is malformed: {e}") from e
            if rec.path in tree._nodes:
                raise StateError(f"The saved xenstore holds node {rec.path} twice.")
            tree.install(rec.path, Node(rec.value, perms, tuple(rec.children), rec.generation))
        if "/" not in tree._nodes:
            raise StateError("The saved xenstore has no root node.")
        for path, node in tree._nodes.items():
            for child in node.children:
                if child_path(path, child) not in tree._nodes:
                    raise StateError(
                        f"The saved xenstore node {path} lists child {child!r}, "
                        f"but {child_path(path, child)} is not saved."
                    )
        tree._generation = max(
            [state.generation] + [n.generation for n in tree._nodes.values()]
        )
        return tree
