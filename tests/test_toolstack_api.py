"""API contract tests against a running hospesd (no KVM needed).

* the served OpenAPI document equals the committed docs/openapi.json;
* property tests driven by that document: for every operation, requests built
  from its schemas -- valid ones, mutated ones and junk -- get a documented status,
  4xx answers carry {"error": message}, 2xx answers match the response schema,
  and the daemon is still serving afterwards (no 500s, no crash);
* malformed HTTP, bodies too large, wrong methods and unknown paths are 4xx;
* TCP needs the bearer token;
* a domain whose process is gone is reported as crashed and can be destroyed.

Domains here are state records without a live process (or creates that fail
before touching KVM), so nothing needs /dev/kvm.
"""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from hospes.domain import ShutdownReason
from hospes.toolstack.apispec import SCHEMAS, build_openapi, dumps
from hospes.toolstack.lifecycle import DomainState
from hospes.toolstack.record import DomainRecord, remove_quietly, write_record
from hospes.toolstack.schema import resolve, unsupported_keywords, validate
from hospes.toolstack.spec import DomainSpec
from toolstack_helpers import REPO, Hospesd

SEED = 20240601
JUNK: list[Any] = [None, True, False, 0, -1, 2**70, 1.5, -1e308, "", "x" * 3000, "\u2603", "\x00", [], {},
                   [[[[]]]], {"a": {"b": [None]}}, [1, "2", None], {"name": None}]
IDENTS = ["1", "2", "1", "2", "crashed-one", "preserved-one", "ghost", "0", "-1", "99999999999999999999", "Domain-0",
          "%2e%2e", "a%2Fb", "%00", "\u2603",
          "x" * 300, "crashed-one", "preserved-one", "a b"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospesd]:
    d = Hospesd(tmp_path_factory.mktemp("api"))
    try:
        d.start()
        yield d
    finally:
        d.close()


def fake_domain(d: Hospesd, domid: int, name: str, state: str = "running", reason: str | None = None) -> None:
    """A record whose process does not exist (pid 0 never is a domain process)."""
    spec = {"format": 1, "name": name, "kernel": "/nonexistent/vmlinuz", "memory": 128, "maxmem": 128,
            "vcpus": 1, "type": "pv", "disks": [], "vifs": [], "on_poweroff": "destroy",
            "on_reboot": "restart", "on_crash": "destroy"}
    write_record(d.run_dir / "domains" / f"{domid}.json",
                 DomainRecord(domid, name, f"00000000-0000-4000-8000-{domid:012d}", DomainSpec.from_dict(spec),
                              state=DomainState(state), shutdown_reason=ShutdownReason(reason) if reason else None,
                              pid=None, pid_start=None,
                              console_log=str(d.run_dir / "logs" / f"console-{domid}.log")))


# --- the document -------------------------------------------------------------------------------


def test_served_openapi_matches_committed_doc(daemon: Hospesd) -> None:
    status, served = daemon.json("GET", "/openapi.json")
    assert status == 200
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert served == committed, (
        "The API changed but docs/openapi.json did not: run "
        "`.venv/bin/python -m hospes.toolstack.apispec > docs/openapi.json` and review the diff.")
    assert (REPO / "docs" / "openapi.json").read_text() == dumps(build_openapi())


def test_doc_uses_only_what_the_validator_implements() -> None:
    for name, schema in SCHEMAS.items():
        assert unsupported_keywords(schema) == set(), name
    doc = build_openapi()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                assert unsupported_keywords(p["schema"]) == set(), (method, path)
            for resp in op["responses"].values():
                for media in resp.get("content", {}).values():
                    if "$ref" in media["schema"]:
                        resolve(media["schema"], SCHEMAS)


# --- generators driven by the schemas -------------------------------------------------------------


