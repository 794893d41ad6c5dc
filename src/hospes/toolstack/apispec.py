"""The HTTP API as data: schemas and the route table, and the OpenAPI document built from them.

This module is the single source of truth. :mod:`.api` routes requests and
validates bodies and query parameters from ``ROUTES``/``SCHEMAS``; the daemon
serves ``build_openapi()`` at ``GET /openapi.json``; ``docs/openapi.json`` is a
committed copy (regenerate with ``python -m hospes.toolstack.apispec >
docs/openapi.json``) and a test fails when the two drift apart.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from hospes.toolstack.console_run import MAX_COMMAND
from hospes.toolstack.lifecycle import DomainState, WaitOutcome

API_VERSION = 1
NAME_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 64}
MAX_DOMAIN_REF = 128     # a domid, a name (<= 64) or a UUID (36)
MAX_OFFSET = 1 << 53    # byte offsets: any file, and exact in every JSON reader
STATES = [str(state) for state in DomainState]

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "description": "Every 4xx/5xx answer. The message starts with a capital letter and says what to do.",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Version": {
        "type": "object",
        "required": ["hospes", "api"],
        "properties": {"hospes": {"type": "string"}, "api": {"type": "integer"}},
    },
    "HostInfo": {
        "type": "object",
        "description": "The host, as `xl info` reports it (names as xl's), plus dom0: the host itself.",
        "required": ["host", "release", "version", "machine", "nr_cpus", "total_memory", "free_memory",
                     "xen_major", "xen_minor", "xen_extra", "xen_version", "dom0"],
        "properties": {
            "host": {"type": "string"}, "release": {"type": "string"}, "version": {"type": "string"},
            "machine": {"type": "string"}, "nr_cpus": {"type": "integer"}, "max_cpu_id": {"type": "integer"},
            "nr_nodes": {"type": "integer"}, "cores_per_socket": {"type": "integer"},
            "threads_per_core": {"type": "integer"}, "cpu_khz": {"type": "integer"},
            "virt_caps": {"type": "string"},
            "total_memory": {"type": "integer", "description": "MiB"},
            "free_memory": {"type": "integer", "description": "MiB"},
            "free_cpus": {"type": "integer"},
            "xen_major": {"type": "integer"}, "xen_minor": {"type": "integer"}, "xen_extra": {"type": "string"},
            "xen_version": {"type": "string"}, "xen_caps": {"type": "string"},
            "xen_scheduler": {"type": "string"}, "xen_pagesize": {"type": "integer"},
            "virt_start": {"type": "integer"}, "xen_changeset": {"type": "string"},
            "xen_commandline": {"type": "string"}, "cc_compiler": {"type": "string"},
            "cc_compile_by": {"type": "string"}, "cc_compile_domain": {"type": "string"},
            "cc_compile_date": {"type": "string"}, "build_id": {"type": "string"},
            "dom0": {"$ref": "#/components/schemas/Dom0"},
        },
    },
    "Dom0": {
        "type": "object",
        "description": "The host seen as xl's Domain-0: memory not given to guests, its CPUs and their time.",
        "required": ["memory_mib", "vcpus", "cpu_time", "uptime", "vcpu_times"],
        "properties": {
            "memory_mib": {"type": "integer"}, "vcpus": {"type": "integer"},
            "cpu_time": {"type": "number"}, "uptime": {"type": "number"},
            "vcpu_times": {"type": "array", "items": {"type": "number"}},
        },
    },
    "DomainSpec": {
        "type": "object",
        "description": "A domain's configuration: DomainSpec.to_dict() of hospes.toolstack.spec.",
        "required": ["format", "name", "kernel"],
        "properties": {
            "format": {"type": "integer", "description": "spec format version (1)"},
            "name": NAME_SCHEMA, "uuid": {"type": ["string", "null"]}, "type": {"type": "string"},
            "memory": {"type": "integer", "minimum": 1}, "maxmem": {"type": ["integer", "null"]},
            "vcpus": {"type": "integer", "minimum": 1},
            "kernel": {"type": "string", "description": "a path on the daemon's host, \"@default\", or with a "
                                                        "bootloader a path in the first disk (\"\": its choice)"},
            "ramdisk": {"type": ["string", "null"]}, "cmdline": {"type": ["string", "null"]},
            "disks": {"type": "array"}, "vifs": {"type": "array"},
            "bootloader": {"type": ["string", "null"], "description": "\"pygrub\": boot the first disk's kernel"},
            "bootloader_args": {"type": "array", "items": {"type": "string"}},
            "on_poweroff": {"type": "string"}, "on_reboot": {"type": "string"}, "on_crash": {"type": "string"},
        },
    },
    "CreateRequest": {
        "type": "object",
        "description": "Give `spec`, or `config_path` (an xl.cfg file on the daemon's host) with `overrides`.",
        "additionalProperties": False,
        "properties": {
            "spec": {"$ref": "#/components/schemas/DomainSpec"},
            "config_path": {"type": "string", "minLength": 1},
            "overrides": {"type": "array", "items": {"type": "string"}, "maxItems": 256},
            "paused": {"type": "boolean"},
        },
    },
    "Domain": {
        "type": "object",
        "required": ["domid", "name", "uuid", "state", "flags", "memory_mib", "vcpus", "max_vcpus", "cpu_time",
                     "created", "started", "uptime", "boots", "shutdown_reason", "message", "pid", "console_log",
                     "config"],
        "properties": {
            "domid": {"type": "integer", "minimum": 1},
            "name": {"type": "string"},
            "uuid": {"type": "string"},
            "state": {"type": "string", "enum": STATES},
            "flags": {"type": "string", "pattern": "^[-r][-b][-p][-s][-rscwS?][-d]$",
                      "description": "xl's six state letters"},
            "memory_mib": {"type": "integer"},
            "vcpus": {"type": "integer", "description": "online vCPUs"},
            "max_vcpus": {"type": "integer"},
            "cpu_time": {"type": "number", "description": "seconds of vCPU time in the current boot"},
            "created": {"type": "number", "description": "Unix time of `create`"},
            "started": {"type": "number", "description": "Unix time the current boot started"},
            "uptime": {"type": "number"},
            "boots": {"type": "integer"},
            "shutdown_reason": {"type": ["string", "null"]},
            "message": {"type": "string"},
            "pid": {"type": ["integer", "null"]},
            "console_log": {"type": "string"},
            "sched": {"$ref": "#/components/schemas/Sched"},
            "config": {"$ref": "#/components/schemas/DomainSpec"},
        },
    },
    "DomainList": {
        "type": "object",
        "required": ["domains"],
        "properties": {"domains": {"type": "array", "items": {"$ref": "#/components/schemas/Domain"}}},
    },
    "Done": {
        "type": "object",
        "required": ["domid"],
        "properties": {"domid": {"type": "integer"}},
    },
    "ShutdownRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "wait": {"type": "boolean", "description": "answer only once the domain has stopped"},
            "timeout": {"type": "number", "minimum": 0, "maximum": 3600},
        },
    },
    "ShutdownResult": {
        "type": "object",
        "required": ["domid", "outcome", "shutdown_reason"],
        "properties": {
            "domid": {"type": "integer"},
            "outcome": {"type": "string", "enum": [str(outcome) for outcome in WaitOutcome]},
            "shutdown_reason": {"type": ["string", "null"]},
        },
    },
    "RenameRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {"name": NAME_SCHEMA},
    },
    "Vcpu": {
        "type": "object",
        "required": ["vcpu", "online", "running", "blocked", "cpu", "time"],
        "properties": {
            "vcpu": {"type": "integer"}, "online": {"type": "boolean"}, "running": {"type": "boolean"},
            "blocked": {"type": "boolean"}, "cpu": {"type": "integer", "description": "host CPU, -1 if unknown"},
            "time": {"type": "number"},
        },
    },
    "VcpuList": {
        "type": "object",
        "required": ["domid", "name", "vcpus"],
        "properties": {
            "domid": {"type": "integer"}, "name": {"type": "string"},
            "vcpus": {"type": "array", "items": {"$ref": "#/components/schemas/Vcpu"}},
        },
    },
    "Sched": {
        "type": "object",
        "description": "Credit-scheduler parameters, applied to the domain process's CPU cgroup: `weight` "
                       "is relative (cpu.shares / cpu.weight), `cap` an absolute limit in percent of one host "
                       "CPU (CFS quota), 0 = none.",
        "required": ["weight", "cap"],
        "properties": {"weight": {"type": "integer", "minimum": 1, "maximum": 65535},
                       "cap": {"type": "integer", "minimum": 0, "maximum": 65535}},
    },
    "SchedState": {
        "type": "object",
        "description": "The parameters in force (xl sched-credit -d), the cgroup and what the cap held back "
                       "(cpu.stat: nr_periods, nr_throttled, throttled_time ns or throttled_usec).",
        "required": ["domid", "name", "weight", "cap", "cgroup", "throttled"],
        "properties": {
            "domid": {"type": "integer"}, "name": {"type": "string"},
            "weight": {"type": "integer"}, "cap": {"type": "integer"},
            "cgroup": {"type": ["string", "null"]},
            "throttled": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "VcpuSetRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["vcpus"],
        "properties": {"vcpus": {"type": "integer", "minimum": 1, "maximum": 32,
                                 "description": "How many vCPUs the guest should run, at most its maxvcpus"}},
    },
    "VcpuSet": {
        "type": "object",
        "required": ["domid", "name", "vcpus", "maxvcpus"],
        "properties": {"domid": {"type": "integer"}, "name": {"type": "string"},
                       "vcpus": {"type": "integer"}, "maxvcpus": {"type": "integer"}},
    },
    "MemSetRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["target_kib"],
        "properties": {"target_kib": {"type": "integer", "minimum": 0,
                                      "description": "The memory the guest should hold, in KiB (at least 16 MiB, "
                                                     "at most its maxmem)"}},
    },
    "MemSet": {
        "type": "object",
        "required": ["domid", "name", "memory_kib", "target_kib", "maxmem_kib"],
        "properties": {"domid": {"type": "integer"}, "name": {"type": "string"},
                       "memory_kib": {"type": "integer", "description": "What the guest holds now"},
                       "target_kib": {"type": "integer", "description": "What its balloon driver moves toward"},
                       "maxmem_kib": {"type": "integer"}},
    },
    "SchedRequest": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {"weight": {"type": "integer", "minimum": 1, "maximum": 65535},
                       "cap": {"type": "integer", "minimum": 0, "maximum": 65535}},
    },
    "RunRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["command"],
        "properties": {
            "command": {"type": "string", "minLength": 1, "maxLength": MAX_COMMAND},
            "timeout": {"type": "number", "minimum": 1, "maximum": 3600},
        },
    },
    "SaveRequest": {
        "type": "object",
        "description": "Save to `path`, a file on the daemon's host. Without `checkpoint` the domain is "
                       "destroyed once it is saved (xl save); with it, it runs on (xl save -c).",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": {"type": "string", "minLength": 1, "maxLength": 4096,
                     "description": "absolute; its directory must exist"},
            "checkpoint": {"type": "boolean"},
            "compress": {"type": "boolean", "description": "zstd-compress the pages"},
        },
    },
    "SaveResult": {
        "type": "object",
        "required": ["domid", "path", "bytes", "pages", "seconds", "checkpoint"],
        "properties": {
            "domid": {"type": "integer"}, "path": {"type": "string"},
            "bytes": {"type": "integer", "description": "size of the save file"},
            "pages": {"type": "integer", "description": "guest pages written"},
            "seconds": {"type": "number"}, "checkpoint": {"type": "boolean"},
        },
    },
    "RestoreRequest": {
        "type": "object",
        "description": "Restore the domain saved in `path` (xl restore). `overrides` are KEY=VALUE settings in "
                       "xl.cfg's grammar applied to the saved configuration, as create applies them; the keys "
                       "the saved guest depends on (memory, vcpus, kernel, ...) cannot change.",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": {"type": "string", "minLength": 1, "maxLength": 4096},
            "overrides": {"type": "array", "items": {"type": "string"}, "maxItems": 256},
            "paused": {"type": "boolean"},
        },
    },
    "IncomingRequest": {
        "type": "object",
        "description": "A domain that listens at `listen` for one migration stream and is built from it "
                       "(the receiving side of `hospes migrate`).",
        "additionalProperties": False,
        "required": ["listen"],
        "properties": {
            "listen": {"type": "string", "minLength": 1, "maxLength": 200,
                       "description": "tcp://HOST:PORT or unix:/absolute/path"},
            "paused": {"type": "boolean", "description": "leave the received domain paused"},
            "name": {"type": ["string", "null"], "minLength": 1, "maxLength": 64,
                     "description": "until the stream brings the domain's own: default incoming-<domid>"},
        },
    },
    "Incoming": {
        "type": "object",
        "required": ["domid", "listen"],
        "properties": {"domid": {"type": "integer"}, "listen": {"type": "string"}},
    },
    "WaitIncomingRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"timeout": {"type": "number", "minimum": 0, "maximum": 86400,
                                   "description": "seconds (default 600)"}},
    },
    "MigrateRequest": {
        "type": "object",
        "description": "Send the domain to `dest` (xl migrate): `[USER@]HOST` runs `ssh [USER@]HOST hospes "
                       "migrate-receive` there; `tcp://HOST:PORT` or `unix:PATH` is a domain listening "
                       "(POST /v1/domains/incoming on the other daemon).",
        "additionalProperties": False,
        "required": ["dest"],
        "properties": {
            "dest": {"type": "string", "minLength": 1, "maxLength": 300},
            "live": {"type": "boolean", "description": "pre-copy while the guest runs (default true)"},
            "verify": {"type": "boolean", "description": "compare all memory at the end"},
            "compress": {"type": "boolean"},
            "max_rounds": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000},
            "max_bandwidth": {"type": ["integer", "null"], "minimum": 1, "description": "bytes per second"},
        },
    },
    "MigrateRound": {
        "type": "object",
        "required": ["round", "pages", "dirty", "seconds"],
        "properties": {"round": {"type": "integer"}, "pages": {"type": "integer"},
                       "dirty": {"type": "integer"}, "seconds": {"type": "number"}},
    },
    "MigrateResult": {
        "type": "object",
        "required": ["domid", "dest", "downtime_ms", "total_s", "rounds", "pages_sent", "bytes_sent",
                     "per_round", "verify"],
        "properties": {
            "domid": {"type": "integer", "description": "the domain's domid here (gone now)"},
            "dest": {"type": "string"},
            "downtime_ms": {"type": "number"}, "total_s": {"type": "number"},
            "rounds": {"type": "integer"}, "pages_sent": {"type": "integer"}, "bytes_sent": {"type": "integer"},
            "per_round": {"type": "array", "items": {"$ref": "#/components/schemas/MigrateRound"}},
            "verify": {"type": ["object", "null"], "description": "with `verify`: pages compared, differences",
                       "properties": {"pages": {"type": "integer"}, "differences": {"type": "integer"}}},
        },
    },
    "MigrateEvent": {
        "type": "object",
        "description": "One line of a streamed migration: `progress` lines as rounds go, then one `result` "
                       "line (the MigrateResult fields) or one `error` line.",
        "required": ["event"],
        "properties": {
            "event": {"type": "string", "enum": ["progress", "result", "error"]},
            "round": {"type": "integer"}, "pages_sent": {"type": "integer"}, "round_pages": {"type": "integer"},
            "dirty_pages": {"type": "integer"}, "dirty_rate": {"type": "number", "description": "pages/s"},
            "remaining_pages": {"type": "integer"}, "elapsed": {"type": "number"},
            "error": {"type": "string"},
        },
    },
    "RunResult": {
        "type": "object",
        "required": ["exit_status", "output"],
        "properties": {"exit_status": {"type": "integer"}, "output": {"type": "string"}},
    },
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str                      # "path" or "query"
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Route:
    """One operation. ``responses`` maps a status to (description, target), a target being a schema
    name, a media type, several of those (alternatives the client picks with Accept), or None."""

    method: str
    path: str
    operation_id: str
    summary: str
    body: str | None = None
    body_required: bool = False
    params: tuple[Param, ...] = ()
    responses: dict[int, tuple[str, str | tuple[str, ...] | None]] = field(default_factory=dict)


DOMAIN = Param("domain", "path", {"type": "string", "minLength": 1, "maxLength": MAX_DOMAIN_REF},
               "A domid, a domain name or a UUID.", True)
ERRORS_DOMAIN = {404: ("No such domain", "Error")}
ERRORS_BODY = {400: ("Malformed request: a body or parameter the document does not allow, JSON nested deeper "
                     "than 32 levels, a query parameter given twice, or a file (config, kernel, ramdisk, "
                     "disk) that is not a regular file within its size limit", "Error")}
ADMISSION_409 = ("The name is taken, or the domain's memory does not fit the host (admission control: the "
                 "live domains' memory and overheads plus this one's must stay within the host's memory x "
                 "hospesd's --overcommit ratio, less a 256 MiB reserve); the message gives the numbers")
ERRORS_STATE = {409: ("The domain is not in a state that allows this", "Error")}
NDJSON = "application/x-ndjson"

ROUTES: tuple[Route, ...] = (
    Route("get", "/v1/version", "getVersion", "Hospes' version and the API version",
          responses={200: ("Versions", "Version")}),
    Route("get", "/v1/host", "getHost", "The host, as `xl info` shows it",
          responses={200: ("Host facts", "HostInfo")}),
    Route("get", "/v1/domains", "listDomains", "All domains (not Domain-0: that is the host)",
          responses={200: ("The domains, by domid", "DomainList")}),
    Route("post", "/v1/domains", "createDomain", "Create and start a domain (xl create)",
          body="CreateRequest", body_required=True,
          responses={201: ("Created; the domain is running or paused", "Domain"), **ERRORS_BODY,
                     409: (ADMISSION_409, "Error"),
                     500: ("The domain could not be built", "Error")}),
    Route("post", "/v1/domains/restore", "restoreDomain", "Restore a saved domain (xl restore)",
          body="RestoreRequest", body_required=True,
          responses={201: ("Restored; the domain is running or paused", "Domain"),
                     400: ("Malformed request, or the file is not a usable save file", "Error"),
                     409: (ADMISSION_409, "Error"),
                     500: ("The domain could not be restored", "Error")}),
    Route("post", "/v1/domains/incoming", "incomingDomain",
          "A domain that receives a migration (xl migrate-receive): answers once it listens",
          body="IncomingRequest", body_required=True,
          responses={201: ("Listening; the domain is `incoming` until the stream has arrived", "Incoming"),
                     **ERRORS_BODY, 409: ("The name is taken", "Error"),
                     500: ("The domain process could not listen", "Error")}),
    Route("get", "/v1/domains/{domain}", "getDomain", "One domain", params=(DOMAIN,),
          responses={200: ("The domain", "Domain"), **ERRORS_DOMAIN}),
    Route("delete", "/v1/domains/{domain}", "deleteDomain", "Destroy a domain (same as POST .../destroy)",
          params=(DOMAIN,), responses={200: ("Destroyed", "Done"), **ERRORS_DOMAIN}),
    Route("post", "/v1/domains/{domain}/destroy", "destroyDomain", "Destroy a domain at once (xl destroy)",
          params=(DOMAIN,), responses={200: ("Destroyed", "Done"), **ERRORS_DOMAIN}),
    Route("post", "/v1/domains/{domain}/pause", "pauseDomain", "Pause (xl pause)", params=(DOMAIN,),
          responses={200: ("Paused", "Done"), **ERRORS_DOMAIN, **ERRORS_STATE}),
    Route("post", "/v1/domains/{domain}/unpause", "unpauseDomain", "Unpause (xl unpause)", params=(DOMAIN,),
          responses={200: ("Unpaused", "Done"), **ERRORS_DOMAIN, **ERRORS_STATE}),
    Route("post", "/v1/domains/{domain}/shutdown", "shutdownDomain",
          "Ask the guest to power off (xl shutdown [-w])", body="ShutdownRequest", params=(DOMAIN,),
          responses={200: ("Requested, or stopped when `wait`", "ShutdownResult"), **ERRORS_BODY,
                     **ERRORS_DOMAIN, **ERRORS_STATE, 504: ("Still running after `timeout`", "Error")}),
    Route("post", "/v1/domains/{domain}/reboot", "rebootDomain", "Ask the guest to reboot (xl reboot [-w])",
          body="ShutdownRequest", params=(DOMAIN,),
          responses={200: ("Requested, or rebooted when `wait`", "ShutdownResult"), **ERRORS_BODY,
                     **ERRORS_DOMAIN, **ERRORS_STATE, 504: ("Still running after `timeout`", "Error")}),
    Route("post", "/v1/domains/{domain}/rename", "renameDomain", "Rename (xl rename)", body="RenameRequest",
          body_required=True, params=(DOMAIN,),
          responses={200: ("Renamed", "Done"), **ERRORS_BODY, **ERRORS_DOMAIN,
                     409: ("The name is taken", "Error")}),
    Route("post", "/v1/domains/{domain}/save", "saveDomain",
          "Save to a file (xl save [-c]); without checkpoint the domain is gone afterwards",
          body="SaveRequest", body_required=True, params=(DOMAIN,),
          responses={200: ("Saved", "SaveResult"), **ERRORS_BODY, **ERRORS_DOMAIN,
                     409: ("Not running, busy, or the save failed", "Error")}),
    Route("post", "/v1/domains/{domain}/migrate", "migrateDomain",
          "Migrate to another host (xl migrate); the domain is gone here afterwards. With `Accept: "
          "application/x-ndjson` or `?stream=true` the answer streams progress lines; closing the connection "
          "cancels the migration", body="MigrateRequest", body_required=True,
          params=(DOMAIN, Param("stream", "query", {"type": "boolean"}, "Stream NDJSON progress lines.")),
          responses={200: ("Migrated (or, streamed: progress, then a result or error line)",
                           ("MigrateResult", NDJSON)),
                     **ERRORS_BODY, **ERRORS_DOMAIN,
                     409: ("Not running, busy, cancelled, or the migration failed (the domain runs on here)",
                           "Error")}),
    Route("post", "/v1/domains/{domain}/migrate/cancel", "cancelMigration",
          "Cancel a running migration; the domain keeps running here", params=(DOMAIN,),
          responses={200: ("Cancelled", "Done"), **ERRORS_DOMAIN, 409: ("No migration is running", "Error")}),
    Route("post", "/v1/domains/{domain}/incoming/wait", "waitIncoming",
          "Wait until an incoming domain has been received and runs", body="WaitIncomingRequest",
          params=(DOMAIN,),
          responses={200: ("Received; the domain runs (or is paused)", "Domain"), **ERRORS_BODY,
                     **ERRORS_DOMAIN, 409: ("The migration failed; the domain is gone (the message says why)",
                                             "Error"),
                     504: ("Still incoming after `timeout`", "Error")}),
    Route("get", "/v1/domains/{domain}/vcpus", "listVcpus", "The domain's vCPUs (xl vcpu-list)",
          params=(DOMAIN,), responses={200: ("vCPUs", "VcpuList"), **ERRORS_DOMAIN}),
    Route("put", "/v1/domains/{domain}/vcpus", "setVcpus",
          "Ask the guest to run N of its vCPUs (xl vcpu-set DOM N): it takes the others down itself",
          body="VcpuSetRequest", body_required=True, params=(DOMAIN,),
          responses={200: ("Asked; the guest follows through cpu/N/availability", "VcpuSet"), **ERRORS_BODY,
                     **ERRORS_DOMAIN, 409: ("Not running", "Error")}),
    Route("put", "/v1/domains/{domain}/memory", "setMemory",
          "Set the memory the guest should hold (xl mem-set DOM SIZE): its balloon driver gives memory back or "
          "takes it again",
          body="MemSetRequest", body_required=True, params=(DOMAIN,),
          responses={200: ("Asked; the guest follows memory/target", "MemSet"), **ERRORS_BODY,
                     **ERRORS_DOMAIN, 409: ("Not running", "Error")}),
    Route("get", "/v1/domains/{domain}/sched", "getSched", "Weight and cap (xl sched-credit -d DOM)",
          params=(DOMAIN,), responses={200: ("In force", "SchedState"), **ERRORS_DOMAIN}),
    Route("put", "/v1/domains/{domain}/sched", "setSched",
          "Change weight and/or cap of a running domain (xl sched-credit -d DOM -w W -c C)",
          body="SchedRequest", body_required=True, params=(DOMAIN,),
          responses={200: ("Applied; the parameters now in force", "SchedState"), **ERRORS_BODY,
                     **ERRORS_DOMAIN, 409: ("Not running, or resource control is unavailable here", "Error")}),
    Route("get", "/v1/domains/{domain}/console/log", "getConsoleLog", "The domain's console output so far",
          params=(DOMAIN,
                  Param("offset", "query", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                        "Start at this byte."),
                  Param("tail", "query", {"type": "integer", "minimum": 1, "maximum": MAX_OFFSET},
                        "Only the last N bytes.")),
          responses={200: ("Raw console bytes", "application/octet-stream"), **ERRORS_BODY, **ERRORS_DOMAIN}),
    Route("get", "/v1/domains/{domain}/console", "attachConsole",
          "The console as a WebSocket: binary frames of guest output; frames sent are guest input",
          params=(DOMAIN,),
          responses={101: ("Switching to the WebSocket protocol", None),
                     400: ("Not a WebSocket upgrade request", "Error"), **ERRORS_DOMAIN, **ERRORS_STATE}),
    Route("post", "/v1/domains/{domain}/run", "runCommand",
          "Run a shell command in the guest through its console shell (marker protocol)",
          body="RunRequest", body_required=True, params=(DOMAIN,),
          responses={200: ("The command's exit status and output", "RunResult"), **ERRORS_BODY,
                     **ERRORS_DOMAIN, **ERRORS_STATE, 504: ("No answer within `timeout`", "Error")}),
)


def _content(target: str | tuple[str, ...] | None) -> dict[str, Any] | None:
    if target is None:
        return None
    if isinstance(target, tuple):
        return {k: v for t in target for k, v in (_content(t) or {}).items()}
    if target == NDJSON:
        # One JSON object per line; itemSchema is how OpenAPI (3.2) names the schema of each.
        return {NDJSON: {"schema": {"type": "string"}, "itemSchema": {"$ref": "#/components/schemas/MigrateEvent"}}}
    if "/" in target:
        return {target: {"schema": {"type": "string", "format": "binary"}}}
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{target}"}}}


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``ROUTES`` and ``SCHEMAS`` (deterministic)."""
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        op: dict[str, Any] = {"operationId": r.operation_id, "summary": r.summary}
        if r.params:
            op["parameters"] = [
                {"name": p.name, "in": p.where, "required": p.required, "schema": p.schema,
                 **({"description": p.description} if p.description else {})}
                for p in r.params
            ]
        if r.body:
            op["requestBody"] = {"required": r.body_required, "content": _content(r.body)}
        responses: dict[str, Any] = {}
        for status, (desc, target) in sorted(r.responses.items()):
            resp: dict[str, Any] = {"description": desc}
            content = _content(target)
            if content:
                resp["content"] = content
            responses[str(status)] = resp
        responses.setdefault("500", {"description": "Internal error; the daemon keeps running",
                                     "content": _content("Error")})
        op["responses"] = responses
        paths.setdefault(r.path, {})[r.method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hospesd",
            "version": f"{API_VERSION}",
            "description": (
                "The Hospes node daemon: domains (Xen PV guests on KVM) and their consoles. Served on a Unix "
                "socket ($HOSPES_RUN_DIR/hospesd.sock); over TCP only with `Authorization: Bearer <token>`, "
                "and over HTTPS (hospesd --tls-cert/--tls-key) unless it listens on a loopback address. "
                "Bodies are at most 1 MiB (else 413)."
            ),
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Required on TCP listeners only."}},
        },
        "paths": paths,
    }


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(dumps(build_openapi()))
