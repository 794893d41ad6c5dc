"""event_channel_op, memory_op, xen_version, grant_table_op, console_io,
physdev_op, vm_assist, multicall and the dispatch itself, without KVM.

Event channels are the real :class:`~hospes.pv.evtchn.EventChannels` over the
shared_info page in guest memory, so a test reads the guest-visible pending,
mask and selector bits there. Expected answers are Xen's
(xen/include/public/event_channel.h, memory.h, version.h, grant_table.h,
physdev.h, xen.h; xen/common/event_channel.c, kernel.c, grant_table.c,
multicall.c): a port that is not in use is -EINVAL, an unknown command or
hypercall number is -ENOSYS, grant-table errors go in the status field.
"""

from __future__ import annotations

import struct

import pytest

from hospes.pv import abi
from hospes.pv import layout as L
from hospes.pv.abi import DOMID_SELF, Hypercall
from hospes.pv.errors import Errno
from hospes.pv.evtchn import EvtchnStat, Virq
from hospes.pv.hypercalls import evtchn as E, grant as G, memory as M
from pv_fakes import (ARG_VA, BUF_VA, CMDLINE, CODE_VA, DOMID, STACK_TOP, UUID, FakePvDomain, FakeVcpu, u32,
                      u64)

PENDING, MASK = 0x800, 0xA00                  # shared_info.evtchn_pending / evtchn_mask
UNMAPPED = 0x1000


def s16(data: bytes, offset: int = 0) -> int:
    return int(struct.unpack_from("<h", data, offset)[0])


# --- event_channel_op --------------------------------------------------------------------------


def evtchn_op(vcpu: FakeVcpu, cmd: int, payload: bytes) -> int:
    vcpu.put(ARG_VA, payload)
    return vcpu.hypercall(Hypercall.event_channel_op, cmd, ARG_VA)


def out_u32(vcpu: FakeVcpu, offset: int) -> int:
    return u32(vcpu.get(ARG_VA + offset, 4))