def gen_valid(schema: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    schema = dict(resolve(schema, SCHEMAS))
    if "enum" in schema:
        return rng.choice(schema["enum"])
    types = schema.get("type", "object")
    t = rng.choice(types) if isinstance(types, list) else types
    if t == "object":
        props = schema.get("properties", {})
        out = {k: gen_valid(props[k], rng, depth + 1) for k in schema.get("required", [])}
        for k, sub in props.items():
            if k not in out and depth < 3 and rng.random() < 0.5:
                out[k] = gen_valid(sub, rng, depth + 1)
        return out
    if t == "array":
        return [gen_valid(schema.get("items", {"type": "string"}), rng, depth + 1)
                for _ in range(rng.randint(0, min(3, schema.get("maxItems", 3))))]
    if t == "string":
        lo, hi = schema.get("minLength", 0), min(schema.get("maxLength", 20), 20)
        return "".join(rng.choice("abcxyz-_.0123") for _ in range(rng.randint(lo, max(lo, hi))))
    if t == "integer":
        return rng.randint(int(schema.get("minimum", -5)), int(schema.get("maximum", 1000)))
    if t == "number":
        return rng.uniform(float(schema.get("minimum", 0)), float(min(schema.get("maximum", 5), 5)))
    if t == "boolean":
        return rng.random() < 0.5
    return None


def gen_mutant(schema: dict[str, Any], rng: random.Random) -> Any:
    value = gen_valid(schema, rng)
    kind = rng.randrange(4)
    if kind == 0 or not isinstance(value, dict):
        return rng.choice(JUNK)
    props = list(dict(resolve(schema, SCHEMAS)).get("properties", {}))
    if kind == 1 and props:
        value[rng.choice(props)] = rng.choice(JUNK)
    elif kind == 2:
        value["no_such_field_" + str(rng.randrange(100))] = rng.choice(JUNK)
    elif value:
        del value[rng.choice(list(value))]
    return value


def check_answer(route: tuple[str, str, dict], status: int, headers: dict[str, str], data: bytes) -> None:
    method, path, op = route
    documented = {int(s) for s in op["responses"]}
    assert status != 500, (method, path, data[:500])
    assert status in documented | {400, 404, 405, 413}, (method, path, status, data[:300])
    if status >= 400:
        err = json.loads(data)
        assert isinstance(err.get("error"), str) and err["error"][:1].isupper(), err
        return
    content = op["responses"][str(status)].get("content", {})
    if "application/json" in content:
        problems = validate(json.loads(data), content["application/json"]["schema"], SCHEMAS)
        assert problems == [], (method, path, problems)


def test_property_requests_from_the_document(daemon: Hospesd) -> None:
    rng = random.Random(SEED)
    doc = build_openapi()
    routes = [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]
    started = time.monotonic()
    for i in range(400):
        if i % 25 == 0:  # destroy and rename requests remove them now and then
            for domid in (1, 2):
                remove_quietly(daemon.run_dir / "domains" / f"{domid}.json")
            fake_domain(daemon, 1, "crashed-one")
            fake_domain(daemon, 2, "preserved-one", state="shutdown", reason="poweroff")
        method, path, op = route = rng.choice(routes)
        url = path.replace("{domain}", _quote(rng.choice(IDENTS)))
        query = []
        for p in op.get("parameters", []):
            if p["in"] == "query" and rng.random() < 0.6:
                value = gen_valid(p["schema"], rng) if rng.random() < 0.5 else rng.choice(["-3", "x", "", "1e9", "7"])
                query.append(f"{p['name']}={_quote(str(value))}")
        if query:
            url += "?" + "&".join(query)
        body = None
        if "requestBody" in op:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            choice = rng.random()
            if choice < 0.4:
                body = json.dumps(gen_valid(schema, rng)).encode()
            elif choice < 0.8:
                body = json.dumps(gen_mutant(schema, rng)).encode()
            elif choice < 0.9:
                body = rng.choice([b"{", b"\xff\xfe", b"nul", b"[1,2", b"{}" * 10, b""])
        status, headers, data = daemon.request(method.upper(), url, body, {"Content-Type": "application/json"})
        check_answer(route, status, headers, data)
        assert time.monotonic() - started < 120, "the property run is bounded in time"
    assert daemon.alive()
    assert daemon.json("GET", "/v1/version")[0] == 200
    assert "Traceback" not in daemon.log()


def _quote(text: str) -> str:
    import urllib.parse

    return urllib.parse.quote(text, safe="%")


# --- malformed requests -----------------------------------------------------------------------------


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/v2/nothing", None, 404),
    ("PUT", "/v1/domains", b"{}", 405),
    ("POST", "/v1/domains", b"", 400),
    ("POST", "/v1/domains", b"{not json", 400),
    ("POST", "/v1/domains", b"[]", 400),
    ("POST", "/v1/domains", b'{"paused": "yes"}', 400),
    ("POST", "/v1/domains", b'{"unknown": 1}', 400),
    ("POST", "/v1/domains", b'{}', 400),
    ("POST", "/v1/domains", b'{"config_path": "/nonexistent.cfg"}', 400),
    ("POST", "/v1/domains", json.dumps({"spec": {"format": 1, "name": "n", "kernel": "/nonexistent"}}).encode(), 400),
    ("POST", "/v1/domains", json.dumps({"spec": {"format": 99, "name": "n", "kernel": "/x"}}).encode(), 400),
    ("POST", "/v1/domains", json.dumps({"spec": {"format": 1, "name": "12", "kernel": "/x"}}).encode(), 400),
    ("POST", "/v1/domains", b"x" * (2 * 1024 * 1024), 413),
    ("GET", "/v1/domains/ghost", None, 404),
    ("GET", "/v1/domains/1/console/log?tail=0", None, 400),
    ("GET", "/v1/domains/1/console/log?offset=abc", None, 400),
    ("POST", "/v1/domains/ghost/rename", b'{"name": "x"}', 404),
    ("POST", "/v1/domains/ghost/run", b'{"command": ""}', 400),
    ("POST", "/v1/domains/ghost/shutdown", b'{"wait": 1}', 400),
])
def test_malformed_requests_get_4xx(daemon: Hospesd, method: str, path: str, body: bytes | None,
                                    status: int) -> None:
    got, _, data = daemon.request(method, path, body, {"Content-Type": "application/json"})
    assert got == status, data[:300]
    assert json.loads(data)["error"]
    assert daemon.json("GET", "/v1/version")[0] == 200


