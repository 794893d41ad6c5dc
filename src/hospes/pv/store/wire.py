"""The xenstore wire protocol: message framing and the request handler table.

Framing (xs_wire.h ``struct xsd_sockmsg``): a 16-byte little-endian header
``type, req_id, tx_id, len`` followed by ``len`` payload bytes,
``len <= XENSTORE_PAYLOAD_MAX`` (4096).  A reply echoes ``req_id`` and
``tx_id`` and carries the request's type, or ``XS_ERROR`` with the errno name
and a NUL.  Watch events are ``XS_WATCH_EVENT`` with ``req_id = tx_id = 0`` and
payload ``path\\0token\\0``.

Payloads (pv-abi.md §10.2): READ replies carry the value without a NUL;
WRITE requests are ``path\\0value`` with no NUL after the value; DIRECTORY
replies are ``a\\0b\\0``; success acks are ``OK\\0``; TRANSACTION_START replies
the decimal id plus NUL.  Arguments are parsed as xenstored does: a one-path
request must be exactly one NUL-terminated string, multi-string requests
ignore bytes after the last NUL.

Dispatch is a table, :data:`HANDLERS`, mapping each request type to a
handler and whether the header's ``tx_id`` selects a transaction.  Types not
in the table get ``ENOSYS``.  Handlers see the connection through the small
:class:`Session` protocol; their effects on the connection's output are, in
order: events caused by the request (queued by the store as the change
happens), the reply, then any events the handler asks to follow the reply
(the immediate event of XS_WATCH).
"""

from __future__ import annotations

import enum
import logging
import struct
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from .errors import StoreError
from .tree import Change, Quota, Tree, canonicalize, home_path, parse_perms
from .transactions import Transaction, TransactionTable
from .watches import WatchList

log = logging.getLogger(__name__)

#: xs_wire.h XENSTORE_PAYLOAD_MAX.
PAYLOAD_MAX = 4096
HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size  # 16


class XsType(enum.IntEnum):
    """``enum xsd_sockmsg_type`` (xs_wire.h), in order."""

    CONTROL = 0  # a.k.a. XS_DEBUG
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESTRICT = 20  # removed from Xen; kept so the numbering stays visible
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26
    INVALID = 0xFFFF


@dataclass(frozen=True, slots=True)
class Message:
    """One framed message (request, reply or event)."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        return HEADER.pack(self.type, self.req_id, self.tx_id, len(self.payload)) + self.payload

    @classmethod
    def decode(cls, data: bytes) -> Message:
        """Decode exactly one message; raise ``StoreError("EINVAL")`` if malformed."""
        if len(data) < HEADER_SIZE:
            raise StoreError("EINVAL", "short xenstore message")
        type_, req_id, tx_id, length = HEADER.unpack_from(data)
        if length > PAYLOAD_MAX or len(data) != HEADER_SIZE + length:
            raise StoreError("EINVAL", "bad xenstore message length")
        return cls(type_, req_id, tx_id, bytes(data[HEADER_SIZE:]))


def decode_header(data: bytes) -> tuple[int, int, int, int]:
    """``(type, req_id, tx_id, len)`` of a 16-byte header."""
    return HEADER.unpack_from(data)


def error_message(request: Message, errno_name: str) -> Message:
    return Message(XsType.ERROR, request.req_id, request.tx_id, errno_name.encode() + b"\0")


def event_message(path: str, token: str) -> Message:
    payload = path.encode("latin-1") + b"\0" + token.encode("latin-1") + b"\0"
    return Message(XsType.WATCH_EVENT, 0, 0, payload)


class Session(Protocol):
    """What handlers need from a connection (see ``connection.Connection``)."""

    domid: int
    quota: Quota | None
    watches: WatchList
    transactions: TransactionTable

    @property
    def tree(self) -> Tree: ...

    def publish(self, changes: Sequence[Change], tx: Transaction | None) -> None: ...

    def commit(self, tx: Transaction) -> None: ...

    def queue_message(self, message: Message) -> None: ...

    def queue_event(self, path: str, token: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Request:
    """A request being handled: the session, the message, its transaction."""

    session: Session
    message: Message
    tx: Transaction | None

    @property
    def tree(self) -> Tree:
        return self.tx.view if self.tx is not None else self.session.tree

    def path(self, raw: bytes, *, allow_special: bool = False) -> str:
        """Canonical absolute form of a path argument."""
        return canonicalize(
            raw.decode("latin-1"),
            self.session.domid,
            allow_special=allow_special,
            quota=self.session.quota,
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's successful answer plus events that must follow it."""

    payload: bytes
    then: tuple[tuple[str, str], ...] = ()


