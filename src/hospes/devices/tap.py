"""The host end of a virtual network interface: a TAP device, optionally on a bridge.

A vif's TAP is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, so every read
and write carries a virtio-net header in front of the Ethernet frame (the
network backend's framing). ``bridge=`` in a vif specification enslaves the
TAP to an existing Linux bridge, as Xen's vif-bridge script does: the guest
then shares that bridge's segment with the host's other ports. Hospes never
creates bridges: a missing one is a configuration error the user must see.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct

from hospes.errors import HospesError

log = logging.getLogger(__name__)

# --- linux/if_tun.h, sockios.h -----------------------------------------------------------
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCBRADDIF = 0x89A2
SIOCETHTOOL = 0x8946
ETHTOOL_GLINK = 0x0000000A
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFNAMSIZ = 16


class NetError(HospesError):
    """A network interface could not be attached."""


def check_ifname(name: str, what: str) -> None:
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name in (".", "..") \
            or any(c.isspace() for c in name):
        raise NetError(f"{what} name {name!r} is not a valid interface name (1-15 characters, no '/' "
                       "or spaces).")


def tap_in_use(name: str) -> bool:
    """True if a process holds a queue of TAP ``name``: tun has the carrier on exactly while
    one does (asked in this thread's network namespace, which /sys may not show).

    The carrier is read with ETHTOOL_GLINK, which needs no privilege and changes
    the moment the last queue closes. IFF_RUNNING is not: it follows the operational
    state, which the kernel's link watcher updates up to a second later when
    events come close together -- a persistent TAP its owner closed and reopens at
    once (a jailed domain's TAP at build and at every reboot) still looked held."""
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_GLINK, 0), 8)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                fcntl.ioctl(s, SIOCETHTOOL, struct.pack("16sP16x", name.encode(), ctypes.addressof(value)))
                return bool(struct.unpack("II", value.raw)[1])
            except OSError as e:
                if e.errno != errno.EOPNOTSUPP:   # ENODEV: no such interface
                    raise
            # Not a tun device (no ethtool link state): fall back to the interface flags.
            flags = struct.unpack_from("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16s24x", name.encode())))[1]
    except OSError:
        return False   # no such interface
    return bool(flags & IFF_RUNNING)


# TAP name -> a descriptor of it opened before the jail's drop (hand_over_tap).
_handed_taps: dict[str, int] = {}


def hand_over_tap(name: str, fd: int) -> None:
    """Make :func:`open_tap` answer ``name`` with copies of ``fd`` (which this module now owns).

    A jailed domain cannot create a TAP, and reopening one by name fails once
    someone moved it into another network namespace or renamed it (as the
    bench does, right after the TAP appears); a descriptor follows the device."""
    old = _handed_taps.get(name)
    _handed_taps[name] = fd
    if old is not None and old != fd:
        os.close(old)


def take_handed_taps() -> dict[str, int]:
    """The handed-over TAP descriptors, by name, which the caller now owns (to pass on or close)."""
    taps = dict(_handed_taps)
    _handed_taps.clear()
    return taps


def close_handed_taps() -> None:
    """Close the handed-over TAP descriptors (in a process that will not run the domain)."""
    for fd in take_handed_taps().values():
        os.close(fd)


def open_tap(name: str, mtu: int, *, attach: bool = False) -> int:
    """Create TAP device ``name`` (or open a persistent one nobody uses); set its MTU and bring it up.

    Multi-queue, so that a domain migrating between two daemons of one host
    (``attach``) can open its TAP (same name, same bridge) while the source still
    holds its own queue; a TAP with one queue behaves as a single-queue one.
    Without ``attach``, a TAP another process holds is refused, as before.
    A TAP handed over (:func:`hand_over_tap`) is a copy of that descriptor,
    set up already."""
    check_ifname(name, "TAP")
    handed = _handed_taps.get(name)
    if handed is not None:
        return os.dup(handed)
    if not attach and tap_in_use(name):
        raise NetError(f"Cannot create TAP device {name}: another process holds it; pick another name with tap=.")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise NetError(f"Cannot open /dev/net/tun: {e.strerror}; creating a TAP device needs root "
                       "(CAP_NET_ADMIN) and the tun module.") from e
    try:
        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags | IFF_MULTI_QUEUE))
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))  # a persistent 1-queue TAP
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM)
    except OSError as e:
        os.close(fd)
        hint = " (is it in use, or a TUN device?)" if e.errno in (errno.EBUSY, errno.EINVAL) else ""
        raise NetError(f"Cannot create TAP device {name}: {e.strerror}{hint}; pick another name with tap=.") from e
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            # Only what differs: a jailed domain reopens a TAP set up for it, without the privilege.
            now = struct.unpack_from("16si", fcntl.ioctl(s, SIOCGIFMTU, struct.pack("16s24x", name.encode())))[1]
            if now != mtu:
                fcntl.ioctl(s, SIOCSIFMTU, struct.pack("16si20x", name.encode(), mtu))
            flags = struct.unpack_from("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16s24x", name.encode())))[1]
            if not flags & IFF_UP:
                fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))
    except OSError as e:
        log.warning("vif %s: cannot set MTU %d / bring the TAP up: %s", name, mtu, e.strerror)
    return fd


def attach_to_bridge(ifname: str, bridge: str, *, already: bool = False) -> None:
    """Enslave ``ifname`` to the existing Linux bridge ``bridge`` (both in this thread's netns).
    ``already``: the TAP was opened as another queue of one in use (a migration arriving on
    the source's host), which the source put on the bridge: being a bridge port is fine."""
    check_ifname(bridge, "Bridge")
    try:
        index = socket.if_nametoindex(ifname)
    except OSError as e:
        raise NetError(f"Cannot add {ifname} to bridge {bridge}: {ifname} is gone ({e.strerror}).") from e
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s, SIOCBRADDIF, struct.pack("16si20x", bridge.encode(), index))
    except OSError as e:
        if already and e.errno == errno.EBUSY:
            return
        if e.errno == errno.ENODEV:
            why = (f"Bridge {bridge} does not exist; create it first (e.g. `ip link add {bridge} type bridge "
                   f"&& ip link set {bridge} up`) or leave bridge= out to get a TAP on no bridge.")
        elif e.errno == errno.EOPNOTSUPP:
            why = f"{bridge} is not a Linux bridge; bridge= names a bridge device."
        else:
            why = f"Cannot add {ifname} to bridge {bridge}: {e.strerror}."
        raise NetError(why) from e
