"""A bootable Debian disk image: ``hospes image --rootfs``.

The image is one ext4 filesystem over the whole disk (the guest's ``/dev/xvda``),
made in two host steps that need no mounts:

1. ``mmdebstrap`` installs Debian (``minbase`` plus :data:`PACKAGES`: systemd,
   the cloud kernel with its initramfs-tools initrd, openssh-server) into a
   directory, and its customize hook runs ``rootfs-setup.sh`` inside it: fstab,
   hostname, a getty on hvc0 with a password-less root login, the SSH key,
   systemd-networkd on the Xen vif (DHCP plus a fixed address), the Xen frontends
   in the initrd, and ``/boot/grub/grub.cfg`` (kept current by a kernel hook), which
   :mod:`hospes.bootloader` reads to boot it;
2. ``mkfs.ext4 -d`` turns the directory into the filesystem of a sparse image.

Images are cached under ``<cache>/rootfs/<suite>-<key>/`` where the key hashes
everything that decides the contents (suite, size, packages, key, address, the
setup script); the :data:`KEEP_IMAGES` newest are kept. A cached image is the
template: guests should boot a copy (``--output``), since a running guest changes
its disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from hospes.images.cache import (BUILD_PREFIX, ImagesError, atomic_directory, cache_lock,
                                 default_cache_dir, read_json, write_json)
from hospes.images.debian import Log

#: Bump when the image's layout or contents change in a way the script does not show.
FORMAT = 1
SUITES = ("bookworm", "trixie")
DEFAULT_SUITE = "bookworm"
DEFAULT_SIZE = 2 << 30
DEFAULT_HOSTNAME = "debian"
#: The guest's fixed address on its vif (besides DHCP); the host side takes another
#: address of 169.254.0.0/16, e.g. 169.254.99.1/16, on the bridge or TAP.
DEFAULT_ADDRESS = "169.254.99.2/16"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
PACKAGES = ("systemd", "systemd-sysv", "udev", "dbus", "linux-image-cloud-amd64", "initramfs-tools",
            "zstd", "openssh-server", "iproute2", "iputils-ping", "procps", "less")
#: Packages only one suite needs (none so far: both have what PACKAGES names).
SUITE_PACKAGES: dict[str, tuple[str, ...]] = {}
MIN_SIZE = 1 << 30
#: Cached images kept (newest first); older ones are deleted after a build: each holds ~400 MB.
KEEP_IMAGES = 4
IMAGE_FILE = "disk.img"
MANIFEST_FILE = "manifest.json"
_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9]+)?")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}")


@dataclass(frozen=True)
class RootfsOptions:
    """What goes into the image; all of it is part of the cache key."""

    suite: str = DEFAULT_SUITE
    size: int = DEFAULT_SIZE
    packages: tuple[str, ...] = ()
    ssh_key: str = ""          # the authorized_keys line(s) for root
    hostname: str = DEFAULT_HOSTNAME
    address: str = DEFAULT_ADDRESS
    mirror: str = MIRROR

    def check(self) -> None:
        if self.suite not in SUITES:
            raise ImagesError(f"Unknown suite {self.suite!r}: hospes image builds {', '.join(SUITES)}.")
        if self.size < MIN_SIZE:
            raise ImagesError(f"The image size {self.size} is below {MIN_SIZE >> 20} MiB: Debian with a kernel "
                              "needs about 600 MiB, and room to update it.")
        bad = [p for p in self.packages if not _PACKAGE_NAME.fullmatch(p)]
        if bad:
            raise ImagesError(f"Not a Debian package name: {', '.join(bad)}.")
        if not _HOSTNAME.fullmatch(self.hostname):
            raise ImagesError(f"Invalid host name {self.hostname!r}: letters, digits and '-', up to 63.")
        if not _ADDRESS.fullmatch(self.address):
            raise ImagesError(f"Invalid address {self.address!r}: give an IPv4 address with its prefix, "
                              "e.g. 169.254.99.2/16.")
        if any(c in self.ssh_key for c in "\0\r"):
            raise ImagesError("The SSH key file holds NUL or CR characters: give a public key file (.pub).")

    def key(self) -> str:
        text = json.dumps({"format": FORMAT, "options": asdict(self), "script": _script_digest()},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RootfsImage:
    path: Path
    suite: str
    kernel_version: str
    size: int


def ensure_rootfs(options: RootfsOptions, cache_dir: Path | None = None, rebuild: bool = False,
                  log: Log = print) -> RootfsImage:
    """The cached image for ``options``, built first if missing (or ``rebuild``)."""
    options.check()
    root = (cache_dir if cache_dir is not None else default_cache_dir()) / "rootfs"
    directory = root / f"{options.suite}-{options.key()}"
    with cache_lock(root, log):
        if not rebuild:
            cached = load_cached(directory)
            if cached is not None:
                return cached
        _require_tools()
        build(directory, options, log)
        _prune(root, keep=directory)
    image = load_cached(directory)
    assert image is not None
    return image


def copy_image(image: RootfsImage, output: Path, log: Log) -> Path:
    """A sparse copy of the cached image at ``output`` (what a guest should boot)."""
    output = output.absolute()
    if output.exists() and output.is_dir():
        raise ImagesError(f"{output} is a directory; give the image's file name.")
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    log(f"copying the image to {output}")
    result = subprocess.run(["cp", "--sparse=always", str(image.path), str(tmp)], capture_output=True, text=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ImagesError(f"Cannot copy the image to {output}: {result.stderr.strip()}")
    os.replace(tmp, output)
    return output


def load_cached(directory: Path) -> RootfsImage | None:
    manifest = read_json(directory / MANIFEST_FILE)
    if manifest is None or manifest.get("format") != FORMAT:
        return None
    path = directory / IMAGE_FILE
    try:
        if path.stat().st_size != manifest.get("size"):
            return None
    except OSError:
        return None
    return RootfsImage(path, str(manifest.get("suite")), str(manifest.get("kernel_version")), path.stat().st_size)


def build(directory: Path, options: RootfsOptions, log: Log) -> None:
    """mmdebstrap into a directory, then mkfs.ext4 -d into ``directory/disk.img``, published atomically."""
    with tempfile.TemporaryDirectory(prefix=BUILD_PREFIX + "rootfs-", dir=directory.parent) as tmp:
        tree = Path(tmp) / "root"
        script = Path(tmp) / "hospes-setup.sh"
        script.write_text(_setup_script(options))
        t0 = time.monotonic()
        log(f"installing Debian {options.suite} into {tree} with mmdebstrap (about a minute with a fast mirror)")
        _mmdebstrap(options, tree, script, log)
        kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (tree / "boot").glob("vmlinuz-*"))
        if not kernels or not (tree / "boot/grub/grub.cfg").is_file():
            raise ImagesError(f"The installed tree has no kernel or no /boot/grub/grub.cfg (kernels: {kernels}); "
                              "see mmdebstrap's output above.")
        with atomic_directory(directory) as out:
            image = out / IMAGE_FILE
            log(f"making the ext4 filesystem ({options.size >> 20} MiB, sparse) with mkfs.ext4 -d")
            with open(image, "wb") as f:
                f.truncate(options.size)
            _run_checked(["mkfs.ext4", "-q", "-F", "-L", "hospes-root", "-d", str(tree), str(image)], "mkfs.ext4")
            write_json(out / MANIFEST_FILE, {"format": FORMAT, "suite": options.suite, "size": options.size,
                                             "kernel_version": kernels[-1], "options": asdict(options),
                                             "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        log(f"built {directory / IMAGE_FILE} in {time.monotonic() - t0:.0f} s")


def _prune(root: Path, keep: Path) -> None:
    """Delete all but the :data:`KEEP_IMAGES` newest cached images (``keep`` stays in any case)."""
    builds = [d for d in root.iterdir() if d.is_dir() and (d / MANIFEST_FILE).exists() and d != keep]
    builds.sort(key=lambda d: (d / MANIFEST_FILE).stat().st_mtime, reverse=True)
    for old in builds[KEEP_IMAGES - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def _setup_script(options: RootfsOptions) -> str:
    settings = {"HOSPES_HOSTNAME": options.hostname, "HOSPES_ADDRESS": options.address,
                "HOSPES_SSH_KEY": options.ssh_key.strip()}
    header = "".join(f"{name}={shlex.quote(value)}\n" for name, value in settings.items())
    body = _script()
    first, _, rest = body.partition("\n")
    return f"{first}\n{header}{rest}"


def _mmdebstrap(options: RootfsOptions, tree: Path, script: Path, log: Log) -> None:
    packages = PACKAGES + SUITE_PACKAGES.get(options.suite, ()) + options.packages
    sources = [f"deb {options.mirror} {options.suite} main",
               f"deb {options.mirror} {options.suite}-updates main"]
    if options.mirror == MIRROR:
        sources.append(f"deb {SECURITY_MIRROR} {options.suite}-security main")
    argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
            f"--include={','.join(packages)}",
            f"--customize-hook=copy-in {script} /tmp",
            f"--customize-hook=chroot \"$1\" sh /tmp/{script.name}",
            f"--customize-hook=rm -f \"$1/tmp/{script.name}\"",
            options.suite, str(tree), *sources]
    _stream(argv, log, "mmdebstrap")


def _stream(argv: Sequence[str], log: Log, what: str) -> None:
    """Run ``argv``, passing its progress lines to ``log``; ImagesError with its last lines if it fails."""
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    tail: list[str] = []
    try:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                errors="replace")
    except FileNotFoundError as e:
        raise ImagesError(f"Cannot run {argv[0]}: {e.strerror}; run scripts/setup.sh (it installs mmdebstrap "
                          "and e2fsprogs).") from e
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-15:]
        if line.startswith(("I: ", "E: ", "W: ")):
            log(f"  {what}: {line}")
    if proc.wait() != 0:
        raise ImagesError(f"{what} failed (exit status {proc.returncode}):\n" + "\n".join(tail))


def _run_checked(argv: Sequence[str], what: str) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if result.returncode != 0:
        raise ImagesError(f"{what} failed: {(result.stderr or result.stdout).strip()[-2000:]}")


def _require_tools() -> None:
    if os.geteuid() != 0:
        raise ImagesError("Building a root filesystem image needs root (mmdebstrap --mode=root installs "
                          "packages as their owners); run hospes image --rootfs as root.")
    missing = [t for t in ("mmdebstrap", "mkfs.ext4") if shutil.which(t) is None]
    if missing:
        raise ImagesError(f"{', '.join(missing)} not found: install the Debian packages mmdebstrap and "
                          "e2fsprogs (scripts/setup.sh does).")


def _script() -> str:
    return resources.files("hospes.images").joinpath("rootfs-setup.sh").read_text()


def _script_digest() -> str:
    return hashlib.sha256(_script().encode()).hexdigest()


__all__ = ["DEFAULT_ADDRESS", "DEFAULT_SIZE", "DEFAULT_SUITE", "RootfsImage", "RootfsOptions", "SUITES",
           "copy_image", "ensure_rootfs"]
