"""The ring-0 trampoline: what Hospes puts inside each KVM VM besides the guest.

Xen runs in ring 0 above the guest; Hospes runs in a host process, so inside
the VM it only needs a few pages that hand control to Python:

* an IDT whose 256 gates lead to 16-byte stubs that push (error code, vector)
  and leave the VM with ``out %al, $PORT_EXCEPTION``; Python reads the frame
  from the ring-0 stack. Gates are DPL 0 except 3, 4 and 0x80, as in Xen, so
  ``int n`` from the guest becomes #GP((n << 3) | 2).
* the SYSCALL entry: one ``out %al, $PORT_SYSCALL`` on a *user-executable*
  page whose port the TSS I/O bitmap lets through. On PVM hosts SYSCALL keeps
  running at CPL 3 (platform.md); on VT-x/SVM it lands at CPL 0. The same stub
  leaves the VM either way. Each vCPU has its own copy (its LSTAR), which
  answers three of a guest kernel's hypercalls without leaving the VM: a
  vcpu_op on an absent vCPU, stack_switch and set_segment_base of the user GS
  base, the last two by storing into the vCPU's *kernel-data page*.
* the kernel-data pages (one per vCPU, slot 261): what stack_switch and
  set_segment_base(SEGBASE_GS_USER) set, which Hospes reads from there. The
  guest kernel may write them (they hold nothing it could not set with those
  hypercalls), its user space may not: the slot maps them user-writable in
  the L4s the guest runs its kernel on, and a read-only page of zeros in the
  L4s it runs user space on (``PvMmu.user_root``), where the stub then finds
  no magic word and leaves the VM as for any hypercall.
* the *writer*: a ring-0 routine that re-stores a batch of page-table
  entries (already written by Hospes) through a direct map of guest-physical
  memory, reloads CR3 and ``iretq``s to the guest. This KVM shadows page
  tables and never sees the VMM's own stores (platform.md), so a changed
  entry whose old value was present must also be written by guest-mode code
  for KVM to drop its shadow of it; batching them costs one VM entry per
  hypercall.
* per vCPU: a GDT window (14 guest pages + Xen's reserved page with the flat
  ring-3 selectors), a TSS with the I/O bitmap and an IST stack for #DF, and a
  ring-0 stack.

All of it is mapped from L4 slots that every guest L4 gets (see
:mod:`hospes.pv.layout`); those subtrees are supervisor-only except the M2P
(read-only, user), the SYSCALL stubs (execute-only, user) and the
kernel-data slot.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field

from hospes.machine.memory import PAGE_SIZE, GuestMemory
from hospes.pv import abi, layout as L
from hospes.pv.abi import PTE_A, PTE_D, PTE_NX, PTE_P, PTE_RW, PTE_US

# --- machine code (assembled with GNU as; listings kept for the reader) ------

# exc stub without error code:  push $0; push $vec; out %al,$0xe0; add $16,%rsp; iretq
# exc stub with error code:              push $vec; out %al,$0xe0; add $16,%rsp; iretq
_OUT_EXC = bytes([0xE6, L.PORT_EXCEPTION])
_ADD_RSP_16_IRETQ = bytes([0x48, 0x83, 0xC4, 0x10, 0x48, 0xCF])
STUB_SIZE = 16

# writer: push rax,rcx,rsi,rdi; lea rsi,[rsp+0x48]; mov rcx,[rsi+16]; add rsi,24
#   1: jrcxz 2f; mov rdi,[rsi]; lock orq $0,(%rdi); add rsi,8; dec rcx; jmp 1b
#   2: mov rax,[rsp+0x50]; test rax,rax; jz 3f; invlpg [rax]
#   3: mov rax,[rsp+0x48]; test rax,rax; jz 4f; mov cr3,rax
#   4: pop rdi,rsi,rcx,rax; iretq
# The control block sits right above the 5-qword iretq frame that RSP points at:
#   +0 CR3 to load (0: keep, no flush), +8 address to invlpg (0: none),
#   +16 count, +24 the entries' addresses in the direct map.
# Hospes has already stored each entry; the writer's `lock or $0` writes back
# whatever the entry holds when it runs, atomically, so KVM's write tracking
# drops its shadow of the entry. Writing back the current value rather than a
# queued one means two vCPUs' writers can never leave an older value in memory
# than the one Hospes validated last.
WRITER_CODE = bytes.fromhex(
    "50515657" "488d742448" "488b4e10" "4883c618"
    "e311" "488b3e" "f048830f00" "4883c608" "48ffc9" "ebed"
    "488b442450" "4885c0" "7403" "0f0138"
    "488b442448" "4885c0" "7403" "0f22d8"
    "5f5e5958" "48cf"
)
# writer1: the common case of one entry and no flush, in 5 instructions
# (every ring-0 instruction is emulated on PVM, ~1 us each):
#   push rdi; mov rdi,[rsp+0x48]; lock orq $0,(%rdi); pop rdi; iretq
#   (same control block layout as the writer)
WRITER1_CODE = bytes.fromhex("57" "488b7c2448" "f048830f00" "5f" "48cf")
# writer1 on the way back from a hypercall, whose argument registers the Xen ABI
# lets the hypervisor clobber (xen-x86_64.h): Hospes puts the entry's address in
# RDI itself, leaving 2 instructions:  lock orq $0,(%rdi); iretq
WRITER1_RDI_CODE = bytes.fromhex("f048830f00" "48cf")

# The #GP stub's own code answers, inside the VM and without an exit, the two
# privileged instructions a Linux boot executes most: ~5,600 kernel `cli`s (in
# SLUB before alternatives are applied; cli and sti are no-ops where Xen's vIOPL
# allows them) and ~1,700 `rdmsr` of MSR_KERNEL_GS_BASE (one per context switch:
# the user GS base, which Hospes keeps while the guest kernel runs). The top of
# the ring-0 stack holds the mode, kept by hospes.pv.vcpu, and the vCPU's
# kernel-data page is mapped right above it (the user GS base there may have
# been set by the SYSCALL stub, with no exit since); RSP0 lies below:
#   top-8:  flags byte: bit 0 cli/sti are no-ops here, bit 1 guest kernel mode
#   top+KD_GS_USER: the user GS base
#       push %rax; mov 16(%rsp),%rax
#   probe: movzwl (%rax),%eax                   (a fault here: Python takes the slow path)
#       cmp $0x320f,%ax; je 1f                  (rdmsr)
#       or $1,%al; cmp $0xfb,%al; jne slow      (cli or sti, without prefixes)
#       testb $1,33(%rsp); jnz slow             (TF: Python raises the single-step #DB)
#       testb $1,80(%rsp); jz slow
#       incq 16(%rsp); pop %rax; add $8,%rsp; iretq
#    1: cmp $0xc0000102,%ecx; jne slow; testb $2,80(%rsp); jz slow; testb $1,33(%rsp); jnz slow
#       mov 112(%rsp),%eax; mov 116(%rsp),%edx; addq $2,16(%rsp); add $16,%rsp; iretq
#   slow: pop %rax; push $13; out %al,$0xe0; add $16,%rsp; iretq   (the plain stub)
# A #GP in Hospes' own ring-0 code (an iretq with a bad frame) finds neither
# instruction at its RIP, so it never reads the flags from a stack it is not on.
GP_CODE = bytes.fromhex(
    "50" "488b442410" "0fb700" "663d0f32" "7420" "0c01" "3cfb" "7544" "f644242101" "753d" "f644245001" "7436"
    "48ff442410" "58" "4883c408" "48cf"
    "81f9020100c0" "7522" "f644245002" "741b" "f644242101" "7514" "8b442470" "8b542474" "488344241002"
    "4883c410" "48cf"
    "58" "6a0d" "e6e0" "4883c410" "48cf"
)
GP_PROBE_OFFSET = 0x06
GP_SLOW_OFFSET = 0x59
GP_FLAGS_FROM_TOP = 8        # distance below the ring-0 stack top
RSP0_FROM_TOP = 32
# The rdmsr path reads the user GS base at top + KD_GS_USER: RSP is top-88 there
# (the 6-word #GP frame and the pushed RAX below RSP0).
assert L.KD_GS_USER + 88 == 112 and L.KDATA_ALIAS_OFF == L.STACK_OFF + 4 * PAGE_SIZE
GP_CLI_NOOP = 1
GP_KERNEL_MODE = 2

# Where the writer returns between chunks of a batch too big for one control
# block: out %al,$0xe2; ud2 (ring 0).
CHUNK_EXIT_STUB = bytes([0xE6, L.PORT_WRITER_CHUNK, 0x0F, 0x0B])

# The SYSCALL entry, one copy per vCPU (its LSTAR). A SYSCALL from the upper
# half is a guest kernel's hypercall (Linux's user space lies in the lower half,
# where a system call 24 is sched_yield and must reach the guest kernel). Three
# of those are answered here, natively at CPL 3 on PVM, without an exit:
# * vcpu_op on a vCPU id at or beyond the domain's: -ENOENT, as Xen answers any
#   vcpu_op there. Linux probes every possible id (NR_CPUS, 8192 in Debian's
#   kernels) with VCPUOP_is_up at boot.
# * stack_switch(ss, esp) and set_segment_base(SEGBASE_GS_USER, canonical base):
#   one of each per guest context switch. Stored into this vCPU's kernel-data
#   page when its magic word is there (a guest kernel's L4; not a user root's).
# Everything else, or a page without the magic, leaves through the port.
#    0: test %rcx,%rcx; jns out
#       cmp $24,%rax; je is_up; cmp $3,%rax; je stack_switch; cmp $25,%rax; jne out
#       cmp $1,%rdi; jne out                          (SEGBASE_GS_USER only)
#       mov %rsi,%rdx; shl $16,%rdx; sar $16,%rdx; cmp %rsi,%rdx; jne out   (canonical)
#       movabs $kdata,%rdx; cmpq $1,(%rdx); jne out; mov %rsi,24(%rdx); jmp done
#   stack_switch: movabs $kdata,%rdx; cmpq $1,(%rdx); jne out; mov %rdi,8(%rdx); mov %rsi,16(%rdx)
#   done: xor %eax,%eax; push %r11; popfq; jmp *%rcx          (SYSRET's RIP and RFLAGS)
#   is_up: cmp $max_vcpus,%esi; jb out                (Xen reads the id as an unsigned int)
#       mov $-ENOENT,%rax; push %r11; popfq; jmp *%rcx
#   out: out %al,$0xe1; ud2                          (a ud2 makes a stray fall-through loud)
# RDX is free: Xen's ABI lets a hypercall clobber the argument registers it does
# not return in. SFMASK keeps IF, so POPF at CPL 3 has nothing to restore that it cannot.
SYSCALL_OUT_OFFSET = 0x76


def syscall_stub(max_vcpus: int, kdata: int) -> bytes:
    """This vCPU's SYSCALL entry; ``kdata`` is the virtual address of its kernel-data page."""
    addr = struct.pack("<Q", kdata)
    code = bytes.fromhex(
        "4885c9" "7971" "4883f818" "7457" "4883f803" "7432" "4883f819" "755f"
        "4883ff01" "7559" "4889f2" "48c1e210" "48c1fa10" "4839f2" "7549") + b"\x48\xba" + addr + bytes.fromhex(
        "48833a01" "7539" "48897218" "eb18") + b"\x48\xba" + addr + bytes.fromhex(
        "48833a01" "7523" "48897a08" "48897210"
        "31c0" "4153" "9d" "ffe1") + b"\x81\xfe" + struct.pack("<I", max_vcpus) + bytes.fromhex(
        "720c" "48c7c0feffffff" "4153" "9d" "ffe1")
    assert len(code) == SYSCALL_OUT_OFFSET
    code += bytes([0xE6, L.PORT_SYSCALL, 0x0F, 0x0B])
    assert len(code) <= L.SYSCALL_STUB_STRIDE
    return code