def test_garbage_on_the_socket_does_not_hurt(daemon: Hospesd) -> None:
    for junk in (b"\x00\x01\x02\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /v1/version HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: -5\r\n\r\n", b"A" * 70000 + b"\r\n\r\n"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(daemon.socket))
            s.sendall(junk)
            try:
                s.shutdown(socket.SHUT_WR)
                s.recv(65536)
            except OSError:
                pass
    # Half a request, then the client vanishes.
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemon.socket))
    s.sendall(b"POST /v1/domains HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    s.close()
    assert daemon.json("GET", "/v1/version")[0] == 200
    assert daemon.alive()


def test_console_needs_websocket(daemon: Hospesd) -> None:
    fake_domain(daemon, 30, "plain-http")
    status, _, data = daemon.request("GET", "/v1/domains/plain-http/console")
    assert status == 400 and b"WebSocket" in data
    assert daemon.json("POST", "/v1/domains/plain-http/destroy")[0] == 200


# --- dead domains ----------------------------------------------------------------------------------


def test_dead_process_is_crashed_and_destroyable(daemon: Hospesd) -> None:
    fake_domain(daemon, 40, "lost")
    (daemon.run_dir / "logs" / "console-40.log").write_bytes(b"hello\nworld\n")
    status, body = daemon.json("GET", "/v1/domains/lost")
    assert status == 200
    assert validate(body, {"$ref": "#/components/schemas/Domain"}, SCHEMAS) == []
    assert (body["state"], body["flags"], body["shutdown_reason"]) == ("crashed", "---sc-", "crash")
    assert "died unexpectedly" in body["message"]
    status, listing = daemon.json("GET", "/v1/domains")
    assert status == 200 and 40 in [d["domid"] for d in listing["domains"]]
    assert daemon.request("GET", "/v1/domains/40/console/log?tail=6")[2] == b"world\n"
    assert daemon.request("GET", "/v1/domains/40/console/log?offset=6")[2] == b"world\n"
    for action in ("pause", "unpause", "shutdown", "reboot"):
        status, err = daemon.json("POST", f"/v1/domains/lost/{action}")
        assert status == 409 and "crashed" in err["error"], action
    assert daemon.json("POST", "/v1/domains/lost/run", {"command": "true"})[0] == 409
    assert daemon.json("POST", "/v1/domains/lost/rename", {"name": "found"}) == (200, {"domid": 40})
    assert daemon.json("GET", "/v1/domains/found")[1]["name"] == "found"
    assert daemon.json("DELETE", "/v1/domains/found") == (200, {"domid": 40})
    assert daemon.json("GET", "/v1/domains/40")[0] == 404
    assert (daemon.run_dir / "logs" / "console-40.log").exists(), "the console log outlives the domain"


def test_preserved_shutdown_domain(daemon: Hospesd) -> None:
    fake_domain(daemon, 41, "stopped", state="shutdown", reason="poweroff")
    body = daemon.json("GET", "/v1/domains/stopped")[1]
    assert (body["state"], body["flags"]) == ("shutdown", "---s--")
    assert daemon.json("POST", "/v1/domains/41/destroy")[0] == 200


def test_names_are_unique(daemon: Hospesd) -> None:
    fake_domain(daemon, 42, "taken")
    fake_domain(daemon, 43, "other")
    status, err = daemon.json("POST", "/v1/domains/other/rename", {"name": "taken"})
    assert status == 409 and "already exists" in err["error"]
    spec = {"format": 1, "name": "taken", "kernel": "@default", "memory": 64, "maxmem": 64}
    status, err = daemon.json("POST", "/v1/domains", {"spec": spec})
    assert status == 409 and "already exists" in err["error"]
    for d in (42, 43):
        daemon.json("POST", f"/v1/domains/{d}/destroy")


def test_create_whose_build_fails_leaves_nothing(daemon: Hospesd, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-kernel"
    bogus.write_bytes(b"\x7fELF but not really" + b"\0" * 100)
    spec = {"format": 1, "name": "broken", "kernel": str(bogus), "memory": 64, "maxmem": 64}
    status, err = daemon.json("POST", "/v1/domains", {"spec": spec}, timeout=120)
    assert status == 400, err
    assert "could not be built" in err["error"]
    assert daemon.json("GET", "/v1/domains/broken")[0] == 404
    from toolstack_helpers import processes_naming

    deadline = time.monotonic() + 10
    while [p for p in processes_naming(str(daemon.run_dir)) if p != daemon.proc.pid] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in processes_naming(str(daemon.run_dir)) if p != daemon.proc.pid] == []


def test_cli_reports_api_errors(daemon: Hospesd) -> None:
    r = daemon.cli("pause", "ghost")
    assert r.returncode != 0
    assert b"does not exist" in r.stderr and b"Traceback" not in r.stderr
    r = daemon.cli("list")
    assert r.returncode == 0
    assert r.stdout.startswith(b"Name                                        ID   Mem VCPUs\tState")


# --- TCP with a token ----------------------------------------------------------------------------


def test_tcp_needs_the_bearer_token(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    d = Hospesd(tmp_path, ["--tcp", f"127.0.0.1:{port}", "--token-file", str(token_file)])
    try:
        d.start()
        import http.client

        def get(headers: dict[str, str]) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/v1/domains", headers=headers)
                return conn.getresponse().status
            finally:
                conn.close()

        assert get({}) == 401
        assert get({"Authorization": "Bearer wrong"}) == 401
        assert get({"Authorization": "Bearer s3cret-token"}) == 200
        assert d.json("GET", "/v1/domains")[0] == 200  # the Unix socket needs none
        from hospes.toolstack.client import connect

        assert connect(url=f"http://127.0.0.1:{port}", token="s3cret-token").domains() == []
    finally:
        d.close()


def test_tcp_without_token_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "HOSPES_API_TOKEN"}
    p = subprocess.run([sys.executable, "-m", "hospes.toolstack.daemon", "--run-dir", str(tmp_path / "r"),
                        "--tcp", "127.0.0.1:1"], capture_output=True, timeout=30, env=env)
    assert p.returncode == 2 and b"needs a token" in p.stderr


def test_one_daemon_per_run_dir(daemon: Hospesd) -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "hospes.toolstack.daemon", "--run-dir", str(daemon.run_dir)],
                       capture_output=True, timeout=30)
    assert p.returncode == 1 and b"another hospesd" in p.stderr
    assert daemon.json("GET", "/v1/version")[0] == 200
