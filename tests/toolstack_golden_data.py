"""Fixed API objects for the golden-output tests (a fake registry: no daemon, no KVM)."""

HOST = {
    "host": "node1", "release": "6.1.0-13-amd64",
    "version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.55-1 (2023-09-29)", "machine": "x86_64",
    "nr_cpus": 2, "max_cpu_id": 1, "nr_nodes": 1, "cores_per_socket": 2, "threads_per_core": 1,
    "cpu_khz": 2100000, "virt_caps": "pv", "total_memory": 24152, "free_memory": 23020, "free_cpus": 0,
    "xen_major": 0, "xen_minor": 1, "xen_extra": ".0", "xen_version": "0.1.0", "xen_caps": "xen-3.0-x86_64",
    "xen_scheduler": "linux", "xen_pagesize": 4096, "virt_start": 0xFFFF800000000000,
    "xen_changeset": "hospes 0.1.0, Xen PV ABI 4.17.0", "xen_commandline": "",
    "cc_compiler": "CPython 3.11.7", "cc_compile_by": "hospes", "cc_compile_domain": "", "cc_compile_date": "",
    "build_id": "",
    "dom0": {"memory_mib": 23640, "vcpus": 2, "cpu_time": 1342.44, "uptime": 93784.9,
             "vcpu_times": [624.04, 742.66]},
}


def _domain(domid, name, state, flags, mem, vcpus, cpu, started, reason=None):
    return {
        "domid": domid, "name": name, "uuid": f"00000000-0000-4000-8000-{domid:012d}", "state": state,
        "flags": flags, "memory_mib": mem, "vcpus": vcpus, "max_vcpus": 1, "cpu_time": cpu,
        "created": started, "started": started, "uptime": 0.0, "boots": 1, "shutdown_reason": reason,
        "message": "", "pid": 4242 + domid if state != "crashed" else None,
        "console_log": f"/run/hospes/logs/console-{domid}.log",
        "config": {"format": 1, "name": name, "kernel": "@default", "ramdisk": "@default", "memory": 256,
                   "maxmem": 256, "vcpus": 1, "cmdline": "console=hvc0 quiet", "type": "pv", "disks": [],
                   "vifs": [], "on_poweroff": "destroy", "on_reboot": "restart", "on_crash": "destroy"},
    }


DOMAINS = [
    _domain(3, "a-domain-name-of-exactly-forty-chars-xyz", "paused", "--p---", 256, 1, 0.0, 1699999000.0),
    _domain(1, "web", "running", "-b----", 256, 1, 9.73, 1699999986.0),
    _domain(2, "db", "crashed", "---sc-", 0, 0, 12.05, 1699913600.0, "crash"),
    _domain(12, "busy", "running", "r-----", 128, 1, 123456.78, 1699827200.0 - 86400),
]

VCPUS = [
    {"domid": 1, "name": "web", "vcpus": [
        {"vcpu": 0, "online": True, "running": False, "blocked": True, "cpu": 1, "time": 9.73}]},
    {"domid": 2, "name": "db", "vcpus": [
        {"vcpu": 0, "online": False, "running": False, "blocked": False, "cpu": -1, "time": 0.0}]},
    {"domid": 3, "name": "a-domain-name-of-exactly-forty-chars-xyz", "vcpus": [
        {"vcpu": 0, "online": True, "running": False, "blocked": False, "cpu": 1, "time": 0.0}]},
    {"domid": 12, "name": "busy", "vcpus": [
        {"vcpu": 0, "online": True, "running": True, "blocked": False, "cpu": 0, "time": 123456.78},
        {"vcpu": 1, "online": False, "running": False, "blocked": False, "cpu": -1, "time": 0.0}]},
]
