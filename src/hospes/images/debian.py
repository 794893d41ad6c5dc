"""The default guest images, built from Debian packages and cached.

Debian's cloud kernel runs as a Xen PV domU out of the box, and ``busybox-static``
gives it a userland, so Hospes boots these instead of shipping kernels of its own.
The packages are fetched with ``apt-get download`` (never installed) and unpacked with
``dpkg-deb -x``; the host only needs apt and the Debian bookworm package lists.

Versions are resolved *locally*: ``apt-cache`` reads the package lists on disk, so
deciding that the cache is up to date costs no network. The network is used only to
download missing packages, and to ``apt-get update`` when apt knows nothing about
the kernel or offers a version the mirror no longer has. When apt is unusable but a
complete build is cached, that build is used as is.

Cache layout, under ``<cache>/debian/``::

    debs/<package>_<version>_amd64.deb      downloads, kept so rebuilds are offline
    <kernel release>/vmlinuz                e.g. 6.1.0-56-cloud-amd64/
    <kernel release>/initramfs.cpio         uncompressed newc cpio
    <kernel release>/manifest.json          written last: the build is complete

A build is reused when its manifest names the packages apt resolves to now and the
current ``init.sh``; otherwise it is rebuilt (from ``debs/`` when possible).

Other suites (``suite="trixie"``) live under ``<cache>/debian-<suite>/`` and are
resolved with apt configured by ``APT_CONFIG`` to a private source list and
package lists in ``<cache>/debian-<suite>/apt/``, so the host's apt sources stay
as they are. Their kernel packages may keep the modules under ``usr/lib/modules``
(merged /usr), and busybox under ``usr/bin``; both places are accepted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hospes.images.cache import (BUILD_PREFIX, ImagesError, atomic_directory, cache_lock,
                                 default_cache_dir, read_json, write_file, write_json)
from hospes.images.initramfs import build_initramfs, init_script_digest

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
#: Bump when the contents or layout of a build change in a way init.sh does not show.
FORMAT = 1

KERNEL_FILE = "vmlinuz"
INITRAMFS_FILE = "initramfs.cpio"
MANIFEST_FILE = "manifest.json"
RESOLVED_FILE = "resolved.json"
#: What apt's answer depends on (see resolve()).
APT_STATE = (Path("/var/lib/apt/lists"), Path("/etc/apt"))
#: The suite the host's own apt sources are expected to carry.
HOST_SUITE = "bookworm"
SUITES = ("bookworm", "trixie")
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

Log = Callable[[str], None]


@dataclass(frozen=True)
class DefaultImages:
    """A complete, cached pair of default guest images."""

    kernel: Path
    initramfs: Path
    kernel_version: str  # the kernel release, e.g. "6.1.0-56-cloud-amd64"
    modules: tuple[str, ...]  # modules /init loads, in load order


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    size: int  # bytes of the .deb, for progress messages


@dataclass(frozen=True)
class Selection:
    """The exact packages a build is made of."""

    kernel: Package
    busybox: Package

    @property
    def release(self) -> str:
        return self.kernel.name.removeprefix("linux-image-").removesuffix("-unsigned")


def ensure_default_images(cache_dir: Path | None = None, rebuild: bool = False,
                          log: Log = print, suite: str = HOST_SUITE) -> DefaultImages:
    """Return the default kernel and initramfs, downloading and building them if needed.

    ``rebuild`` forces a new build even when a matching one is cached. Progress goes
    to ``log``; a cache hit logs nothing. Failures raise :class:`ImagesError`.
    ``suite`` other than the host's is resolved with a private apt configuration.
    """
    if suite not in SUITES:
        raise ImagesError(f"Unknown suite {suite!r}: hospes image builds {', '.join(SUITES)}.")
    base = cache_dir if cache_dir is not None else default_cache_dir()
    root = base / ("debian" if suite == HOST_SUITE else f"debian-{suite}")
    with cache_lock(root, log), _suite_apt(suite, root, log):
        selection = resolve(root)
        if selection is None and not rebuild:
            cached = newest_cached(root)
            if cached is not None:
                log(f"apt cannot resolve {KERNEL_META}; using the cached build "
                    f"{cached.kernel_version}")
                return cached
        updated = selection is None
        if selection is None:
            apt_update(log)
            selection = _resolve_or_fail(root)
        if not rebuild:
            cached = load_cached(root / selection.release, selection)
            if cached is not None:
                return cached
        try:
            debs = fetch(selection, root / "debs", log)
        except ImagesError:
            if updated or os.geteuid() != 0:  # nothing to refresh, or no right to
                raise
            log("download failed; refreshing the package lists and retrying")
            apt_update(log)
            selection = _resolve_or_fail(root)
            debs = fetch(selection, root / "debs", log)
        images = build(root, selection, debs, log)
        prune_debs(root / "debs", keep=debs)
        return images


@contextlib.contextmanager
def _suite_apt(suite: str, root: Path, log: Log) -> Iterator[None]:
    """For a suite other than the host's: apt (through ``APT_CONFIG``) reads a private
    source list and keeps its package lists under ``root/apt``, for the ``with`` body."""
    global APT_STATE
    if suite == HOST_SUITE:
        yield
        return
    apt = root / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "status").touch()
    sources = (f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n"
               f"deb [signed-by={KEYRING}] {MIRROR} {suite}-updates main\n"
               f"deb [signed-by={KEYRING}] {MIRROR}-security {suite}-security main\n")
    if not (apt / "sources.list").exists() or (apt / "sources.list").read_text() != sources:
        (apt / "sources.list").write_text(sources)
    (apt / "apt.conf").write_text(
        f'Dir::Etc::SourceList "{apt}/sources.list";\nDir::Etc::SourceParts "{apt}/sources.list.d";\n'
        f'Dir::Etc::Preferences "{apt}/preferences";\nDir::Etc::PreferencesParts "{apt}/preferences.d";\n'
        f'Dir::State::Lists "{apt}/lists";\nDir::State::status "{apt}/status";\n'
        f'Dir::Cache "{apt}/cache";\nAPT::Architecture "amd64";\n')
    saved_env, saved_state = os.environ.get("APT_CONFIG"), APT_STATE
    os.environ["APT_CONFIG"] = str(apt / "apt.conf")
    APT_STATE = (apt / "lists", apt / "sources.list")
    try:
        if not any((apt / "lists").glob("*Packages*")):
            apt_update(log)   # a new suite: nothing to resolve from yet
        yield
    finally:
        APT_STATE = saved_state
        if saved_env is None:
            os.environ.pop("APT_CONFIG", None)
        else:
            os.environ["APT_CONFIG"] = saved_env


# --- resolving versions (local: apt-cache reads the lists on disk) ---------------------


def resolve(root: Path) -> Selection | None:
    """Resolve the packages apt would download now, or None if apt cannot tell.

    Asking apt-cache takes about a second per call, so the answer is remembered in
    ``<root>/resolved.json`` together with a fingerprint of apt's state (package
    lists, sources, preferences); while that is unchanged the answer is reused.
    """
    if not all(shutil.which(tool) for tool in ("apt-cache", "apt-get", "dpkg-deb")):
        return None
    fingerprint = _apt_fingerprint()
    memo = read_json(root / RESOLVED_FILE)
    if memo is not None and memo.get("apt_state") == fingerprint:
        try:
            return Selection(Package(**memo["kernel"]), Package(**memo["busybox"]))
        except (KeyError, TypeError):
            pass
    selection = _ask_apt()
    if selection is not None:
        write_json(root / RESOLVED_FILE, {"apt_state": fingerprint,
                                          "kernel": dataclasses.asdict(selection.kernel),
                                          "busybox": dataclasses.asdict(selection.busybox)})
    return selection


def _ask_apt() -> Selection | None:
    """Resolve with apt-cache; prefer the ``-unsigned`` kernel package.

    Both kernel packages carry the same vmlinuz and modules; the unsigned one has no
    Secure Boot signature appended to the bzImage.
    """
    records = apt_show(KERNEL_META, BUSYBOX)
    meta, busybox = records.get(KERNEL_META), records.get(BUSYBOX)
    if meta is None or busybox is None:
        return None
    match = re.search(r"linux-image-[0-9][^\s,|()]*", meta.get("Depends", ""))
    if match is None:
        raise ImagesError(f"Cannot tell which kernel {KERNEL_META} {meta.get('Version')} "
                          f"depends on (Depends: {meta.get('Depends')!r}).")
    name = match.group(0)
    records = apt_show(name, name + "-unsigned")
    signed, unsigned = records.get(name), records.get(name + "-unsigned")
    chosen = unsigned if unsigned is not None and (
        signed is None or unsigned.get("Version") == signed.get("Version")) else signed
    if chosen is None:
        return None
    return Selection(_package(chosen), _package(busybox))


def _apt_fingerprint() -> str:
    """Changes whenever apt's answer may change: lists, sources or preferences."""
    digest = hashlib.sha256()
    for base in APT_STATE:
        paths = sorted(base.rglob("*")) if base.is_dir() else []
        for path in paths:
            try:
                if "partial" in path.parts or path.name == "lock" or not path.is_file():
                    continue
                st = path.stat()
            except OSError:
                continue
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _resolve_or_fail(root: Path) -> Selection:
    selection = resolve(root)
    if selection is None:
        _require_tools()
        raise ImagesError(f"apt knows no package {KERNEL_META} or {BUSYBOX}, even after "
                          "'apt-get update'. Check the network connection to the Debian "
                          "mirrors and that Debian bookworm (main) is in the apt sources.")
    return selection


