"""Save, restore, incoming and migrate through hospesd, without the engine (no KVM needed).

Requests are checked against records whose process does not exist, and the
migration relay runs against a fake domain process: a real process (``sleep``)
for liveness plus a control socket served by this test, which answers
``migrate`` as the contract in hospes.toolstack.control says the engine will.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from hospes.migrate.stream import StreamWriter
from hospes.toolstack.apispec import SCHEMAS
from hospes.toolstack.client import HospesApiError
from hospes.toolstack.lifecycle import DomainState
from hospes.toolstack.record import DomainRecord, process_start_time, remove_quietly, write_record
from hospes.toolstack.schema import validate
from hospes.toolstack.spec import DomainSpec
from toolstack_helpers import Hospesd
from waiting import wait_for

SPEC = {"format": 1, "name": "x", "kernel": "/nonexistent/vmlinuz", "memory": 128, "maxmem": 128, "vcpus": 1}
RESULT = {"downtime_ms": 12.345, "total_s": 1.5, "rounds": 3, "pages_sent": 40000, "bytes_sent": 163840000,
          "per_round": [{"round": 1, "pages": 32768, "dirty": 6000, "seconds": 1.0},
                        {"round": 2, "pages": 6000, "dirty": 1232, "seconds": 0.4},
                        {"round": 3, "pages": 1232, "dirty": 0, "seconds": 0.1}],
          "verify": None}
PROGRESS = [{"event": "progress", "round": 1, "pages_sent": 32768, "round_pages": 32768, "dirty_pages": 6000,
             "dirty_rate": 6000.0, "remaining_pages": 6000, "elapsed": 1.0},
            {"event": "progress", "round": 2, "pages_sent": 38768, "round_pages": 6000, "dirty_pages": 1232,
             "dirty_rate": 3080.0, "remaining_pages": 1232, "elapsed": 1.4}]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospesd]:
    d = Hospesd(tmp_path_factory.mktemp("migapi"))
    try:
        d.start()
        yield d
    finally:
        d.close()


def record(d: Hospesd, domid: int, name: str, state: str = "running", pid: int | None = None,
           **extra: Any) -> None:
    write_record(d.run_dir / "domains" / f"{domid}.json",
                 DomainRecord(domid, name, f"00000000-0000-4000-8000-{domid:012d}",
                              DomainSpec.from_dict({**SPEC, "name": name}), state=DomainState(state), pid=pid,
                              pid_start=process_start_time(pid) if pid else None,
                              console_log=str(d.run_dir / "logs" / f"console-{domid}.log"), **extra))


def save_file(path: Path, domain: dict[str, Any], memory_bytes: int = 1 << 20) -> bytes:
    buf = io.BytesIO()
    w = StreamWriter(buf, features=("pv64",))
    w.config({"domain": domain, "memory_bytes": memory_bytes})
    w.pages(range(4), bytes(4 * 4096))
    w.state({"vcpus": []})
    w.end()
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


# --- validation -------------------------------------------------------------------------------


def test_save_refuses_bad_paths_unknown_and_dead_domains(daemon: Hospesd, tmp_path: Path) -> None:
    record(daemon, 10, "dead-save")
    cases = [("dead-save", {"path": "relative/file.save"}, 400, "absolute"),
             ("dead-save", {"path": str(tmp_path / "no-such-dir" / "f.save")}, 400, "does not exist"),
             ("dead-save", {"path": str(tmp_path)}, 400, "is a directory"),
             ("dead-save", {"path": "/x", "bogus": 1}, 400, "bogus"),
             ("ghost", {"path": str(tmp_path / "f.save")}, 404, "does not exist"),
             ("dead-save", {"path": str(tmp_path / "f.save")}, 409, "crashed")]
    for ident, body, status, text in cases:
        got, err = daemon.json("POST", f"/v1/domains/{ident}/save", body)
        assert (got, text in err["error"]) == (status, True), (body, err)
    assert not (tmp_path / "f.save").exists()
    daemon.json("POST", "/v1/domains/10/destroy")


@pytest.mark.parametrize("listen, text", [
    ("tcp://host", "not one to listen at"),
    ("tcp://host:0", "between 1 and 65535"),
    ("tcp://host:65536", "between 1 and 65535"),
    ("tcp://-oProxy:22", "not one to listen at"),
    ("http://host:80", "not one to listen at"),
    ("unix:relative.sock", "must be absolute"),
    ("unix:/nonexistent-dir-hospes/x.sock", "does not exist"),
])
def test_incoming_refuses_bad_addresses(daemon: Hospesd, listen: str, text: str) -> None:
    status, err = daemon.json("POST", "/v1/domains/incoming", {"listen": listen})
    assert status == 400 and text in err["error"], err
    assert daemon.json("GET", "/v1/domains")[1]["domains"] == [] or all(
        d["state"] != "incoming" for d in daemon.json("GET", "/v1/domains")[1]["domains"])


def test_incoming_refuses_a_taken_name(daemon: Hospesd, tmp_path: Path) -> None:
    record(daemon, 11, "taken-in")
    status, err = daemon.json("POST", "/v1/domains/incoming", {"listen": f"unix:{tmp_path}/in.sock",
                                                               "name": "taken-in"})
    assert status == 409 and "already exists" in err["error"]
    daemon.json("POST", "/v1/domains/11/destroy")


@pytest.mark.parametrize("dest, status, text", [
    ("-oProxyCommand=sh", 400, "not one to migrate to"),
    ("user@host name", 400, "not one to migrate to"),
    ("tcp://h:99999", 400, "between 1 and 65535"),
    ("unix:rel", 400, "absolute"),
    ("otherhost", 409, "crashed"),
    ("root@otherhost", 409, "crashed"),
    ("tcp://[::1]:8002", 409, "crashed"),
])
def test_migrate_checks_destination_then_state(daemon: Hospesd, dest: str, status: int, text: str) -> None:
    record(daemon, 12, "dead-mig")
    got, err = daemon.json("POST", "/v1/domains/dead-mig/migrate", {"dest": dest})
    assert got == status and text in err["error"], err
    assert daemon.json("POST", "/v1/domains/ghost/migrate", {"dest": "otherhost"})[0] == 404
    assert daemon.json("POST", "/v1/domains/dead-mig/migrate/cancel")[0] == 409
    assert daemon.json("POST", "/v1/domains/ghost/migrate/cancel")[0] == 404
    daemon.json("POST", "/v1/domains/12/destroy")


def test_restore_refuses_bad_files(daemon: Hospesd, tmp_path: Path) -> None:
    whole = save_file(tmp_path / "whole.save", {**SPEC, "name": "restored"})
    config_at = 16 + struct.unpack_from("<Q", whole, 8)[0] + 4         # past the HEADER record
    (tmp_path / "cut.save").write_bytes(whole[:config_at + 30])        # inside the CONFIG record
    damaged = bytearray(whole)
    damaged[config_at + 20] ^= 0xFF
    (tmp_path / "damaged.save").write_bytes(bytes(damaged))
    (tmp_path / "junk.save").write_bytes(b"not a stream at all, just text\n" * 4)
    cases = [({"path": "whole.save"}, "absolute"),
             ({"path": str(tmp_path / "missing.save")}, "does not exist"),
             ({"path": str(tmp_path / "cut.save")}, "ends inside record 1 (CONFIG)"),
             ({"path": str(tmp_path / "damaged.save")}, "Record 1 (CONFIG) fails its checksum"),
             ({"path": str(tmp_path / "junk.save")}, "not a usable save file"),
             ({"path": str(tmp_path / "whole.save"), "overrides": ["memory=512"]}, "cannot change on restore"),
             ({"path": str(tmp_path / "whole.save"), "overrides": ['name="unterminated']}, "Unterminated"),
             ({"path": str(tmp_path / "whole.save"), "overrides": ["name=\"a\"", "x = ["]}, "command line")]
    for body, text in cases:
        status, err = daemon.json("POST", "/v1/domains/restore", body)
        assert status == 400 and text in err["error"], (body, err)
        assert err["error"][:1].isupper()
    save_file(tmp_path / "badspec.save", {"format": 99, "name": "n"})
    status, err = daemon.json("POST", "/v1/domains/restore", {"path": str(tmp_path / "badspec.save")})
    assert status == 400 and "configuration in the save file" in err["error"], err


def test_restore_checks_name_and_memory_like_create(daemon: Hospesd, tmp_path: Path) -> None:
    record(daemon, 13, "already-here")
    save_file(tmp_path / "dup.save", {**SPEC, "name": "already-here"})
    status, err = daemon.json("POST", "/v1/domains/restore", {"path": str(tmp_path / "dup.save")})
    assert status == 409 and "already exists" in err["error"]
    save_file(tmp_path / "huge.save", {**SPEC, "name": "huge"}, memory_bytes=1 << 40)
    status, err = daemon.json("POST", "/v1/domains/restore", {"path": str(tmp_path / "huge.save")})
    assert status == 409 and "Not enough host memory for huge: it needs" in err["error"], err
    assert "(1048576 MiB + " in err["error"] and "overcommit 1" in err["error"], err
    # The same file under another name (an override) gets past the name check.
    status, err = daemon.json("POST", "/v1/domains/restore", {"path": str(tmp_path / "dup.save"),
                                                              "overrides": ['name="other"', "memory=128"]})
    assert status == 400 and "memory" in err["error"]
    assert [d["name"] for d in daemon.json("GET", "/v1/domains")[1]["domains"]] == ["already-here"]
    daemon.json("POST", "/v1/domains/13/destroy")


def test_wait_incoming_of_unknown_or_running_domains(daemon: Hospesd) -> None:
    assert daemon.json("POST", "/v1/domains/424242/incoming/wait", {"timeout": 1})[0] == 404
    record(daemon, 14, "not-incoming")
    status, err = daemon.json("POST", "/v1/domains/14/incoming/wait", {"timeout": 1})
    assert status == 409 and "crashed" in err["error"]
    daemon.json("POST", "/v1/domains/14/destroy")


# --- a fake domain process --------------------------------------------------------------------


class FakeDomainProcess:
    """A live pid (``sleep``) and a control socket answering like the engine would.

    ``migrate`` runs ``script(writer, request)``; the server notes every request
    and whether the client closed the connection before the final line.
    """

    def __init__(self, d: Hospesd, domid: int, name: str, state: str = "running") -> None:
        self.d, self.domid = d, domid
        self.sleeper = subprocess.Popen(["sleep", "600"])
        self.requests: list[dict[str, Any]] = []
        self.closed_early = threading.Event()
        self.script: Callable[..., Any] = self.succeed
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.sock = d.run_dir / "domains" / f"{domid}.sock"
        record(d, domid, name, state, pid=self.sleeper.pid)
        self.thread.start()
        assert self.ready.wait(5)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_unix_server(self._client, str(self.sock)))
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if not line:
            writer.close()
            return
        req = json.loads(line)
        self.requests.append(req)
        if req["op"] == "status":
            reply: dict[str, Any] = {"ok": True, "state": "running", "vcpus": []}
        elif req["op"] == "migrate":
            await self.script(reader, writer, req)
            writer.close()
            return
        elif req["op"] == "migrate_cancel":
            reply = {"ok": True}
        else:
            reply = {"ok": False, "error": f"Unknown op {req['op']}"}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        writer.close()

    async def succeed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict) -> None:
        for event in PROGRESS:
            writer.write(json.dumps(event).encode() + b"\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(json.dumps({"ok": True, "result": RESULT}).encode() + b"\n")
        await writer.drain()
        self.exit()   # as the engine: the domain is over there now

    async def fail(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict) -> None:
        writer.write(json.dumps(PROGRESS[0]).encode() + b"\n")
        writer.write(json.dumps({"ok": False, "error": "The destination refused the stream."}).encode() + b"\n")
        await writer.drain()

    async def hang(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict) -> None:
        writer.write(json.dumps(PROGRESS[0]).encode() + b"\n")
        await writer.drain()
        if await reader.read(1) == b"":   # nothing more comes from the daemon: EOF is the cancel
            self.closed_early.set()

    def exit(self) -> None:
        remove_quietly(self.d.run_dir / "domains" / f"{self.domid}.json", self.sock)
        self.sleeper.kill()
        self.sleeper.wait()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if self.sleeper.poll() is None:
            self.sleeper.kill()
            self.sleeper.wait()
        self.d.json("POST", f"/v1/domains/{self.domid}/destroy")


DOMIDS = itertools.count(100)


@pytest.fixture
def fake(daemon: Hospesd) -> Iterator[FakeDomainProcess]:
    domid = next(DOMIDS)
    f = FakeDomainProcess(daemon, domid, f"mig-{domid}")
    try:
        yield f
    finally:
        f.close()


def ndjson(daemon: Hospesd, path: str, body: dict, accept: bool = True) -> tuple[int, list[dict[str, Any]]]:
    headers = {"Content-Type": "application/json", **({"Accept": "application/x-ndjson"} if accept else {})}
    status, hdrs, data = daemon.request("POST", path, json.dumps(body).encode(), headers)
    if status != 200:
        return status, [json.loads(data)]
    assert hdrs["Content-Type"].startswith("application/x-ndjson")
    return status, [json.loads(line) for line in data.splitlines()]


def test_migrate_streams_progress_then_the_result(daemon: Hospesd, fake: FakeDomainProcess) -> None:
    status, lines = ndjson(daemon, f"/v1/domains/{fake.domid}/migrate",
                           {"dest": "tcp://10.0.0.2:8002", "max_bandwidth": 104857600, "live": False})
    assert status == 200
    assert lines[:2] == PROGRESS
    assert lines[2] == {"event": "result", "domid": fake.domid, "dest": "tcp://10.0.0.2:8002", **RESULT}
    assert len(lines) == 3
    assert validate(lines[2], {"$ref": "#/components/schemas/MigrateEvent"}, SCHEMAS) == []
    req = [r for r in fake.requests if r["op"] == "migrate"][0]
    assert req == {"op": "migrate", "dest": "tcp://10.0.0.2:8002", "live": False, "verify": False,
                   "compress": False, "max_rounds": None, "max_bandwidth": 104857600}
    assert daemon.json("GET", f"/v1/domains/{fake.domid}")[0] == 404, "a migrated domain is forgotten here"


def test_migrate_query_flag_streams_too_and_plain_json_without(daemon: Hospesd, tmp_path: Path) -> None:
    f = FakeDomainProcess(daemon, 160, "mig-query")
    try:
        status, lines = ndjson(daemon, "/v1/domains/160/migrate?stream=true", {"dest": "h"}, accept=False)
        assert status == 200 and [line["event"] for line in lines] == ["progress", "progress", "result"]
    finally:
        f.close()
    f = FakeDomainProcess(daemon, 161, "mig-plain")
    try:
        status, body = daemon.json("POST", "/v1/domains/161/migrate", {"dest": "user@h", "verify": True})
        assert status == 200 and body == {"domid": 161, "dest": "user@h", **RESULT}
        assert validate(body, {"$ref": "#/components/schemas/MigrateResult"}, SCHEMAS) == []
    finally:
        f.close()


def test_a_failed_migration_leaves_the_domain(daemon: Hospesd, fake: FakeDomainProcess) -> None:
    fake.script = fake.fail
    status, lines = ndjson(daemon, f"/v1/domains/{fake.domid}/migrate", {"dest": "h"})
    assert status == 200
    assert lines[0] == PROGRESS[0]
    assert lines[1]["event"] == "error" and "The destination refused the stream." in lines[1]["error"]
    status, err = daemon.json("POST", f"/v1/domains/{fake.domid}/migrate", {"dest": "h"})
    assert status == 409 and "refused the stream" in err["error"]
    assert daemon.json("GET", f"/v1/domains/{fake.domid}")[1]["state"] == "running"


def test_client_disconnect_cancels_the_migration(daemon: Hospesd, fake: FakeDomainProcess) -> None:
    fake.script = fake.hang
    lines = daemon.client().transport.stream("POST", f"/v1/domains/{fake.domid}/migrate", {"dest": "h"})
    assert next(lines) == PROGRESS[0]
    lines.close()                                   # the client goes away mid-stream
    assert fake.closed_early.wait(10), "the daemon did not close the control connection"
    assert daemon.json("GET", f"/v1/domains/{fake.domid}")[1]["state"] == "running"
    # Not busy any more: another migration may start.
    fake.script = fake.fail
    assert daemon.json("POST", f"/v1/domains/{fake.domid}/migrate", {"dest": "h"})[0] == 409
    assert "Traceback" not in daemon.log()


def test_cancel_endpoint_and_python_api(daemon: Hospesd, fake: FakeDomainProcess) -> None:
    fake.script = fake.hang
    dom = daemon.client().domain(fake.domid)
    seen: list[dict[str, Any]] = []
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            dom.migrate("h", progress=seen.append)
        except HospesApiError as e:
            outcome.append(e)

    t = threading.Thread(target=run)
    t.start()
    assert wait_for(lambda: seen, 10)
    status, _ = daemon.json("POST", f"/v1/domains/{fake.domid}/migrate", {"dest": "h"})
    assert status == 409, "one migration at a time"
    dom.cancel_migration()
    t.join(10)
    assert outcome and "cancelled" in str(outcome[0])
    assert {"op": "migrate_cancel"} in fake.requests
    assert fake.closed_early.wait(10)
    fake.script = fake.succeed
    result = dom.migrate("tcp://10.0.0.9:4000", progress=seen.append)
    assert result == {"domid": fake.domid, "dest": "tcp://10.0.0.9:4000", **RESULT}
    assert seen[1:] == PROGRESS


def test_incoming_domain_is_listed_paused_without_memory(daemon: Hospesd) -> None:
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        record(daemon, 170, "arriving", state="incoming", pid=sleeper.pid, incoming="tcp://0.0.0.0:8002")
        body = daemon.json("GET", "/v1/domains/arriving")[1]
        assert (body["state"], body["flags"], body["memory_mib"]) == ("incoming", "--p---", 0)
        status, err = daemon.json("POST", "/v1/domains/arriving/pause")
        assert status == 409 and "incoming" in err["error"]
        status, err = daemon.json("POST", "/v1/domains/arriving/save", {"path": "/tmp/x.save"})
        assert status == 409 and "incoming" in err["error"]
        status, err = daemon.json("POST", "/v1/domains/170/incoming/wait", {"timeout": 0.3})
        assert status == 504 and "still waiting" in err["error"]
        r = daemon.cli("list")
        assert r.returncode == 0
        line = [row for row in r.stdout.decode().splitlines() if row.startswith("arriving")][0]
        assert line.split()[1:3] == ["170", "0"] and "--p---" in line
    finally:
        sleeper.kill()
        sleeper.wait()
        daemon.json("POST", "/v1/domains/170/destroy")
