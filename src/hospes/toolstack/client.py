"""The Python API: ``import hospes; h = hospes.connect()``.

A blocking client of hospesd's HTTP API (docs/openapi.json), over the daemon's
Unix socket (starting the daemon if none runs) or over TCP with a bearer token::

    h = hospes.connect()                                   # $HOSPES_RUN_DIR or /run/hospes
    h = hospes.connect(url="https://10.0.0.5:8086", token="...", ca="hospesd.pem")
    d = h.create("examples/debian-pv.cfg", ["name=web", "memory=256"])
    d.wait_for_console("hospes: userspace up")
    print(d.run("uname -r").output)
    d.shutdown(wait=True)

Every failure is a :class:`HospesApiError` (a HospesError) carrying the HTTP
status and the daemon's message. docs/python-api.md has the guided tour.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Mapping

from hospes.errors import HospesError
from hospes.toolstack.api_error import ApiError
from hospes.toolstack.loopback import is_loopback
from hospes.toolstack.rundir import DAEMON_LOG_ROTATE_BYTES, RunDir, rotate_log
from hospes.toolstack.spec import DomainSpec, parse_mem_size_kb

DEFAULT_TIMEOUT = 900.0
DAEMON_START_TIMEOUT = 20.0


#: The daemon refused a request (``status`` is the HTTP status, 0 if unreachable): the
#: same error type the daemon raises, under the name the Python API has always used.
HospesApiError = ApiError


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


@dataclass(frozen=True)
class CommandResult:
    """What :meth:`Domain.run` returns."""

    exit_status: int
    output: str


def tls_client_context(ca: str | os.PathLike[str] | None = None, verify: bool = True) -> ssl.SSLContext:
    """The client side of an ``https://`` daemon: the system's CAs, or the PEM file ``ca`` (a
    daemon's self-signed certificate works as its own CA); ``verify=False`` checks nothing
    (testing only: anyone in the path can then read the bearer token)."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as e:
        raise HospesError(f"Cannot use the CA file {ca}: {e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Transport:
    """One HTTP request per call; JSON in, JSON (or bytes) out."""

    def __init__(self, socket_path: Path | None = None, url: str | None = None, token: str | None = None,
                 ca: str | os.PathLike[str] | None = None, verify: bool = True) -> None:
        self.socket_path = socket_path
        self.url = urllib.parse.urlsplit(url) if url else None
        self.token = token
        if token and self.url is not None and self.url.scheme != "https" and \
                not is_loopback(self.url.hostname or "localhost"):
            raise HospesError(f"Refusing to send the API token unencrypted to {self.url.hostname}: use an "
                              "https:// address (hospesd --tls-cert/--tls-key), or loopback.")
        self.ssl_context = tls_client_context(ca, verify) if self.url and self.url.scheme == "https" else None

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        if self.url is not None:
            if self.url.scheme == "https":
                return http.client.HTTPSConnection(self.url.hostname or "localhost", self.url.port, timeout=timeout,
                                                   context=self.ssl_context)
            return http.client.HTTPConnection(self.url.hostname or "localhost", self.url.port, timeout=timeout)
        assert self.socket_path is not None
        return _UnixHTTPConnection(str(self.socket_path), timeout)

    def _headers(self, body: Any, accept: str) -> tuple[dict[str, str], bytes | None]:
        headers = {"Accept": accept}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers, data

    def _unreachable(self, e: Exception) -> HospesApiError:
        where = self.url.geturl() if self.url else self.socket_path
        return HospesApiError(0, f"Cannot reach hospesd at {where}: {e}; is it running (`hospes daemon start`)?")

    @staticmethod
    def _refusal(status: int, reason: str, payload: bytes) -> HospesApiError:
        try:
            message = json.loads(payload)["error"]
        except (ValueError, KeyError, TypeError):
            message = payload.decode(errors="replace")[:500] or reason
        return HospesApiError(status, message)

    def request(self, method: str, path: str, body: Any = None, timeout: float = DEFAULT_TIMEOUT,
                raw: bool = False) -> Any:
        headers, data = self._headers(body, "application/json")
        conn = self._conn(timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from e
        finally:
            conn.close()
        if resp.status >= 400:
            raise self._refusal(resp.status, resp.reason, payload)
        if raw:
            return payload
        return json.loads(payload) if payload else None

    def stream(self, method: str, path: str, body: Any = None, timeout: float | None = None
               ) -> Generator[dict[str, Any], None, None]:
        """The JSON lines of an NDJSON answer, as they arrive. Closing the generator (or
        leaving the loop) closes the connection: the daemon takes that as "cancel"."""
        headers, data = self._headers(body, "application/x-ndjson")
        conn = self._conn(timeout if timeout is not None else DEFAULT_TIMEOUT)
        try:
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise self._unreachable(e) from e
            if resp.status >= 400:
                raise self._refusal(resp.status, resp.reason, resp.read())
            if conn.sock is not None:
                conn.sock.settimeout(timeout)   # a migration may go quiet for long; None waits
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise HospesApiError(0, f"The connection to hospesd broke during {path}: {e}") from e
                if not line:
                    return
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError as e:
                        raise HospesApiError(0, f"hospesd sent a malformed line: {line[:200]!r}") from e
        finally:
            conn.close()


class Domain:
    """A handle on one domain (by domid). ``info`` is the last state fetched."""

    def __init__(self, client: "Hospes", info: Mapping[str, Any]) -> None:
        self.client = client
        self.info = dict(info)

    def __repr__(self) -> str:
        return f"<hospes.Domain {self.domid} {self.name!r} {self.state}>"

    @property
    def domid(self) -> int:
        return int(self.info["domid"])

    @property
    def name(self) -> str:
        return str(self.info["name"])

    @property
    def state(self) -> str:
        return str(self.info["state"])

    @property
    def uuid(self) -> str:
        return str(self.info["uuid"])

    def _path(self, suffix: str = "") -> str:
        return f"/v1/domains/{self.domid}{suffix}"

    def refresh(self) -> "Domain":
        self.info = self.client.transport.request("GET", self._path())
        return self

    def pause(self) -> None:
        self.client.transport.request("POST", self._path("/pause"))

    def unpause(self) -> None:
        self.client.transport.request("POST", self._path("/unpause"))

    def shutdown(self, wait: bool = True, timeout: float = 300.0) -> dict[str, Any]:
        """Ask the guest to power off; with ``wait``, return once it stopped (``outcome`` says how)."""
        return self.client.transport.request("POST", self._path("/shutdown"), {"wait": wait, "timeout": timeout},
                                             timeout=timeout + 30)

    def reboot(self, wait: bool = False, timeout: float = 300.0) -> dict[str, Any]:
        return self.client.transport.request("POST", self._path("/reboot"), {"wait": wait, "timeout": timeout},
                                             timeout=timeout + 30)

    def destroy(self) -> None:
        self.client.transport.request("POST", self._path("/destroy"))

    def rename(self, name: str) -> None:
        self.client.transport.request("POST", self._path("/rename"), {"name": name})
        self.info["name"] = name

    def sched(self) -> dict[str, Any]:
        """Weight and cap in force, the cgroup, and what the cap held back (``xl sched-credit -d``)."""
        return dict(self.client.transport.request("GET", self._path("/sched")))

    def set_sched(self, weight: int | None = None, cap: int | None = None) -> dict[str, Any]:
        """Change the weight (relative, default 256) and/or the cap (% of one host CPU, 0 = none)."""
        body = {k: v for k, v in (("weight", weight), ("cap", cap)) if v is not None}
        return dict(self.client.transport.request("PUT", self._path("/sched"), body))

    def set_vcpus(self, count: int) -> dict[str, Any]:
        """Ask the guest to run ``count`` of its vCPUs (``xl vcpu-set``), at most its maxvcpus."""
        return dict(self.client.transport.request("PUT", self._path("/vcpus"), {"vcpus": count}))

    def set_memory(self, size: int | str) -> dict[str, Any]:
        """Set the memory the guest should hold (``xl mem-set``): ``size`` in MiB, or
        a string in xl's syntax (``"256m"``, ``"1g"``, ``"131072k"``; no suffix: MiB).
        Its balloon driver follows; :meth:`info`'s ``memory_mib`` shows where it is."""
        target_kib = parse_mem_size_kb(size) if isinstance(size, str) else int(size) * 1024
        return dict(self.client.transport.request("PUT", self._path("/memory"), {"target_kib": target_kib}))

    def vcpus(self) -> list[dict[str, Any]]:
        return list(self.client.transport.request("GET", self._path("/vcpus"))["vcpus"])

    def console_log(self, tail: int | None = None, offset: int | None = None) -> str:
        """The console output so far (all of it, from ``offset``, or the last ``tail`` bytes)."""
        return self.console_log_bytes(tail, offset).decode(errors="replace")

    def console_log_bytes(self, tail: int | None = None, offset: int | None = None) -> bytes:
        q = {k: v for k, v in (("tail", tail), ("offset", offset)) if v is not None}
        path = self._path("/console/log") + (f"?{urllib.parse.urlencode(q)}" if q else "")
        return self.client.transport.request("GET", path, raw=True)

    def wait_for_console(self, text: str, timeout: float = 300.0, interval: float = 0.5) -> str:
        """Poll the console log until it contains ``text``; return the log. HospesError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.console_log()
            if text in out:
                return out
            if time.monotonic() > deadline:
                raise HospesError(f"{text!r} did not appear on the console of {self.name} within {timeout:.0f} s.")
            time.sleep(interval)

    def save(self, path: str | os.PathLike[str], checkpoint: bool = False, compress: bool = False) -> dict[str, Any]:
        """Save the domain to ``path`` (on the daemon's host; made absolute here). Without
        ``checkpoint`` the domain is gone afterwards (xl save), with it it runs on (xl save -c).
        Returns ``path``, ``bytes``, ``pages`` and ``seconds``."""
        body = {"path": str(Path(path).absolute()), "checkpoint": checkpoint, "compress": compress}
        return dict(self.client.transport.request("POST", self._path("/save"), body))

    def migrate(self, dest: str, live: bool = True, verify: bool = False, compress: bool = False,
                max_rounds: int | None = None, max_bandwidth: int | None = None,
                progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Migrate to ``dest`` (``[USER@]HOST``, ``tcp://HOST:PORT`` or ``unix:PATH``) and return
        the result (``downtime_ms``, ``total_s``, ``rounds``, ``pages_sent``, ``per_round``,
        ``verify``); ``progress`` gets each progress event. ``max_bandwidth`` is bytes per second.
        A failure raises HospesApiError (409) and the domain runs on here; so does an
        interruption (KeyboardInterrupt closes the connection, which cancels the migration)."""
        body = {"dest": dest, "live": live, "verify": verify, "compress": compress,
                "max_rounds": max_rounds, "max_bandwidth": max_bandwidth}
        lines = self.client.transport.stream("POST", self._path("/migrate"), body)
        try:
            for line in lines:
                event = line.get("event")
                if event == "result":
                    return {k: v for k, v in line.items() if k != "event"}
                if event == "error":
                    raise HospesApiError(409, str(line.get("error")))
                if progress is not None:
                    progress(line)
        finally:
            lines.close()
        raise HospesApiError(0, f"hospesd ended the migration of {self.name} without a result; "
                                "`hospes list` shows where the domain is.")

    def cancel_migration(self) -> None:
        """Cancel this domain's migration (it keeps running here); HospesApiError 409 if none runs."""
        self.client.transport.request("POST", self._path("/migrate/cancel"))

    def wait_incoming(self, timeout: float = 600.0) -> "Domain":
        """For a domain from :meth:`Hospes.incoming`: wait until the stream has arrived and it
        runs; returns it, refreshed. HospesApiError 409 with the reason if the migration failed
        (the domain is gone then), 504 after ``timeout``."""
        self.info = self.client.transport.request("POST", self._path("/incoming/wait"), {"timeout": timeout},
                                                  timeout=timeout + 30)
        return self

    def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        """Run ``command`` with the guest's console shell; see hospes.toolstack.console_run."""
        r = self.client.transport.request("POST", self._path("/run"), {"command": command, "timeout": timeout},
                                          timeout=timeout + 30)
        return CommandResult(int(r["exit_status"]), str(r["output"]))


class Hospes:
    """A connection to one hospesd. Cheap: every call is its own HTTP request."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def version(self) -> dict[str, Any]:
        return self.transport.request("GET", "/v1/version", timeout=10)

    def host(self) -> dict[str, Any]:
        return self.transport.request("GET", "/v1/host")

    def domains(self) -> list[Domain]:
        return [Domain(self, d) for d in self.transport.request("GET", "/v1/domains")["domains"]]

    def domain(self, name_or_id: str | int) -> Domain:
        ident = urllib.parse.quote(str(name_or_id), safe="")
        return Domain(self, self.transport.request("GET", f"/v1/domains/{ident}"))

    def create(self, config: str | os.PathLike[str] | Mapping[str, Any] | DomainSpec, overrides: Iterable[str] = (),
               paused: bool = False) -> Domain:
        """Create a domain from an xl config file (parsed here, so relative paths are yours),
        a spec dict, or a DomainSpec; ``overrides`` are ``key=value`` lines applied on top."""
        spec = self.load_config(config, overrides)
        info = self.transport.request("POST", "/v1/domains", {"spec": spec.to_dict(), "paused": paused})
        return Domain(self, info)

    def restore(self, path: str | os.PathLike[str], overrides: Iterable[str] = (), paused: bool = False) -> Domain:
        """Restore a domain from a save file (``path`` made absolute here; it is read on the
        daemon's host). ``overrides`` are ``KEY=VALUE`` settings applied to the saved configuration."""
        body = {"path": str(Path(path).absolute()), "overrides": list(overrides), "paused": paused}
        return Domain(self, self.transport.request("POST", "/v1/domains/restore", body))

    def incoming(self, listen: str, paused: bool = False, name: str | None = None) -> Domain:
        """A domain that receives one migration at ``listen`` (``tcp://HOST:PORT`` or
        ``unix:/path``); returns once it listens (state ``incoming``). ``Domain.wait_incoming``
        waits for the rest."""
        reply = self.transport.request("POST", "/v1/domains/incoming",
                                       {"listen": listen, "paused": paused, "name": name})
        return self.domain(int(reply["domid"]))

    @staticmethod
    def load_config(config: str | os.PathLike[str] | Mapping[str, Any] | DomainSpec,
                    overrides: Iterable[str] = ()) -> DomainSpec:
        """The typed spec of a config path, a spec dict or a DomainSpec, its kernel and
        ramdisk made absolute (the daemon resolves paths from /)."""
        from hospes.toolstack.spec import DEFAULT_IMAGE, load_spec

        overrides = list(overrides)
        if isinstance(config, (str, os.PathLike)):
            spec = load_spec(Path(config), overrides)
        elif isinstance(config, Mapping):
            spec = DomainSpec.from_dict(dict(config))
            if overrides:
                raise HospesError("Overrides apply to config files only; edit the spec dict instead.")
        else:
            spec = config

        def absolute(path: str) -> str:
            return path if path == DEFAULT_IMAGE else str(Path(path).absolute())

        if spec.bootloader is not None:   # kernel and ramdisk are paths inside the guest's disk
            return spec
        return replace(spec, kernel=absolute(spec.kernel),
                       ramdisk=None if spec.ramdisk is None else absolute(spec.ramdisk))

    @staticmethod
    def parse_config(config: str | os.PathLike[str] | Mapping[str, Any] | DomainSpec,
                     overrides: Iterable[str] = ()) -> dict[str, Any]:
        """The spec dict the API takes (``load_config``'s spec as JSON data)."""
        return Hospes.load_config(config, overrides).to_dict()


def start_daemon(run: RunDir, timeout: float = DAEMON_START_TIMEOUT) -> None:
    """Start hospesd in the background on ``run`` and wait until it answers."""
    run.ensure()
    rotate_log(run.daemon_log, DAEMON_LOG_ROTATE_BYTES)
    log = open(run.daemon_log, "ab")
    try:
        subprocess.Popen(
            [sys.executable, "-m", "hospes.toolstack.daemon", "--run-dir", str(run.root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
        )
    finally:
        log.close()
    probe = Transport(socket_path=run.api_socket)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            probe.request("GET", "/v1/version", timeout=2)
            return
        except HospesApiError:
            time.sleep(0.1)
    raise HospesError(f"hospesd did not start within {timeout:.0f} s; see {run.daemon_log}.")


def connect(run_dir: str | os.PathLike[str] | None = None, *, url: str | None = None, token: str | None = None,
            autostart: bool = True, ca: str | os.PathLike[str] | None = None, verify: bool = True) -> Hospes:
    """A client of hospesd: over ``url`` (TCP, with ``token``), else the Unix socket of
    ``run_dir`` (default ``$HOSPES_RUN_DIR`` or /run/hospes), starting the daemon there
    if it is not running and ``autostart``. An ``https://`` url is checked against the
    system's CAs or the PEM file ``ca`` (default ``$HOSPES_CA``); ``verify=False`` skips that."""
    if url is not None:
        return Hospes(Transport(url=url, token=token or os.environ.get("HOSPES_API_TOKEN"),
                                ca=ca or os.environ.get("HOSPES_CA") or None, verify=verify))
    run = RunDir(Path(run_dir).absolute()) if run_dir is not None else RunDir.default()
    client = Hospes(Transport(socket_path=run.api_socket))
    try:
        client.version()
    except HospesApiError as e:
        if e.status != 0 or not autostart:
            raise
        start_daemon(run)
    return client