OK = Reply(b"OK\0")


# -- argument parsing (as xenstored's onearg / get_strings) ----------------
def strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings of ``payload``; trailing bytes are ignored."""
    parts = payload.split(b"\0")
    return parts[:-1]


def onearg(payload: bytes) -> bytes:
    """The single argument of a one-path request, else EINVAL."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        raise StoreError("EINVAL", "expected exactly one argument")
    return payload[:-1]


def _atoi(raw: bytes) -> int:
    """C ``atoi`` for the DIRECTORY_PART offset (garbage parses as 0)."""
    text = raw.decode("latin-1").lstrip()
    sign = -1 if text[:1] == "-" else 1
    text = text[1:] if text[:1] in "+-" else text
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return sign * int(digits) if digits else 0


# -- handlers ---------------------------------------------------------------
def _directory(req: Request) -> Reply:
    children = req.tree.directory(req.session.domid, req.path(onearg(req.message.payload)))
    return Reply(b"".join(c.encode("latin-1") + b"\0" for c in children))


def _read(req: Request) -> Reply:
    return Reply(req.tree.read(req.session.domid, req.path(onearg(req.message.payload))))


def _get_perms(req: Request) -> Reply:
    perms = req.tree.get_perms(req.session.domid, req.path(onearg(req.message.payload)))
    return Reply(b"".join(str(p).encode() + b"\0" for p in perms))


def _watch_args(req: Request) -> tuple[str, str]:
    args = strings(req.message.payload)
    if len(args) < 2:
        raise StoreError("EINVAL", "watch needs a path and a token")
    return args[0].decode("latin-1"), args[1].decode("latin-1")


def _watch(req: Request) -> Reply:
    path, token = _watch_args(req)
    watch = req.session.watches.add(path, token)
    # Every new watch fires once right away (xenstored do_watch; Linux relies on it).
    return Reply(b"OK\0", ((watch.registered_path, watch.token),))


def _unwatch(req: Request) -> Reply:
    path, token = _watch_args(req)
    req.session.watches.remove(path, token)
    return OK


def _transaction_start(req: Request) -> Reply:
    if req.tx is not None:
        raise StoreError("EBUSY", "transaction start inside a transaction")
    tx = req.session.transactions.start(req.session.tree)
    return Reply(str(tx.tx_id).encode() + b"\0")


def _transaction_end(req: Request) -> Reply:
    arg = onearg(req.message.payload)
    if arg not in (b"T", b"F"):
        raise StoreError("EINVAL", "transaction end takes T or F")
    if req.tx is None:
        raise StoreError("ENOENT", "no transaction given")
    tx = req.session.transactions.pop(req.tx.tx_id)
    if arg == b"T":
        req.session.commit(tx)
    return OK


def _get_domain_path(req: Request) -> Reply:
    arg = onearg(req.message.payload)
    if not arg.isdigit() or int(arg) > 0xFFFF:
        raise StoreError("EINVAL", "bad domain id")
    return Reply(home_path(int(arg)).encode() + b"\0")


def _write(req: Request) -> Reply:
    payload = req.message.payload
    if b"\0" not in payload:
        raise StoreError("EINVAL", "write needs path NUL value")
    raw_path, value = payload.split(b"\0", 1)
    changes = req.tree.write(req.session.domid, req.path(raw_path), value)
    req.session.publish(changes, req.tx)
    return OK


def _mkdir(req: Request) -> Reply:
    changes = req.tree.mkdir(req.session.domid, req.path(onearg(req.message.payload)))
    req.session.publish(changes, req.tx)
    return OK


def _rm(req: Request) -> Reply:
    changes = req.tree.rm(req.session.domid, req.path(onearg(req.message.payload)))
    req.session.publish(changes, req.tx)
    return OK


def _set_perms(req: Request) -> Reply:
    args = strings(req.message.payload)
    if len(args) < 2:
        raise StoreError("EINVAL", "set_perms needs a path and permissions")
    perms = parse_perms(a.decode("latin-1") for a in args[1:])
    changes = req.tree.set_perms(req.session.domid, req.path(args[0]), perms)
    req.session.publish(changes, req.tx)
    return OK


