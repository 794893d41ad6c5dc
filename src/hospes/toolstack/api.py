"""hospesd's HTTP API (aiohttp): routing, validation and errors over :class:`.daemon.Daemon`.

Contract, for every request:

* routes, bodies and query parameters come from :mod:`.apispec` (the same data
  the OpenAPI document is built from); a body or parameter that does not match
  is answered ``400 {"error": message}`` before any handler runs;
* an unknown path is 404, a known path with another method 405, both with a
  JSON error body;
* any other failure in a handler is a 500 with a message, logged with its
  traceback; the daemon keeps serving;
* on a TCP listener (``make_app(token=...)``) every request needs
  ``Authorization: Bearer <token>`` (else 401); the Unix socket, mode 0600, is
  guarded by file permissions instead.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web

from hospes.version import __version__
from hospes.toolstack import control
from hospes.toolstack.apispec import API_VERSION, ROUTES, SCHEMAS, Route, build_openapi
from hospes.toolstack.api_error import ApiError
from hospes.toolstack.daemon import Daemon
from hospes.toolstack.lifecycle import ShutdownRequest
from hospes.toolstack.schema import validate

log = logging.getLogger("hospesd.api")

MAX_BODY = 1024 * 1024
MAX_DEPTH = 32          # nesting of a request body; the deepest the document allows is 4
NDJSON = "application/x-ndjson"
DISCONNECT_POLL_S = 0.2


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, sort_keys=True))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class Api:
    """Request handlers; each gets (request, validated body, validated query)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.openapi = build_openapi()

    async def getVersion(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json({"hospes": __version__, "api": API_VERSION})

    async def getHost(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.host())

    async def listDomains(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json({"domains": await self.daemon.domains()})

    async def createDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.create(body), 201)

    async def getDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json((await self.daemon.view(req.match_info["domain"])).to_api())

    async def deleteDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.destroy(req.match_info["domain"]))

    destroyDomain = deleteDomain

    async def pauseDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.pause(req.match_info["domain"]))

    async def unpauseDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.unpause(req.match_info["domain"]))

    async def shutdownDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.shutdown(req.match_info["domain"], ShutdownRequest.POWEROFF, body))

    async def rebootDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.shutdown(req.match_info["domain"], ShutdownRequest.REBOOT, body))

    async def renameDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.rename(req.match_info["domain"], body["name"]))

    async def getSched(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.sched(req.match_info["domain"]))

    async def setSched(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.sched(req.match_info["domain"], body.get("weight"), body.get("cap")))

    async def setVcpus(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.set_vcpus(req.match_info["domain"], body["vcpus"]))

    async def setMemory(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.set_memory(req.match_info["domain"], body["target_kib"]))

    async def listVcpus(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.vcpus(req.match_info["domain"]))

    async def getConsoleLog(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        data = self.daemon.console_log(req.match_info["domain"], query.get("offset"), query.get("tail"))
        return web.Response(body=data, content_type="application/octet-stream")

    async def runCommand(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        timeout = float(body.get("timeout") or 60.0)
        return _json(await self.daemon.run_command(req.match_info["domain"], body["command"], timeout))

    async def saveDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.save(req.match_info["domain"], body))

    async def restoreDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.restore(body), 201)

    async def incomingDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.incoming(body), 201)

    async def waitIncoming(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        timeout = float(body.get("timeout") or 600.0)
        return _json(await self.daemon.wait_incoming(req.match_info["domain"], timeout))

    async def cancelMigration(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        return _json(await self.daemon.cancel_migration(req.match_info["domain"]))

    async def migrateDomain(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        """One JSON answer, or with ``Accept: application/x-ndjson`` (or ``?stream=true``) an NDJSON
        body: the progress events as they come, then ``{"event": "result", ...}`` or
        ``{"event": "error", "error": ...}``. A client that goes away cancels the migration."""
        v, args = await self.daemon.migration(req.match_info["domain"], body)
        streamed = bool(query.get("stream")) or NDJSON in req.headers.get("Accept", "")
        if not streamed:
            return _json(await _unless_client_leaves(req, self.daemon.migrate(v, args)))
        resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
        await resp.prepare(req)

        async def send(line: dict[str, Any]) -> None:
            await resp.write(json.dumps(line, sort_keys=True).encode() + b"\n")

        try:
            result = await _unless_client_leaves(req, self.daemon.migrate(v, args, send))
            await send({"event": "result", **result})
        except ApiError as e:
            await send({"event": "error", "error": str(e)})
        except ConnectionError:
            return resp   # the client left; the migration was cancelled with it
        await resp.write_eof()
        return resp

    async def attachConsole(self, req: web.Request, body: dict, query: dict) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_BODY)
        if not ws.can_prepare(req).ok:
            raise ApiError(400, "The console is a WebSocket: send an Upgrade: websocket request "
                                "(`hospes console` does).")
        v = await self.daemon.live(req.match_info["domain"], "attach a console")
        try:
            reader, writer = await control.open_console(self.daemon.run.control_socket(v.domid))
        except control.ControlError as e:
            raise ApiError(409, str(e)) from e
        await ws.prepare(req)

        async def pump_out() -> None:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await ws.send_bytes(data)
            await ws.close()

        out = asyncio.create_task(pump_out())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    writer.write(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    writer.write(msg.data.encode())
                else:
                    continue
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            out.cancel()
            writer.close()
        return ws


async def _unless_client_leaves(req: web.Request, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` while the client stays connected; cancel it (ConnectionError) if it leaves.

    aiohttp does not cancel handlers on a disconnect, and a migration can go a
    long time without an event to write, so the connection is watched.
    """
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and (req.transport is None or req.transport.is_closing()):
                task.cancel()
                await asyncio.wait({task})
                raise ConnectionResetError("The client closed the connection; the migration was cancelled.")
    finally:
        if not task.done():   # the handler itself was cancelled
            task.cancel()
    if task.cancelled():
        raise ApiError(409, "The migration was cancelled; the domain keeps running here.")
    return task.result()


def _parse_query(route: Route, req: web.Request) -> dict[str, Any]:
    """The query parameters, typed; path parameters are checked too (400 for a bad one)."""
    out: dict[str, Any] = {}
    for p in route.params:
        if p.where == "path":
            problems = validate(req.match_info.get(p.name, ""), p.schema, SCHEMAS, f"path.{p.name}")
            if problems:
                raise ApiError(400, "Invalid path parameter: " + "; ".join(problems))
        if p.where != "query" or p.name not in req.query:
            continue
        if len(req.query.getall(p.name)) > 1:
            raise ApiError(400, f"Query parameter {p.name} is given more than once.")
        raw = req.query[p.name]
        value: Any = raw
        if p.schema.get("type") == "boolean":
            if raw not in ("true", "false", "1", "0"):
                raise ApiError(400, f"Query parameter {p.name} must be true or false, not {raw!r}.")
            value = raw in ("true", "1")
        elif p.schema.get("type") == "integer":
            try:
                value = int(raw)
            except ValueError:
                raise ApiError(400, f"Query parameter {p.name} must be an integer, not {raw!r}.") from None
        problems = validate(value, p.schema, SCHEMAS, f"query.{p.name}")
        if problems:
            raise ApiError(400, "Invalid query parameter: " + "; ".join(problems))
        out[p.name] = value
    return out


async def _parse_body(route: Route, req: web.Request) -> dict[str, Any]:
    if route.body is None:
        return {}
    raw = await req.read()
    if not raw.strip():
        if route.body_required:
            raise ApiError(400, f"This request needs a JSON body ({route.body}).")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"The request body is not valid JSON: {e}.") from None
    except RecursionError:
        raise ApiError(400, f"The request body is nested deeper than {MAX_DEPTH} levels.") from None
    if _depth(body) > MAX_DEPTH:
        raise ApiError(400, f"The request body is nested deeper than {MAX_DEPTH} levels.")
    problems = validate(body, {"$ref": f"#/components/schemas/{route.body}"}, SCHEMAS, "body")
    if problems:
        raise ApiError(400, "Invalid request body: " + "; ".join(problems[:5]))
    return body


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (without recursion: any depth is safe)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _endpoint(api: Api, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    handler = getattr(api, route.operation_id)

    async def endpoint(req: web.Request) -> web.StreamResponse:
        query = _parse_query(route, req)
        body = await _parse_body(route, req)
        return await handler(req, body, query)

    endpoint.__name__ = route.operation_id
    return endpoint


def _auth_middleware(token: str | None) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
        if token is not None and request.transport is not None:
            sockname = request.transport.get_extra_info("sockname")
            is_tcp = isinstance(sockname, tuple)
            if is_tcp:
                given = request.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    return _error(401, "Missing or wrong bearer token; send Authorization: Bearer <token>.")
        return await handler(request)

    return auth


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e.status, str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if e.status == 404:
            return _error(404, f"No such API path {request.path}; GET /openapi.json lists them.")
        if e.status == 405:
            return _error(405, f"{request.method} is not allowed on {request.path}; "
                               "GET /openapi.json lists the methods.")
        if e.status == 413:
            return _error(413, f"The request body is larger than {MAX_BODY} bytes.")
        return _error(e.status, e.reason or "Bad request.")
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(500, f"Internal error ({type(e).__name__}: {e}); the daemon log has the details.")


def make_app(daemon: Daemon, token: str | None = None) -> web.Application:
    """The aiohttp application for ``daemon``; ``token`` guards TCP listeners."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors, _auth_middleware(token)])
    api = Api(daemon)
    for route in ROUTES:
        app.router.add_route(route.method.upper(), route.path, _endpoint(api, route))

    async def openapi(req: web.Request) -> web.StreamResponse:
        return _json(api.openapi)

    app.router.add_get("/openapi.json", openapi)
    return app