def apt_show(*names: str) -> dict[str, dict[str, str]]:
    """The candidate versions' records of the packages ``names`` that apt knows."""
    result = _run(["apt-cache", "show", "--no-all-versions", *names])
    records: dict[str, dict[str, str]] = {}
    for paragraph in result.stdout.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields and "Version" in fields:
            records.setdefault(fields["Package"], fields)
    return records


def _package(fields: dict[str, str]) -> Package:
    size = fields.get("Size", "0")
    return Package(fields["Package"], fields["Version"], int(size) if size.isdigit() else 0)


# --- the network: apt-get update and download ------------------------------------------


def apt_update(log: Log) -> None:
    """Refresh apt's package lists (needs root and the network)."""
    _require_tools()
    if os.geteuid() != 0:
        raise ImagesError("apt's package lists lack the Debian kernel and updating them needs "
                          "root: run 'sudo apt-get update', then retry.")
    log("updating apt package lists (apt-get update)")
    result = _run(["apt-get", "update"])
    if result.returncode != 0:
        raise ImagesError("'apt-get update' failed; check the network connection to the "
                          f"Debian mirrors.\n{_tail(result)}")


def fetch(selection: Selection, debs: Path, log: Log) -> dict[str, Path]:
    """Download the selected packages into ``debs`` unless already there."""
    return {pkg.name: _download(pkg, debs, log) for pkg in (selection.kernel, selection.busybox)}