def shared_bit(dom: FakePvDomain, offset: int, port: int) -> bool:
    word = dom.mem.read_u64(dom.layout.shared_info_gpa + offset + 8 * (port // 64))
    return bool(word >> (port % 64) & 1)


def status(vcpu: FakeVcpu, port: int, dom_: int = DOMID_SELF) -> tuple[int, bytes]:
    rc = evtchn_op(vcpu, E.EVTCHNOP_status, struct.pack("<H2xI16x", dom_, port))
    return rc, vcpu.get(ARG_VA + 8, 16)


def test_alloc_unbound_returns_a_port_whose_status_names_the_remote_domain(vcpu: FakeVcpu) -> None:
    assert evtchn_op(vcpu, E.EVTCHNOP_alloc_unbound, struct.pack("<HHI", DOMID_SELF, 3, 0)) == 0
    port = out_u32(vcpu, 4)
    assert port >= 1
    rc, out = status(vcpu, port)
    assert rc == 0
    assert (u32(out, 0), u32(out, 4), struct.unpack_from("<H", out, 8)[0]) == (EvtchnStat.UNBOUND, 0, 3)


def test_alloc_unbound_in_another_domain_is_not_permitted(vcpu: FakeVcpu) -> None:
    assert evtchn_op(vcpu, E.EVTCHNOP_alloc_unbound, struct.pack("<HHI", DOMID + 1, 0, 0)) == -Errno.EPERM
    assert evtchn_op(vcpu, E.EVTCHNOP_alloc_unbound, struct.pack("<HHI", DOMID, 0, 0)) == 0


def test_bind_virq_binds_once_per_vcpu(vcpu: FakeVcpu) -> None:
    assert evtchn_op(vcpu, E.EVTCHNOP_bind_virq, struct.pack("<III", Virq.DEBUG, 1, 0)) == 0
    port = out_u32(vcpu, 8)
    rc, out = status(vcpu, port)
    assert (rc, u32(out, 0), u32(out, 4), u32(out, 8)) == (0, EvtchnStat.VIRQ, 1, Virq.DEBUG)
    assert evtchn_op(vcpu, E.EVTCHNOP_bind_virq, struct.pack("<III", Virq.DEBUG, 1, 0)) == -Errno.EEXIST
    assert evtchn_op(vcpu, E.EVTCHNOP_bind_virq, struct.pack("<III", Virq.DEBUG, 0, 0)) == 0
    assert out_u32(vcpu, 8) != port


def test_bind_virq_refuses_unknown_virqs_vcpus_and_global_virqs_off_vcpu0(vcpu: FakeVcpu) -> None:
    assert evtchn_op(vcpu, E.EVTCHNOP_bind_virq, struct.pack("<III", 24, 0, 0)) == -Errno.EINVAL
    assert evtchn_op(vcpu, E.EVTCHNOP_bind_virq, struct.pack("<III", Virq.TIMER, 2, 0)) == -Errno.ENOENT
    assert evtchn_op(vcpu, E.EVTCHNOP_bind_virq, struct.pack("<III", Virq.CONSOLE, 1, 0)) == -Errno.EINVAL


def test_send_on_an_ipi_port_marks_it_pending_and_kicks_the_bound_vcpu(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    other = dom.vcpus[1]
    assert evtchn_op(vcpu, E.EVTCHNOP_bind_ipi, struct.pack("<II", 1, 0)) == 0
    port = out_u32(vcpu, 4)
    assert evtchn_op(vcpu, E.EVTCHNOP_send, struct.pack("<I", port)) == 0
    assert shared_bit(dom, PENDING, port)
    assert dom.mem.read_u64(other.vcpu_info_gpa + 8) >> (port // 64) & 1       # evtchn_pending_sel
    assert dom.mem.buf[other.vcpu_info_gpa] == 1                               # evtchn_upcall_pending
    assert other.kicks == 1 and vcpu.kicks == 0


def test_a_masked_port_is_marked_pending_and_announced_only_when_unmasked(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert evtchn_op(vcpu, E.EVTCHNOP_bind_ipi, struct.pack("<II", 0, 0)) == 0
    port = out_u32(vcpu, 4)
    mask_word = dom.layout.shared_info_gpa + MASK + 8 * (port // 64)
    dom.mem.write_u64(mask_word, 1 << (port % 64))              # the guest masks it
    assert evtchn_op(vcpu, E.EVTCHNOP_send, struct.pack("<I", port)) == 0
    assert shared_bit(dom, PENDING, port) and dom.mem.buf[vcpu.vcpu_info_gpa] == 0
    assert evtchn_op(vcpu, E.EVTCHNOP_unmask, struct.pack("<I", port)) == 0
    assert not shared_bit(dom, MASK, port)
    assert dom.mem.buf[vcpu.vcpu_info_gpa] == 1 and vcpu.kicks == 1


def test_close_frees_the_port_and_clears_its_pending_bit(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert evtchn_op(vcpu, E.EVTCHNOP_bind_ipi, struct.pack("<II", 0, 0)) == 0
    port = out_u32(vcpu, 4)
    evtchn_op(vcpu, E.EVTCHNOP_send, struct.pack("<I", port))
    assert evtchn_op(vcpu, E.EVTCHNOP_close, struct.pack("<I", port)) == 0
    assert not shared_bit(dom, PENDING, port)
    rc, out = status(vcpu, port)
    assert (rc, u32(out, 0)) == (0, EvtchnStat.CLOSED)
    assert evtchn_op(vcpu, E.EVTCHNOP_send, struct.pack("<I", port)) == -Errno.EINVAL
    assert evtchn_op(vcpu, E.EVTCHNOP_close, struct.pack("<I", port)) == -Errno.EINVAL


@pytest.mark.parametrize("cmd", [E.EVTCHNOP_send, E.EVTCHNOP_close, E.EVTCHNOP_unmask])
def test_a_port_beyond_the_limit_is_einval(vcpu: FakeVcpu, cmd: int) -> None:
    assert evtchn_op(vcpu, cmd, struct.pack("<I", 5000)) == -Errno.EINVAL


def test_status_of_a_bad_port_or_another_domain_is_refused(vcpu: FakeVcpu) -> None:
    assert status(vcpu, 5000)[0] == -Errno.EINVAL
    assert status(vcpu, 1, dom_=DOMID + 1)[0] == -Errno.EPERM


def test_unknown_event_channel_ops_are_enosys(vcpu: FakeVcpu) -> None:
    assert evtchn_op(vcpu, 99, bytes(8)) == -Errno.ENOSYS
    assert evtchn_op(vcpu, E.EVTCHNOP_bind_pirq, bytes(8)) == -Errno.ENOSYS


# --- memory_op ----------------------------------------------------------------------------------


def test_memory_map_is_one_ram_entry_covering_the_domains_memory(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    vcpu.put(ARG_VA, struct.pack("<I4xQ", 8, BUF_VA))
    assert vcpu.hypercall(Hypercall.memory_op, M.XENMEM_memory_map, ARG_VA) == 0
    assert u32(vcpu.get(ARG_VA, 4)) == 1
    assert struct.unpack("<QQI", vcpu.get(BUF_VA, 20)) == (0, dom.layout.ram_bytes, M.E820_RAM)


def test_memory_map_with_room_for_no_entries_returns_none(vcpu: FakeVcpu) -> None:
    vcpu.put(ARG_VA, struct.pack("<I4xQ", 0, BUF_VA))
    assert vcpu.hypercall(Hypercall.memory_op, M.XENMEM_memory_map, ARG_VA) == 0
    assert u32(vcpu.get(ARG_VA, 4)) == 0


def test_maximum_and_current_reservation_are_the_ram_pages_of_this_domain_only(
        dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    for domid in (DOMID_SELF, DOMID):
        vcpu.put(ARG_VA, struct.pack("<H", domid))
        assert vcpu.hypercall(Hypercall.memory_op, M.XENMEM_maximum_reservation, ARG_VA) == dom.layout.ram_pages
        assert vcpu.hypercall(Hypercall.memory_op, M.XENMEM_current_reservation, ARG_VA) == dom.layout.ram_pages
    vcpu.put(ARG_VA, struct.pack("<H", DOMID + 1))
    assert vcpu.hypercall(Hypercall.memory_op, M.XENMEM_maximum_reservation, ARG_VA) == -Errno.ESRCH


def test_machphys_mapping_announces_the_m2p_and_the_highest_frame(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.memory_op, M.XENMEM_machphys_mapping, BUF_VA) == 0
    start, end, max_mfn = struct.unpack("<QQQ", vcpu.get(BUF_VA, 24))
    assert start == L.M2P_VIRT_START
    assert end - start >= dom.layout.guest_frames * 8            # one 8-byte entry per frame
    assert max_mfn == dom.layout.guest_frames - 1
    assert vcpu.hypercall(Hypercall.memory_op, M.XENMEM_maximum_ram_page, 0) == max_mfn


def test_unknown_memory_ops_are_enosys(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.memory_op, 99, ARG_VA) == -Errno.ENOSYS


# --- xen_version --------------------------------------------------------------------------------


def test_xen_version_is_major_and_minor(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.xen_version, 0, 0) == (abi.XEN_MAJOR << 16) | abi.XEN_MINOR


def cstring(vcpu: FakeVcpu, va: int, size: int) -> bytes:
    return vcpu.get(va, size).split(b"\0", 1)[0]


def test_xen_version_strings(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.xen_version, 1, BUF_VA) == 0
    assert cstring(vcpu, BUF_VA, 16) == abi.XEN_EXTRAVERSION.encode()
    assert vcpu.hypercall(Hypercall.xen_version, 3, BUF_VA) == 0
    assert b"xen-3.0-x86_64" in cstring(vcpu, BUF_VA, 1024).split()
    # Hospes' choice: the domain's own command line (Xen gives its own, to privileged domains only).
    assert vcpu.hypercall(Hypercall.xen_version, 9, BUF_VA) == 0
    assert cstring(vcpu, BUF_VA, 1024) == CMDLINE.encode()


def test_xen_version_guest_handle_is_the_domains_uuid(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.xen_version, 8, BUF_VA) == 0
    assert vcpu.get(BUF_VA, 16) == UUID.bytes


def test_xen_version_parameters_pagesize_and_features(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.xen_version, 5, BUF_VA) == 0
    assert u64(vcpu.get(BUF_VA, 8)) == abi.HYPERVISOR_VIRT_START
    assert vcpu.hypercall(Hypercall.xen_version, 7, 0) == 4096
    vcpu.put(ARG_VA, struct.pack("<II", 0, 0))
    assert vcpu.hypercall(Hypercall.xen_version, 6, ARG_VA) == 0
    submap = u32(vcpu.get(ARG_VA + 4, 4))
    assert submap & (1 << abi.XENFEAT_mmu_pt_update_preserve_ad)
    assert not submap & (1 << abi.XENFEAT_auto_translated_physmap)
    vcpu.put(ARG_VA, struct.pack("<II", 1, 0))
    assert vcpu.hypercall(Hypercall.xen_version, 6, ARG_VA) == -Errno.EINVAL


def test_an_unknown_xen_version_command_is_enosys(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.xen_version, 99, BUF_VA) == -Errno.ENOSYS


# --- grant_table_op -------------------------------------------------------------------------------


def setup_table(vcpu: FakeVcpu, domid: int, nr_frames: int) -> tuple[int, int]:
    vcpu.put(BUF_VA, b"\xee" * 8 * max(nr_frames, 1))
    vcpu.put(ARG_VA, struct.pack("<H2xIh6xQ", domid, nr_frames, 0x55, BUF_VA))
    rc = vcpu.hypercall(Hypercall.grant_table_op, G.GNTTABOP_setup_table, ARG_VA, 1)
    return rc, s16(vcpu.get(ARG_VA + 8, 2))


def test_setup_table_lists_the_grant_frames(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert setup_table(vcpu, DOMID_SELF, 2) == (0, G.GNTST_okay)
    frames = struct.unpack("<2Q", vcpu.get(BUF_VA, 16))
    assert frames == (dom.layout.grant_frame_gpa(0) >> 12, dom.layout.grant_frame_gpa(1) >> 12)
    assert dom.grants.nr_frames == 2


def test_query_size_reports_the_frames_set_up_and_the_maximum(vcpu: FakeVcpu) -> None:
    setup_table(vcpu, DOMID_SELF, 3)
    vcpu.put(ARG_VA, struct.pack("<H2xIIh2x", DOMID_SELF, 0, 0, 0x55))
    assert vcpu.hypercall(Hypercall.grant_table_op, G.GNTTABOP_query_size, ARG_VA, 1) == 0
    nr, max_nr, st = struct.unpack("<IIh", vcpu.get(ARG_VA + 4, 10))
    assert (nr, max_nr, st) == (3, L.MAX_GRANT_FRAMES, G.GNTST_okay)


def test_setup_table_for_another_domain_reports_bad_domain_in_the_status(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert setup_table(vcpu, DOMID + 1, 1) == (0, G.GNTST_bad_domain)
    # Nothing written, and the table keeps the one frame a domain starts with (Xen's INITIAL_NR_GRANT_FRAMES).
    assert vcpu.get(BUF_VA, 8) == b"\xee" * 8 and dom.grants.nr_frames == 1


def test_query_size_for_a_domain_that_does_not_exist_reports_bad_domain(vcpu: FakeVcpu) -> None:
    vcpu.put(ARG_VA, struct.pack("<H2xIIh2x", DOMID + 1, 0, 0, 0x55))
    assert vcpu.hypercall(Hypercall.grant_table_op, G.GNTTABOP_query_size, ARG_VA, 1) == 0
    assert s16(vcpu.get(ARG_VA + 12, 2)) == G.GNTST_bad_domain


def test_setup_table_beyond_the_maximum_is_a_general_error(vcpu: FakeVcpu) -> None:
    assert setup_table(vcpu, DOMID_SELF, L.MAX_GRANT_FRAMES + 1) == (0, G.GNTST_general_error)


def test_grant_table_op_takes_one_setup_at_a_time_and_knows_its_commands(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.grant_table_op, G.GNTTABOP_setup_table, ARG_VA, 2) == -Errno.EINVAL
    assert vcpu.hypercall(Hypercall.grant_table_op, 99, ARG_VA, 1) == -Errno.ENOSYS


# --- console_io, physdev_op, vm_assist ------------------------------------------------------------------


def test_console_io_write_gives_the_hypervisor_log_prefixed_lines(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    # Xen's guest_console_write: whole lines, "(d<domid>) " in front, unprintable bytes dropped.
    vcpu.put(BUF_VA, b"hello, world\nhalf a \x07line")
    assert vcpu.hypercall(Hypercall.console_io, 0, 26, BUF_VA) == 0
    assert dom.record.console == [b"(d5) hello, world\n"]
    vcpu.put(BUF_VA, b"\tdone\n")
    assert vcpu.hypercall(Hypercall.console_io, 0, 6, BUF_VA) == 0
    assert dom.record.console == [b"(d5) hello, world\n", b"(d5) half a line\tdone\n"]


def test_console_io_lines_longer_than_xens_buffer_come_in_pieces() -> None:
    from hospes.pv.console_log import LINE_MAX, ConsoleIoLog

    log = ConsoleIoLog(7)
    lines = log.feed(b"x" * (LINE_MAX + 10) + b"\n")
    assert lines == [b"(d7) " + b"x" * LINE_MAX + b"\n", b"(d7) " + b"x" * 10 + b"\n"]


def test_console_io_refuses_oversized_writes_and_unknown_commands(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    # Hospes' limit: one call writes at most 16 KiB.
    assert vcpu.hypercall(Hypercall.console_io, 0, 16385, BUF_VA) == -Errno.EINVAL
    assert vcpu.hypercall(Hypercall.console_io, 7, 1, BUF_VA) == -Errno.ENOSYS
    assert vcpu.hypercall(Hypercall.console_io, 0, 8, UNMAPPED) == -Errno.EFAULT
    assert dom.record.console == []


def test_physdev_set_iopl_sets_the_virtual_iopl_up_to_three(vcpu: FakeVcpu) -> None:
    vcpu.put(ARG_VA, struct.pack("<I", 3))
    assert vcpu.hypercall(Hypercall.physdev_op, 6, ARG_VA) == 0
    assert vcpu.iopl == 3
    vcpu.put(ARG_VA, struct.pack("<I", 4))
    assert vcpu.hypercall(Hypercall.physdev_op, 6, ARG_VA) == -Errno.EINVAL
    assert vcpu.iopl == 3
    assert vcpu.hypercall(Hypercall.physdev_op, 99, ARG_VA) == -Errno.ENOSYS


VMASST_CMD_enable, VMASST_CMD_disable = 0, 1
VMASST_TYPE_writable_pagetables = 2


def test_vm_assist_enables_and_disables_a_valid_assist(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.vm_assist, VMASST_CMD_enable, VMASST_TYPE_writable_pagetables) == 0
    assert VMASST_TYPE_writable_pagetables in dom.vm_assist
    assert vcpu.hypercall(Hypercall.vm_assist, VMASST_CMD_disable, VMASST_TYPE_writable_pagetables) == 0
    assert VMASST_TYPE_writable_pagetables not in dom.vm_assist


def test_vm_assist_refuses_an_unknown_type(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.vm_assist, VMASST_CMD_enable, 6) == -Errno.EINVAL
    assert vcpu.hypercall(Hypercall.vm_assist, VMASST_CMD_enable, 64) == -Errno.EINVAL
    assert dom.vm_assist == set()


def test_vm_assist_with_an_unknown_command_is_enosys(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.vm_assist, 7, VMASST_TYPE_writable_pagetables) == -Errno.ENOSYS


# --- multicall -------------------------------------------------------------------------------------


def multicall(vcpu: FakeVcpu, *calls: tuple[int, ...]) -> tuple[int, list[int]]:
    entries = b""
    for op, *args in calls:
        args += [0] * (6 - len(args))
        entries += struct.pack("<QQ6Q", op, 0xDEAD_BEEF, *args)
    list_va = BUF_VA + 0x800
    vcpu.put(list_va, entries)
    rc = vcpu.hypercall(Hypercall.multicall, list_va, len(calls))
    results = [struct.unpack("<q", vcpu.get(list_va + 64 * i + 8, 8))[0] for i in range(len(calls))]
    return rc, results


def test_multicall_runs_each_entry_and_writes_its_result_back(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    vcpu.put(ARG_VA, b"ok\n")
    rc, results = multicall(
        vcpu,
        (Hypercall.xen_version, 0, 0),
        (Hypercall.console_io, 0, 3, ARG_VA),
        (Hypercall.xen_version, 99, 0),                 # fails; the batch goes on
        (Hypercall.fpu_taskswitch, 1),
    )
    assert rc == 0
    assert results == [(abi.XEN_MAJOR << 16) | abi.XEN_MINOR, 0, -Errno.ENOSYS, 0]
    assert dom.record.console == [b"(d5) ok\n"] and vcpu.cr0_ts


def test_multicall_refuses_a_nested_multicall(vcpu: FakeVcpu) -> None:
    rc, results = multicall(vcpu, (Hypercall.multicall, BUF_VA, 1), (Hypercall.xen_version, 0))
    assert rc == 0
    assert results == [-Errno.EINVAL, (abi.XEN_MAJOR << 16) | abi.XEN_MINOR]


def test_an_iret_entry_takes_effect_and_ends_the_batch(vcpu: FakeVcpu) -> None:
    # Xen: pv_do_multicall_call answers mc_exit for iret.
    frame_va = STACK_TOP - 0x100
    target, new_rsp = CODE_VA, STACK_TOP - 0x40
    vcpu.put(frame_va, struct.pack("<9Q", 0x1234, 0x11, 0x22, 0, target, 0xE030, 0x202, new_rsp, 0xE02B))
    vcpu.regs.rsp = frame_va
    rc, results = multicall(vcpu, (Hypercall.xen_version, 0), (Hypercall.iret,), (Hypercall.fpu_taskswitch, 1))
    assert rc == 0x1234                                  # RAX from the frame, not the multicall's 0
    assert results == [(abi.XEN_MAJOR << 16) | abi.XEN_MINOR, 0x1234, 0xDEAD_BEEF]
    assert (vcpu.t_rip, vcpu.t_rsp, vcpu.t_cs, vcpu.kernel_mode) == (target, new_rsp, 0xE033, True)
    assert not vcpu.cr0_ts                               # the entry after the iret never ran


def test_multicall_entries_with_unknown_numbers_are_enosys(vcpu: FakeVcpu) -> None:
    assert multicall(vcpu, (50,), (Hypercall.xen_version, 0)) == (
        0, [-Errno.ENOSYS, (abi.XEN_MAJOR << 16) | abi.XEN_MINOR])


# --- the dispatch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("nr", [43, 50, 63, 64, 1000])
def test_unknown_hypercall_numbers_are_enosys(vcpu: FakeVcpu, nr: int) -> None:
    assert vcpu.hypercall(nr, 1, 2, 3, 4, 5) == -Errno.ENOSYS


def test_a_bad_guest_pointer_is_efault_and_each_hypercall_is_counted(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.xen_version, 1, UNMAPPED) == -Errno.EFAULT
    assert vcpu.hypercall(Hypercall.xen_version, 0, 0) > 0
    assert vcpu.stats[f"hypercall:{int(Hypercall.xen_version)}"] == 2


def test_multicall_result_is_an_unsigned_long(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    # get_debugreg of a kernel address inside a multicall once ended the domain
    # ("internal error": the result was packed as a signed value).
    address = 0xFFFF_FFFF_8100_0000
    assert vcpu.hypercall(Hypercall.set_debugreg, 0, address) == 0
    rc, results = multicall(vcpu, (Hypercall.get_debugreg, 0), (Hypercall.get_debugreg, 7))
    assert rc == 0
    assert [r & 0xFFFF_FFFF_FFFF_FFFF for r in results] == [address, 0x400]
    assert dom.record.crashes == []