def _reset_watches(req: Request) -> Reply:
    req.session.watches.clear()
    req.session.transactions.clear()
    return OK


def _directory_part(req: Request) -> Reply:
    args = strings(req.message.payload)
    if len(args) != 2:
        raise StoreError("EINVAL", "directory_part needs a path and an offset")
    node = req.tree.node(req.session.domid, req.path(args[0]))
    offset = _atoi(args[1])
    gen = str(node.generation).encode() + b"\0"
    blob = b"".join(c.encode("latin-1") + b"\0" for c in node.children)
    if offset < 0 or offset >= len(blob):
        return Reply(gen + b"\0")
    limit = PAYLOAD_MAX - len(gen) - 1
    length = 0
    while True:
        end = blob.find(b"\0", offset + length)
        child_len = end - (offset + length)
        if length + child_len >= limit:
            break
        length += child_len + 1
        if offset + length == len(blob):
            break
    data = gen + blob[offset : offset + length]
    if offset + length == len(blob):
        data += b"\0"
    return Reply(data)


def _control(req: Request) -> Reply:
    if not strings(req.message.payload):
        raise StoreError("EINVAL", "control needs a command")
    raise StoreError("ENOSYS", "xenstore control commands are not supported")


def _is_domain_introduced(req: Request) -> Reply:
    onearg(req.message.payload)
    return Reply(b"T\0")


@dataclass(frozen=True, slots=True)
class HandlerEntry:
    """A row of the dispatch table."""

    name: str
    func: Callable[[Request], Reply]
    uses_tx: bool = True  # False: the header's tx_id is ignored (xenstored XS_FLAG_NOTID)


HANDLERS: dict[int, HandlerEntry] = {
    XsType.CONTROL: HandlerEntry("CONTROL", _control),
    XsType.DIRECTORY: HandlerEntry("DIRECTORY", _directory),
    XsType.READ: HandlerEntry("READ", _read),
    XsType.GET_PERMS: HandlerEntry("GET_PERMS", _get_perms),
    XsType.WATCH: HandlerEntry("WATCH", _watch, uses_tx=False),
    XsType.UNWATCH: HandlerEntry("UNWATCH", _unwatch, uses_tx=False),
    XsType.TRANSACTION_START: HandlerEntry("TRANSACTION_START", _transaction_start),
    XsType.TRANSACTION_END: HandlerEntry("TRANSACTION_END", _transaction_end),
    XsType.GET_DOMAIN_PATH: HandlerEntry("GET_DOMAIN_PATH", _get_domain_path),
    XsType.WRITE: HandlerEntry("WRITE", _write),
    XsType.MKDIR: HandlerEntry("MKDIR", _mkdir),
    XsType.RM: HandlerEntry("RM", _rm),
    XsType.SET_PERMS: HandlerEntry("SET_PERMS", _set_perms),
    XsType.IS_DOMAIN_INTRODUCED: HandlerEntry("IS_DOMAIN_INTRODUCED", _is_domain_introduced),
    XsType.RESET_WATCHES: HandlerEntry("RESET_WATCHES", _reset_watches),
    XsType.DIRECTORY_PART: HandlerEntry("DIRECTORY_PART", _directory_part),
}


def dispatch(session: Session, message: Message) -> None:
    """Handle one request; queue its reply (and events) on ``session``.

    Never raises: store errors become XS_ERROR replies, unexpected
    exceptions are logged and answered with EIO.
    """
    entry = HANDLERS.get(message.type)
    try:
        if entry is None:
            raise StoreError("ENOSYS", f"request type {message.type}")
        tx = None
        if entry.uses_tx and message.tx_id:
            tx = session.transactions.get(message.tx_id)
        reply = entry.func(Request(session, message, tx))
        if len(reply.payload) > PAYLOAD_MAX:
            raise StoreError("E2BIG", "reply too big")
    except StoreError as err:
        session.queue_message(error_message(message, err.errno_name))
        return
    except Exception:  # a bug in the store must not take the domain down
        log.exception("xenstore: request %r from domain %d failed", message, session.domid)
        session.queue_message(error_message(message, "EIO"))
        return
    session.queue_message(Message(message.type, message.req_id, message.tx_id, reply.payload))
    for path, token in reply.then:
        session.queue_event(path, token)