def _download(pkg: Package, debs: Path, log: Log) -> Path:
    existing = _cached_deb(pkg, debs)
    if existing is not None:
        return existing
    debs.mkdir(parents=True, exist_ok=True)
    log(f"downloading {pkg.name} {pkg.version} ({pkg.size / 1e6:.1f} MB)")
    with tempfile.TemporaryDirectory(prefix=BUILD_PREFIX + "download-", dir=debs.parent) as tmp:
        result = _run(["apt-get", "download", f"{pkg.name}={pkg.version}"], cwd=Path(tmp))
        files = sorted(Path(tmp).glob(f"{pkg.name}_*.deb"))
        if result.returncode != 0 or len(files) != 1:
            raise ImagesError(f"'apt-get download {pkg.name}={pkg.version}' failed; check the "
                              f"network connection to the Debian mirrors.\n{_tail(result)}")
        target = debs / _deb_name(pkg)
        os.replace(files[0], target)  # same filesystem: atomic
    return target


def download(fields: dict[str, str], debs: Path, log: Log) -> Path:
    """The package :func:`apt_show` described, downloaded into ``debs`` unless already there."""
    return _download(_package(fields), debs, log)


def _deb_name(pkg: Package) -> str:
    return f"{pkg.name}_{pkg.version.replace(':', '%3a')}_amd64.deb"


def _cached_deb(pkg: Package, debs: Path) -> Path | None:
    path = debs / _deb_name(pkg)
    return path if path.is_file() and path.stat().st_size > 0 else None


def prune_debs(debs: Path, keep: dict[str, Path]) -> None:
    """Delete superseded downloads of the packages Hospes fetches (old kernels)."""
    kept = set(keep.values())
    for deb in debs.glob("*.deb"):
        if deb not in kept:
            deb.unlink(missing_ok=True)


# --- building and loading a cached build -----------------------------------------------


def build(root: Path, selection: Selection, debs: dict[str, Path], log: Log) -> DefaultImages:
    """Unpack the packages and publish ``<root>/<release>/`` atomically."""
    release = selection.release
    log(f"building images for {release}")
    with tempfile.TemporaryDirectory(prefix=BUILD_PREFIX + "unpack-", dir=root) as tmp:
        kernel_tree, busybox_tree = Path(tmp) / "kernel", Path(tmp) / "busybox"
        unpack(debs[selection.kernel.name], kernel_tree)
        unpack(debs[selection.busybox.name], busybox_tree)
        vmlinuz = kernel_tree / "boot" / f"vmlinuz-{release}"
        # bookworm's packages have /lib/modules and /bin; merged-/usr ones (trixie) /usr/...
        modules_dir = _first_existing(kernel_tree / "lib" / "modules" / release,
                                      kernel_tree / "usr" / "lib" / "modules" / release)
        busybox = _first_existing(busybox_tree / "bin" / "busybox", busybox_tree / "usr" / "bin" / "busybox")
        for path, what in ((vmlinuz, "kernel"), (modules_dir / "kernel", "module tree"),
                           (busybox, "busybox binary")):
            if not path.exists():
                raise ImagesError(f"The package has no {what} at {path.relative_to(tmp)}; "
                                  "apt may have resolved an unexpected package.")
        kernel = vmlinuz.read_bytes()
        if kernel[0x202:0x206] != b"HdrS":
            raise ImagesError(f"{vmlinuz.name} of {selection.kernel.name} is not a bzImage.")
        initramfs = build_initramfs(busybox, modules_dir, release)
        with atomic_directory(root / release) as out:
            write_file(out / KERNEL_FILE, kernel)
            write_file(out / INITRAMFS_FILE, initramfs.data)
            write_json(out / MANIFEST_FILE, _manifest(selection, initramfs.modules,
                                                      len(kernel), len(initramfs.data)))
    log(f"built {root / release}")
    images = load_cached(root / release, selection)
    assert images is not None
    return images


