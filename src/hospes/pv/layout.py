"""Where everything lives: the guest-physical and virtual layout of a PV domain.

Guest-physical space (one memfd, see :mod:`hospes.machine.memory`)::

    [0, ram)                guest RAM = "machine" frames (identity p2m)
    [ram, ram+xen)          frames the guest maps but does not own: shared_info,
                            grant-table frames. Above the e820 RAM end, so Linux
                            treats them as identity-mapped (pv-abi.md §3.4).
    [hv, hv+hvsize)         hypervisor-private: M2P, hypervisor page tables,
                            IDT, GDT/TSS/stacks per vCPU, stubs. Never mappable
                            by the guest.

Virtual space: the hypervisor owns L4 slots 256-271 of every guest L4, like Xen.
Slot 256 cannot be used on PVM hosts (platform.md), so the read-only M2P sits
in slot 257 and is announced through XENMEM_machphys_mapping; Linux takes the
address from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from hospes.machine.memory import PAGE_SIZE

L4_SHIFT = 39


def slot_va(slot: int) -> int:
    va = slot << L4_SHIFT
    if slot >= 256:
        va |= 0xFFFF_0000_0000_0000
    return va


SLOT_M2P = 257
SLOT_HV = 258          # supervisor-only: IDT, GDT windows, TSS, stacks, ring-0 code
SLOT_USER_STUB = 259   # user-executable: the SYSCALL entry stub (PVM runs it at CPL 3)
SLOT_DIRECT = 260      # supervisor-only: all guest-physical memory, for the in-VM writer
SLOT_KDATA = 261       # each vCPU's kernel-data page, guest-kernel-writable; read-only zeros in user roots
HV_SLOTS = (SLOT_M2P, SLOT_HV, SLOT_USER_STUB, SLOT_DIRECT, SLOT_KDATA)

M2P_VIRT_START = slot_va(SLOT_M2P)
HV_VIRT = slot_va(SLOT_HV)
USER_STUB_VIRT = slot_va(SLOT_USER_STUB)
DIRECT_VIRT = slot_va(SLOT_DIRECT)
KDATA_VIRT = slot_va(SLOT_KDATA)

# A vCPU's kernel-data page: state a guest kernel may set with stack_switch and
# set_segment_base(SEGBASE_GS_USER), which the SYSCALL stub stores itself (no
# exit) and Hospes reads where it needs it (see hospes.pv.trampoline). Offsets:
KD_MAGIC = 0           # KD_MAGIC_VALUE in a real page; the user roots' page reads 0 here
KD_KERNEL_SS = 8       # stack_switch's ss, as the guest gave it
KD_KERNEL_SP = 16      # stack_switch's esp
KD_GS_USER = 24        # the user GS base
KD_MAGIC_VALUE = 1
SYSCALL_STUB_STRIDE = 128   # each vCPU's copy of the SYSCALL stub (it names its own page)

# Fixed offsets inside the HV slot.
IDT_VA = HV_VIRT
STUBS_VA = HV_VIRT + 0x1000
STUB_PAGES = 2
PERCPU_VA = HV_VIRT + 0x100000
PERCPU_STRIDE = 0x100000

# Inside a vCPU's per-CPU area.
GDT_WINDOW_OFF = 0x00000       # 15 pages: 14 guest GDT frames + the hypervisor's page
GDT_WINDOW_PAGES = 15
TSS_OFF = 0x10000              # 3 pages: 104-byte TSS + 8 KiB I/O bitmap + terminator
TSS_PAGES = 3
STACK_OFF = 0x20000            # ring-0 stack, 4 pages
STACK_PAGES = 4
KDATA_ALIAS_OFF = 0x24000      # the vCPU's kernel-data page again, supervisor-only, right above the stack
CONTROL_OFF = 0x28000          # writer area: pushes below FRAME_OFF, frame + control block above
CONTROL_PAGES = 12
FRAME_OFF = 0x2C000
IST_OFF = 0x38000              # #DF stack
IST_PAGES = 2
PERCPU_MAPPED = (
    (GDT_WINDOW_OFF, GDT_WINDOW_PAGES),
    (TSS_OFF, TSS_PAGES),
    (STACK_OFF, STACK_PAGES),
    (CONTROL_OFF, CONTROL_PAGES),
    (IST_OFF, IST_PAGES),
)

# Guest-visible I/O ports our stubs use to leave the VM.
PORT_EXCEPTION = 0xE0
PORT_SYSCALL = 0xE1
PORT_WRITER_CHUNK = 0xE2

XEN_FRAMES = 64                 # shared_info + grant frames + spare
SHARED_INFO_INDEX = 0
GRANT_FRAME_INDEX = 1
MAX_GRANT_FRAMES = 32

# Writer control block capacity (8-byte entry addresses after a 24-byte header).
WRITER_MAX_ENTRIES = (CONTROL_PAGES * PAGE_SIZE - (FRAME_OFF - CONTROL_OFF) - 40 - 24) // 8


def percpu_va(vcpu: int) -> int:
    return PERCPU_VA + vcpu * PERCPU_STRIDE


def kdata_va(vcpu: int) -> int:
    return KDATA_VIRT + vcpu * PAGE_SIZE


def pages_for(nbytes: int) -> int:
    return (nbytes + PAGE_SIZE - 1) // PAGE_SIZE


@dataclass(frozen=True)
class Layout:
    """The guest-physical layout of one domain, derived from its size alone."""

    ram_pages: int
    nr_vcpus: int

    @property
    def ram_bytes(self) -> int:
        return self.ram_pages * PAGE_SIZE

    @property
    def xen_gpa(self) -> int:
        return self.ram_bytes

    @property
    def shared_info_gpa(self) -> int:
        return self.xen_gpa + SHARED_INFO_INDEX * PAGE_SIZE

    def grant_frame_gpa(self, i: int) -> int:
        return self.xen_gpa + (GRANT_FRAME_INDEX + i) * PAGE_SIZE

    @property
    def hv_gpa(self) -> int:
        return self.xen_gpa + XEN_FRAMES * PAGE_SIZE

    @property
    def guest_frames(self) -> int:
        """Frames the M2P describes: RAM and the hypervisor-owned guest-mappable frames."""
        return self.ram_pages + XEN_FRAMES

    @property
    def m2p_pages(self) -> int:
        return pages_for(self.guest_frames * 8)

    @property
    def hv_pages(self) -> int:
        """Pages of the hypervisor region, generously sized for its page tables."""
        # IDT, stubs, the SYSCALL stubs, zero page, the user roots' kernel-data page
        fixed = 1 + STUB_PAGES + pages_for(self.nr_vcpus * SYSCALL_STUB_STRIDE) + 1 + 1
        percpu = (sum(n for _, n in PERCPU_MAPPED) + 1) * self.nr_vcpus   # + the kernel-data page
        # The direct map covers everything, including this region: solve roughly.
        base = self.guest_frames + self.m2p_pages + fixed + percpu
        direct_l1 = pages_for((base + base // 256 + 64) * 8)
        tables = direct_l1 + pages_for(direct_l1 * 8) + 4 * 3 + pages_for(self.m2p_pages * 8) + 16 + self.nr_vcpus * 4
        tables += 2 * (3 + pages_for(self.nr_vcpus * 8))   # the kernel-data slot's two variants
        return self.m2p_pages + fixed + percpu + tables + 64