HV_TABLE_FLAGS = PTE_P | PTE_RW | PTE_A | PTE_D


def _exception_stub(vector: int) -> bytes:
    code = b"" if vector in abi.ERROR_CODE_VECTORS else b"\x6a\x00"
    code += b"\x68" + struct.pack("<I", vector) + _OUT_EXC + _ADD_RSP_16_IRETQ
    assert len(code) <= STUB_SIZE
    return code.ljust(STUB_SIZE, b"\xcc")


def _gate(offset: int, dpl: int, ist: int = 0) -> bytes:
    low = (
        (offset & 0xFFFF)
        | (abi.HYPERVISOR_CS << 16)
        | (ist << 32)
        | (0xE << 40)
        | (dpl << 45)
        | (1 << 47)
        | (((offset >> 16) & 0xFFFF) << 48)
    )
    return struct.pack("<QQ", low, offset >> 32)


def _tss_descriptor(base: int, limit: int) -> tuple[int, int]:
    low = (
        (limit & 0xFFFF)
        | ((base & 0xFFFFFF) << 16)
        | (0x9 << 40)
        | (1 << 47)
        | (((limit >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56)
    )
    return low, base >> 32


# Xen's reserved GDT page (page 14 of the window), as offsets into that page.
RESERVED_GDT = {
    abi.HYPERVISOR_CS & 0xFF8: 0x00AF9B000000FFFF,
    abi.HYPERVISOR_DS & 0xFF8: 0x00CF93000000FFFF,
    abi.FLAT_RING3_CS32 & 0xFF8: 0x00CFFB000000FFFF,
    abi.FLAT_RING3_DS & 0xFF8: 0x00CFF3000000FFFF,
    abi.FLAT_RING3_CS64 & 0xFF8: 0x00AFFB000000FFFF,
}
TSS_LIMIT = 0x68 + 8192


@dataclass
class VcpuArea:
    """Guest-physical addresses of one vCPU's trampoline pages."""

    vcpu: int
    va: int
    page_gpa: dict[int, int] = field(default_factory=dict)  # va -> gpa for every mapped page
    gdt_pte_gpa: int = 0         # GPA of the L1 entry mapping window page 0
    reserved_gdt_gpa: int = 0
    kdata_gpa: int = 0           # the kernel-data page (layout.KD_*)
    syscall_stub_va: int = 0     # this vCPU's SYSCALL entry (its LSTAR)

    @property
    def stack_top(self) -> int:
        return self.va + L.STACK_OFF + L.STACK_PAGES * PAGE_SIZE

    @property
    def gp_flags_va(self) -> int:
        """The #GP fast path's flags byte (GP_CLI_NOOP, GP_KERNEL_MODE)."""
        return self.stack_top - GP_FLAGS_FROM_TOP

    @property
    def syscall_out_va(self) -> int:
        """The stub's ``out``: where a SYSCALL exit stops (its end, on VT-x's fall-through)."""
        return self.syscall_stub_va + SYSCALL_OUT_OFFSET

    @property
    def syscall_stub_end(self) -> int:
        return self.syscall_stub_va + SYSCALL_OUT_OFFSET + 4

    @property
    def frame_va(self) -> int:
        return self.va + L.FRAME_OFF

    @property
    def gdt_va(self) -> int:
        return self.va + L.GDT_WINDOW_OFF

    @property
    def tss_va(self) -> int:
        return self.va + L.TSS_OFF

    def gpa_of(self, va: int) -> int:
        return self.page_gpa[va & ~0xFFF] + (va & 0xFFF)


class Trampoline:
    """Builds and owns the hypervisor region of one domain's memory."""

    def __init__(self, mem: GuestMemory, lay: L.Layout) -> None:
        self.mem = mem
        self.lay = lay
        region = mem.region("hv")
        self._next = region.gpa
        self._end = region.end
        self.l4_entries: dict[int, int] = {}
        self._l3: dict[int, int] = {}
        self.zero_page = self._alloc()
        self.vcpus: list[VcpuArea] = []
        self._hv_page_gpa: dict[int, int] = {}
        self._build_m2p()
        self._build_code()
        self._build_direct_map()
        for v in range(lay.nr_vcpus):
            self.vcpus.append(self._build_vcpu(v))
        self.kdata_user_l4e = self._build_kdata_for_user_roots()

    # --- allocation and mapping ---------------------------------------------

    def _alloc(self, pages: int = 1) -> int:
        gpa = self._next
        self._next += pages * PAGE_SIZE
        if self._next > self._end:
            raise RuntimeError("hypervisor region too small (layout estimate is wrong)")
        return gpa

    @property
    def first_free_gpa(self) -> int:
        return self._next

    def _table_entry(self, table_gpa: int, index: int, flags: int) -> int:
        """Return the GPA of the next-level table at table[index], creating it."""
        entry = self.mem.read_u64(table_gpa + index * 8)
        if entry & PTE_P:
            return entry & abi.PTE_ADDR_MASK
        child = self._alloc()
        self.mem.write_u64(table_gpa + index * 8, child | flags)
        return child

    def map_page(self, va: int, gpa: int, leaf_flags: int, table_flags: int) -> int:
        """Map one 4 KiB page in a hypervisor slot; return the GPA of its L1 entry."""
        slot = (va >> 39) & 511
        if slot not in self._l3:
            self._l3[slot] = self._alloc()
            self.l4_entries[slot] = self._l3[slot] | table_flags
        l2 = self._table_entry(self._l3[slot], (va >> 30) & 511, table_flags)
        l1 = self._table_entry(l2, (va >> 21) & 511, table_flags)
        pte_gpa = l1 + ((va >> 12) & 511) * 8
        self.mem.write_u64(pte_gpa, gpa | leaf_flags)
        return pte_gpa

    def map_range(self, va: int, gpa: int, pages: int, leaf_flags: int, table_flags: int) -> None:
        """Map ``pages`` contiguous pages, filling whole L1 tables at a time."""
        q = self.mem.q
        done = 0
        while done < pages:
            cur = va + done * PAGE_SIZE
            first_pte = self.map_page(cur, gpa + done * PAGE_SIZE, leaf_flags, table_flags)
            index = (cur >> 12) & 511
            n = min(512 - index, pages - done)
            start = gpa + done * PAGE_SIZE
            q[first_pte >> 3:(first_pte >> 3) + n] = array(
                "Q", [a | leaf_flags for a in range(start, start + n * PAGE_SIZE, PAGE_SIZE)]
            )
            done += n

    def _map_hv(self, va: int, gpa: int, writable: bool = True, executable: bool = False) -> int:
        flags = PTE_P | PTE_A | PTE_D | (PTE_RW if writable else 0) | (0 if executable else PTE_NX)
        self._hv_page_gpa[va] = gpa
        return self.map_page(va, gpa, flags, HV_TABLE_FLAGS)

    def hv_gpa(self, va: int) -> int:
        return self._hv_page_gpa[va & ~0xFFF] + (va & 0xFFF)

    # --- contents --------------------------------------------------------------

    def _build_m2p(self) -> None:
        lay = self.lay
        first = self._alloc(lay.m2p_pages)   # its entries: hospes.pv.m2p.MachToPhys.fill
        self.map_range(
            L.M2P_VIRT_START, first, lay.m2p_pages,
            PTE_P | PTE_US | PTE_A | PTE_NX, PTE_P | PTE_US | PTE_A | PTE_RW,
        )
        self.m2p_gpa = first

    def _build_code(self) -> None:
        idt = self._alloc()
        stubs = self._alloc(L.STUB_PAGES)
        code = bytearray()
        for v in range(256):
            code += _exception_stub(v)
        self.writer_va = L.STUBS_VA + len(code)
        code += WRITER_CODE
        self.chunk_exit_va = L.STUBS_VA + len(code)
        code += CHUNK_EXIT_STUB
        self.writer1_va = L.STUBS_VA + len(code)
        code += WRITER1_CODE
        self.writer1_rdi_va = L.STUBS_VA + len(code)
        code += WRITER1_RDI_CODE
        gp = len(code)
        code += GP_CODE
        self.gp_probe_va = L.STUBS_VA + gp + GP_PROBE_OFFSET
        self.gp_slow_va = L.STUBS_VA + gp + GP_SLOW_OFFSET
        at = 13 * STUB_SIZE    # the #GP gate's stub jumps there: jmp rel32
        code[at:at + STUB_SIZE] = (b"\xe9" + struct.pack("<i", gp - (at + 5))).ljust(STUB_SIZE, b"\xcc")
        assert len(code) <= L.STUB_PAGES * PAGE_SIZE
        self.mem.write(stubs, bytes(code))
        self._code = bytes(code)
        gates = bytearray()
        for v in range(256):
            dpl = 3 if v in (3, 4, 0x80) else 0
            gates += _gate(L.STUBS_VA + v * STUB_SIZE, dpl, ist=1 if v == 8 else 0)
        self.mem.write(idt, bytes(gates))
        self._map_hv(L.IDT_VA, idt, writable=False)
        for i in range(L.STUB_PAGES):
            self._map_hv(L.STUBS_VA + i * PAGE_SIZE, stubs + i * PAGE_SIZE, writable=False, executable=True)
        pages = L.pages_for(self.lay.nr_vcpus * L.SYSCALL_STUB_STRIDE)
        self._user_stubs = self._alloc(pages)   # written by _build_vcpu
        for i in range(pages):
            self.map_page(L.USER_STUB_VIRT + i * PAGE_SIZE, self._user_stubs + i * PAGE_SIZE,
                          PTE_P | PTE_US | PTE_A, PTE_P | PTE_US | PTE_A | PTE_RW)

    def _build_direct_map(self) -> None:
        """Map all guest-physical memory (supervisor-only) for the in-VM writer.

        Every table this needs is allocated up front from a worst-case count, so
        the map also covers the pages it allocates for itself.
        """
        self.map_range(
            L.DIRECT_VIRT, 0, self.mem.size // PAGE_SIZE,
            PTE_P | PTE_RW | PTE_A | PTE_D | PTE_NX, HV_TABLE_FLAGS,
        )

    def _build_vcpu(self, v: int) -> VcpuArea:
        area = VcpuArea(v, L.percpu_va(v))
        for off, pages in L.PERCPU_MAPPED:
            for i in range(pages):
                va = area.va + off + i * PAGE_SIZE
                if off == L.GDT_WINDOW_OFF and i < 14:
                    pte = self._map_hv(va, self.zero_page)
                    if i == 0:
                        area.gdt_pte_gpa = pte
                    area.page_gpa[va] = self.zero_page
                    continue
                gpa = self._alloc()
                self._map_hv(va, gpa)
                area.page_gpa[va] = gpa
        # The kernel-data page: user-writable in the kernel variant of its slot,
        # supervisor-only above the ring-0 stack for the #GP fast path.
        kdata = self._alloc()
        self.mem.write_u64(kdata + L.KD_MAGIC, L.KD_MAGIC_VALUE)
        self.map_page(L.kdata_va(v), kdata, PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D | PTE_NX,
                      PTE_P | PTE_RW | PTE_US | PTE_A)
        self._map_hv(area.va + L.KDATA_ALIAS_OFF, kdata)
        area.page_gpa[area.va + L.KDATA_ALIAS_OFF] = kdata
        area.kdata_gpa = kdata
        area.syscall_stub_va = L.USER_STUB_VIRT + v * L.SYSCALL_STUB_STRIDE
        self.mem.write(self._user_stubs + v * L.SYSCALL_STUB_STRIDE, syscall_stub(self.lay.nr_vcpus, L.kdata_va(v)))
        reserved = area.page_gpa[area.gdt_va + 14 * PAGE_SIZE]
        area.reserved_gdt_gpa = reserved
        for off, desc in RESERVED_GDT.items():
            self.mem.write_u64(reserved + off, desc)
        lo, hi = _tss_descriptor(area.tss_va, TSS_LIMIT)
        self.mem.write_u64(reserved + (abi.TSS_SELECTOR & 0xFF8), lo)
        self.mem.write_u64(reserved + (abi.TSS_SELECTOR & 0xFF8) + 8, hi)
        tss = area.gpa_of(area.tss_va)
        tss_bytes = bytearray(3 * PAGE_SIZE)
        struct.pack_into("<Q", tss_bytes, 4, area.stack_top - RSP0_FROM_TOP)   # RSP0, below the #GP fast path's words
        struct.pack_into("<Q", tss_bytes, 0x24, area.va + L.IST_OFF + L.IST_PAGES * PAGE_SIZE)  # IST1
        struct.pack_into("<H", tss_bytes, 0x66, 0x68)                   # I/O map base
        bitmap = bytearray(b"\xff" * 8193)
        bitmap[L.PORT_SYSCALL >> 3] &= ~(1 << (L.PORT_SYSCALL & 7)) & 0xFF
        tss_bytes[0x68:0x68 + 8193] = bitmap
        # The TSS spans three pages whose GPAs were allocated consecutively.
        for i in range(L.TSS_PAGES):
            self.mem.write(area.page_gpa[area.tss_va + i * PAGE_SIZE], tss_bytes[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
        assert tss == area.page_gpa[area.tss_va]
        return area

    def _build_kdata_for_user_roots(self) -> int:
        """The kernel-data slot's other variant, for the L4s guest user space runs on:
        every vCPU's address shows one read-only page of zeros (no magic word, so the
        SYSCALL stub leaves the VM). Returns its L4 entry."""
        zeros = self._alloc()
        l3, l2 = self._alloc(), self._alloc()
        table = PTE_P | PTE_US | PTE_A
        va = L.KDATA_VIRT
        n = self.lay.nr_vcpus
        self.mem.write_u64(l3 + ((va >> 30) & 511) * 8, l2 | table)
        for first in range(0, n, 512):
            l1 = self._alloc()
            self.mem.write_u64(l2 + (((va >> 21) + first // 512) & 511) * 8, l1 | table)
            for i in range(min(512, n - first)):
                self.mem.write_u64(l1 + i * 8, zeros | PTE_P | PTE_US | PTE_A | PTE_NX)
        return l3 | table

    def runtime_frames(self) -> set[int]:
        """The hypervisor-region frames written while the domain runs: each vCPU's
        stacks, frame area, TSS and GDT window, and the L1 entries that map the
        window. The rest (code, IDT, M2P, the direct map) is written once, at build."""
        frames: set[int] = set()
        for area in self.vcpus:
            frames.update(gpa >> 12 for gpa in area.page_gpa.values())
            frames.add(area.gdt_pte_gpa >> 12)
            frames.add((area.gdt_pte_gpa + L.GDT_WINDOW_PAGES * 8 - 1) >> 12)
        return frames

    def is_iretq(self, va: int) -> bool:
        """Is ``va`` one of the trampoline's iretq instructions (its returns to the guest)?"""
        off = va - L.STUBS_VA
        return 0 <= off < len(self._code) - 1 and self._code[off:off + 2] == b"\x48\xcf"

    def is_hypervisor_frame(self, mfn: int) -> bool:
        return mfn >= self.lay.guest_frames