def _first_existing(*paths: Path) -> Path:
    """The first of ``paths`` that exists, else the first (whose absence the caller reports)."""
    return next((p for p in paths if p.exists()), paths[0])


def unpack(deb: Path, dest: Path) -> None:
    """``dpkg-deb -x``: the package's files under ``dest``."""
    result = _run(["dpkg-deb", "-x", str(deb), str(dest)])
    if result.returncode != 0:
        deb.unlink(missing_ok=True)  # most likely a damaged download: fetch it again
        raise ImagesError(f"'dpkg-deb -x {deb.name}' failed; the download was removed, "
                          f"run again.\n{_tail(result)}")


def _manifest(selection: Selection, modules: tuple[str, ...], kernel_size: int,
              initramfs_size: int) -> dict[str, object]:
    return {
        "format": FORMAT,
        "init_sha256": init_script_digest(),
        "kernel_package": selection.kernel.name,
        "kernel_package_version": selection.kernel.version,
        "busybox_package": selection.busybox.name,
        "busybox_package_version": selection.busybox.version,
        "kernel_version": selection.release,
        "modules": list(modules),
        "sizes": {KERNEL_FILE: kernel_size, INITRAMFS_FILE: initramfs_size},
    }


def load_cached(directory: Path, selection: Selection | None) -> DefaultImages | None:
    """Return the build in ``directory`` if it is complete and current, else None.

    With ``selection`` None any package versions are accepted (offline use).
    """
    manifest = read_json(directory / MANIFEST_FILE)
    if manifest is None or manifest.get("format") != FORMAT:
        return None
    if manifest.get("init_sha256") != init_script_digest():
        return None
    if selection is not None and (
            manifest.get("kernel_package") != selection.kernel.name
            or manifest.get("kernel_package_version") != selection.kernel.version
            or manifest.get("busybox_package_version") != selection.busybox.version):
        return None
    sizes = manifest.get("sizes", {})
    for name in (KERNEL_FILE, INITRAMFS_FILE):
        try:
            if (directory / name).stat().st_size != sizes.get(name):
                return None
        except OSError:
            return None
    return DefaultImages(kernel=directory / KERNEL_FILE, initramfs=directory / INITRAMFS_FILE,
                         kernel_version=str(manifest.get("kernel_version")),
                         modules=tuple(manifest.get("modules", ())))


def newest_cached(root: Path) -> DefaultImages | None:
    """The most recently built complete build under ``root``, whatever its versions."""
    builds = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    builds.sort(key=lambda d: _mtime(d / MANIFEST_FILE), reverse=True)
    for directory in builds:
        images = load_cached(directory, None)
        if images is not None:
            return images
    return None


# --- running host tools ----------------------------------------------------------------


def _run(argv: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a host tool with its output captured: the one place this module spawns."""
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    try:
        return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True,
                              check=False)
    except FileNotFoundError as exc:
        _require_tools()
        raise ImagesError(f"Cannot run {argv[0]}: {exc.strerror}.") from exc


def _require_tools() -> None:
    missing = [t for t in ("apt-cache", "apt-get", "dpkg-deb") if shutil.which(t) is None]
    if missing:
        raise ImagesError(f"{', '.join(missing)} not found: Hospes builds its default guest "
                          "images from Debian packages and needs apt and dpkg. Run "
                          "'hospes image' on a Debian host, or copy a built cache directory "
                          "here and pass it with --cache-dir.")


def _tail(result: subprocess.CompletedProcess[str], lines: int = 6) -> str:
    """The part of a tool's output that explains a failure: apt's errors if any."""
    text = [line for line in ((result.stderr or "") + (result.stdout or "")).splitlines()
            if line.strip() and "unsandboxed" not in line]
    errors = [line for line in text if line.startswith(("E:", "Err:"))]
    return "\n".join((errors or text)[-lines:])


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
