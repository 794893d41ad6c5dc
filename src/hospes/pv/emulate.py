"""Exceptions Hospes handles itself instead of bouncing (pv-abi.md §7, §8.4).

* #GP(0) from privileged instructions a PV kernel still executes: rdmsr/wrmsr,
  mov from/to CR0/CR4, mov from/to DR0-DR7 (``pv/debugregs.py``), in/out
  (answered as an empty bus), cli/sti/wbinvd/clts,
  and native ``cpuid`` under CPUID faulting. cli/sti and port I/O follow the
  virtual IOPL as Xen's iopl_ok does (the kernel counts as ring 1, ring 0
  under VMASST_TYPE_architectural_iopl; user mode as ring 3).
* #GP from ``int n`` through a DPL-0 gate, and #UD from ``int $0x80`` (PVM
  raises #UD for DPL-3 software interrupts): delivered as software interrupts
  when the guest's trap table allows.
* #UD at Xen's forced-emulation prefix ``ud2; "xen"; cpuid``.
* #PF writes to the guest's own read-only L1 tables: the instruction is
  decoded with Capstone, the new entry validated and written from inside the
  VM, and the instruction skipped (Xen's ptwr emulation). As in Xen, only a
  naturally aligned store of 1, 2, 4 or 8 bytes inside the faulting page is
  emulated; any other write (misaligned, wider, straddling pages, to an
  L2-L4, an instruction not understood, an entry refused) gets the guest's
  #PF back.
Everything else is reflected to the guest by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import capstone
from capstone import x86_const as X

from hospes.machine.memory import GuestFault
from hospes.pv import abi, debugregs
from hospes.pv.errors import Errno, XenError

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

FORCED_CPUID = b"\x0f\x0bxen\x0f\xa2"
VMASST_ARCHITECTURAL_IOPL = 4   # VMASST_TYPE_architectural_iopl: vIOPL in bounce and iret frames
_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_md.detail = True

MSR_PAT_VALUE = 0x0000050100070406
# The CR4 a PV guest reads (Xen's real_cr4_to_pv_guest_cr4 of its own CR4):
# PAE, MCE, OSFXSR, OSXMMEXCPT; the guest-controlled bits are added to it.
PV_GUEST_CR4 = 0x660


def _fetch(vcpu: "PvVcpu", rip: int, size: int = 15) -> bytes:
    """Up to ``size`` instruction bytes at ``rip``, fewer if the next page is unmapped."""
    cr3 = vcpu.kernel_cr3 if vcpu.kernel_mode else vcpu.user_cr3
    first = min(size, 4096 - (rip & 0xFFF))
    try:
        out = vcpu.virt.read(cr3, rip, first)
    except GuestFault:
        return b""
    if first < size:
        try:
            out += vcpu.virt.read(cr3, rip + first, size - first)
        except GuestFault:
            pass
    return out


def _decode_at_rip(vcpu: "PvVcpu") -> capstone.CsInsn | None:
    """The instruction the vCPU faulted on, or None if it cannot be fetched or decoded."""
    try:
        return next(_md.disasm(_fetch(vcpu, vcpu.t_rip), vcpu.t_rip, 1))
    except StopIteration:
        return None


def handle_exception(vcpu: "PvVcpu", vec: int, err: int) -> bool:
    if vec == 14:
        handle_page_fault(vcpu, err)
        return True
    if vec == 13:
        if err == 0:
            return _privileged(vcpu) or _far_branch_selector(vcpu)
        if err & 2:  # IDT vector: software interrupt through a DPL-0 gate
            return _soft_int(vcpu, err >> 3, length=2)
        return False
    if vec == 6:
        code = _fetch(vcpu, vcpu.t_rip, 7)
        if code == FORCED_CPUID:
            _cpuid(vcpu)
            vcpu.t_rip += 7
            return True
        if len(code) >= 2 and code[0] == 0xCD:
            # PVM raises #UD for `int n` through a DPL-3 gate; hardware (and Xen)
            # give #GP((n << 3) | 2) when the gate's DPL forbids it.
            if not _soft_int(vcpu, code[1], length=2):
                vcpu.bounce_exception(13, (code[1] << 3) | 2)
            return True
        return False
    return False


_EA_REGS = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
             "r14", "r15"}


def _far_branch_selector(vcpu: "PvVcpu") -> bool:
    """A far call or jump through memory whose #GP came with error code 0 for a
    selector the CPU must name: one in the LDT when none is loaded (Hospes
    never loads one), or beyond the GDT. The CPU, and so Xen, reports the
    selector's error code (index and TI, no RPL); deliver that."""
    code = _fetch(vcpu, vcpu.t_rip)
    i = 0
    opsize = 4
    while i < len(code) and code[i] in (0x66, 0x67, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65):
        if code[i] == 0x66:
            opsize = 2
        i += 1
    if i < len(code) and code[i] & 0xF0 == 0x40:
        if code[i] & 8:
            opsize = 8
        i += 1
    if i + 1 >= len(code) or code[i] != 0xFF or (code[i + 1] >> 3) & 7 not in (3, 5) or code[i + 1] >> 6 == 3:
        return False
    try:
        insn = next(_md.disasm(code, vcpu.t_rip, 1))
    except StopIteration:
        return False
    mem = insn.operands[0].mem
    if mem.segment != 0 and _md.reg_name(mem.segment) in ("fs", "gs"):
        return False
    ea = mem.disp
    for reg, scale in ((mem.base, 1), (mem.index, mem.scale)):
        if reg == 0:
            continue
        name = _md.reg_name(reg)
        if name == "rip":
            ea += vcpu.t_rip + insn.size
        elif name == "rsp":
            ea += vcpu.t_rsp * scale
        elif name in _EA_REGS:
            ea += int(getattr(vcpu.regs, name)) * scale
        else:
            return False
    try:
        sel = int.from_bytes(vcpu.read((ea + opsize) & 0xFFFF_FFFF_FFFF_FFFF, 2), "little")
    except GuestFault:
        return False
    index = sel >> 3
    if sel & 4:
        missing = vcpu.ldt_ents == 0 or index >= vcpu.ldt_ents
    else:
        missing = index >= max(vcpu.gdt_ents, abi.FIRST_RESERVED_GDT_ENTRY + 512) or index >= 8192
    if not missing or sel & ~3 == 0:
        return False
    vcpu.bounce_exception(13, sel & 0xFFFC)
    return True


def _soft_int(vcpu: "PvVcpu", vector: int, length: int) -> bool:
    entry = vcpu.trap_table.get(vector)
    if entry is None or entry[1] == 0:
        return False
    dpl = entry[0] & 3
    if dpl == 0 or (not vcpu.kernel_mode and dpl != 3):
        return False
    vcpu.t_rip += length
    vcpu.bounce(entry[1], None, mask_events=bool(entry[0] & 4))
    return True


def _cpuid(vcpu: "PvVcpu") -> None:
    regs = vcpu.regs
    a, b, c, d = vcpu.domain.cpuid.lookup(regs.rax & 0xFFFFFFFF, regs.rcx & 0xFFFFFFFF)
    if (regs.rax & 0xFFFFFFFF) == 1 and vcpu.cr4 & (1 << 18):
        c |= 1 << 27
    regs.rax, regs.rbx, regs.rcx, regs.rdx = a, b, c, d


def _privileged(vcpu: "PvVcpu") -> bool:
    code = _fetch(vcpu, vcpu.t_rip)
    if not code:
        return False
    regs = vcpu.regs
    kernel = vcpu.kernel_mode
    # Skip legacy prefixes we tolerate (operand size, rep) for in/out.
    i = 0
    while i < len(code) and code[i] in (0x66, 0xF3, 0xF2):
        i += 1
    op = code[i:]
    if op[:2] == b"\x0f\xa2":                          # cpuid under CPUID faulting
        _cpuid(vcpu)
        vcpu.t_rip += i + 2
        return True
    if op[:1] in (b"\xfa", b"\xfb"):                    # cli / sti: no-ops when vIOPL allows (Xen)
        if not iopl_ok(vcpu):
            return False
        vcpu.t_rip += i + 1
        return True
    if not kernel:
        if op and op[0] in (0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF) and iopl_ok(vcpu):
            return _port_io(vcpu, op, code[:i])
        return False
    if op[:2] == b"\x0f\x32":                          # rdmsr
        value = vcpu.domain.msrs.read(vcpu, regs.rcx & 0xFFFFFFFF)
        if value is None:
            return False
        regs.rax = value & 0xFFFFFFFF
        regs.rdx = value >> 32
        vcpu.t_rip += i + 2
        return True
    if op[:2] == b"\x0f\x30":                          # wrmsr
        new = (regs.rax & 0xFFFFFFFF) | ((regs.rdx & 0xFFFFFFFF) << 32)
        if not vcpu.domain.msrs.write(vcpu, regs.rcx & 0xFFFFFFFF, new):
            return False
        vcpu.t_rip += i + 2
        return True
    mov_dr = (b"\x0f\x21", b"\x0f\x23")
    if op[:2] in mov_dr or (len(op) >= 3 and op[0] & 0xF0 == 0x40 and op[1:3] in mov_dr):
        return _mov_dr(vcpu, code, i)
    mov_cr = (b"\x0f\x20", b"\x0f\x22")
    if op[:2] in mov_cr or (len(op) >= 3 and op[0] & 0xF0 == 0x40 and op[1:3] in mov_cr):
        return _mov_cr(vcpu, code, i)
    if op[:2] in (b"\x0f\x09", b"\x0f\x06", b"\x0f\x08"):  # wbinvd / clts / invd
        if op[1] == 0x06:
            vcpu.cr0_ts = False
        vcpu.t_rip += i + 2
        return True
    if op and op[0] in (0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF):
        if not iopl_ok(vcpu):
            return False
        return _port_io(vcpu, op, code[:i])
    if op and op[0] in (0x6C, 0x6D, 0x6E, 0x6F):       # ins/outs: skip (empty bus)
        if not iopl_ok(vcpu):
            return False
        vcpu.t_rip += i + 1
        if vcpu.dr7_emul:
            size = 1 if op[0] in (0x6C, 0x6E) else (2 if 0x66 in code[:i] else 4)
            debugregs.deliver_io_breakpoint(vcpu, regs.rdx & 0xFFFF, size)
        return True
    if op[:1] == b"\xf4":                               # hlt: behave like SCHEDOP_block
        vcpu.t_rip += i + 1
        vcpu.domain.block(vcpu)
        return True
    return False


def iopl_ok(vcpu: "PvVcpu") -> bool:
    """Xen's iopl_ok: the guest kernel counts as ring 1 (ring 0 under
    VMASST_TYPE_architectural_iopl), user mode as ring 3, against the virtual IOPL."""
    if not vcpu.kernel_mode:
        cpl = 3
    else:
        cpl = 0 if VMASST_ARCHITECTURAL_IOPL in vcpu.domain.vm_assist else 1
    return cpl <= vcpu.iopl


def _port_io(vcpu: "PvVcpu", op: bytes, prefixes: bytes) -> bool:
    """No devices on the I/O bus: reads return all-ones, writes are dropped."""
    regs = vcpu.regs
    opcode = op[0]
    length = 2 if opcode in (0xE4, 0xE5, 0xE6, 0xE7) else 1
    port = op[1] if length == 2 else regs.rdx & 0xFFFF
    size = 1 if opcode in (0xE4, 0xE6, 0xEC, 0xEE) else (2 if 0x66 in prefixes else 4)
    if opcode in (0xE4, 0xE5, 0xEC, 0xED):  # in
        value = vcpu.domain.port_read(port, size)
        if size == 4:
            regs.rax = value & 0xFFFFFFFF  # a 32-bit register write zero-extends
        else:
            mask = 0xFF if size == 1 else 0xFFFF
            regs.rax = (regs.rax & ~mask) | (value & mask)
    vcpu.t_rip += len(prefixes) + length
    if vcpu.dr7_emul:
        debugregs.deliver_io_breakpoint(vcpu, port, size)
    return True


_CR_REGS = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"]


def _gpr_name(n: int) -> str:
    return _CR_REGS[n] if n < 8 else f"r{n}"


def _mov_cr(vcpu: "PvVcpu", code: bytes, start: int) -> bool:
    i = start
    rex = 0
    if code[i] & 0xF0 == 0x40:
        rex = code[i]
        i += 1
    to_cr = code[i + 1] == 0x22
    modrm = code[i + 2]
    cr = ((modrm >> 3) & 7) | (8 if rex & 4 else 0)
    reg = (modrm & 7) | (8 if rex & 1 else 0)
    regs = vcpu.regs
    name = _gpr_name(reg)
    if not to_cr:
        if cr == 0:
            value = 0x80050033 | (8 if vcpu.cr0_ts else 0)
        elif cr == 4:
            value = vcpu.cr4
        elif cr == 2:
            value = vcpu.mem.read_u64(vcpu.vcpu_info_gpa + 0x10)
        elif cr == 3:
            value = vcpu.kernel_cr3
        else:
            return False
        if name == "rsp":
            vcpu.t_rsp = value
        else:
            setattr(regs, name, value)
    else:
        value = vcpu.t_rsp if name == "rsp" else getattr(regs, name)
        if cr == 0:
            vcpu.cr0_ts = bool(value & 8)
        elif cr == 4:
            # Xen's pv_fixup_guest_cr4: the guest controls TSD, DE and (when
            # CPUID shows it) FSGSBASE; the other bits are Xen's own.
            mask = (1 << 2) | (1 << 3)
            if vcpu.domain.cpuid.lookup(7, 0)[1] & 1:
                mask |= 1 << 16
            vcpu.cr4 = PV_GUEST_CR4 | (value & mask)
        else:
            return False
    vcpu.t_rip += i + 3 - start + start
    return True


def _mov_dr(vcpu: "PvVcpu", code: bytes, start: int) -> bool:
    """mov to/from DR0-DR7 in the guest kernel, as Xen's emulator: DR8+ (REX.R)
    and DR4/DR5 with CR4.DE are #UD, set_debugreg's refusals #GP(0)."""
    i = start
    rex = 0
    if code[i] & 0xF0 == 0x40:
        rex = code[i]
        i += 1
    if len(code) < i + 3:
        return False
    to_dr = code[i + 1] == 0x23
    modrm = code[i + 2]
    dr = ((modrm >> 3) & 7) | (8 if rex & 4 else 0)
    name = _gpr_name((modrm & 7) | (8 if rex & 1 else 0))
    if dr > 7 or (dr in (4, 5) and vcpu.cr4 & debugregs.CR4_DE):
        vcpu.bounce_exception(6, None)
        return True
    if to_dr:
        value = vcpu.t_rsp if name == "rsp" else int(getattr(vcpu.regs, name))
        rc = debugregs.set_debugreg(vcpu, dr, value)
        if rc == -Errno.ENODEV:
            vcpu.bounce_exception(6, None)
            return True
        if rc:
            return False
        debugregs.load(vcpu)
    else:
        got = debugregs.read_debugreg(vcpu, dr)
        if got is None:
            vcpu.bounce_exception(6, None)
            return True
        if name == "rsp":
            vcpu.t_rsp = got
        else:
            setattr(vcpu.regs, name, got)
    vcpu.t_rip += i + 3
    return True


# --- page faults and ptwr ---------------------------------------------------------

def handle_page_fault(vcpu: "PvVcpu", err: int) -> None:
    cr2 = vcpu.sregs.cr2
    if vcpu.kernel_mode and err & 3 == 3 and _ptwr(vcpu, cr2):
        vcpu.count("ptwr")
        return
    if abi.MACH2PHYS_VIRT_START <= cr2 < abi.MACH2PHYS_VIRT_END and not err & (PF_WRITE | PF_FETCH) \
            and _m2p_load(vcpu, cr2):
        vcpu.count("m2p_load")
        return
    if vcpu.kernel_mode:
        err &= ~4  # hardware reports U=1: the guest kernel runs at CPL 3
    vcpu.bounce_exception(14, err, cr2=cr2)


def _ptwr(vcpu: "PvVcpu", cr2: int) -> bool:
    """Emulate a kernel write to one of its read-only L1 tables; False: the guest gets its #PF."""
    mmu = vcpu.domain.mmu
    try:
        page = vcpu.virt.translate(vcpu.kernel_cr3, cr2) & ~0xFFF
    except GuestFault:
        return False
    if mmu.table_level(page >> 12) != 1:
        return False   # Xen emulates writes to L1s only
    insn = _decode_at_rip(vcpu)
    if insn is None:
        return False
    ops = insn.operands
    if not ops or ops[0].type != X.X86_OP_MEM:
        return False
    size = int(ops[0].size)
    ea = _effective_address(vcpu, insn, ops[0])
    # Only naturally aligned stores within the faulting page (ptwr_emulated_update).
    if ea is None or size not in (1, 2, 4, 8) or ea & (size - 1) or (ea ^ cr2) & ~0xFFF:
        return False
    gpa = page | (ea & 0xFFF)
    slot = gpa & ~7
    with mmu.lock:
        if mmu.table_level(page >> 12) != 1:
            return False   # released or retyped meanwhile: let the guest retry the write
        old = vcpu.mem.read_u64(slot)
        try:
            result = _emulate_rmw(vcpu, insn, old, (gpa & 7) * 8)
        except KeyError:
            return False   # a source register we do not model (xmm, segment): not a PTE write
        if result is None:
            return False
        new, writeback = result
        try:
            mmu.update_entry(vcpu, slot, new)
        except XenError:
            return False
    writeback()
    vcpu.t_rip += insn.size
    return True


PF_WRITE = 1 << 1
PF_FETCH = 1 << 4
_LOADS = {X.X86_INS_MOV: False, X.X86_INS_MOVZX: False, X.X86_INS_MOVSX: True, X.X86_INS_MOVSXD: True}


def _m2p_load(vcpu: "PvVcpu", cr2: int) -> bool:
    """A load from the M2P at Xen's fixed address, answered from the table; False: #PF.

    Xen maps the read-only M2P at MACH2PHYS_VIRT_START for guest kernel and
    user alike; Hospes cannot map L4 slot 256, so a kernel that reads the
    table there without asking XENMEM_machphys_mapping lands here. Plain
    loads into a general register (mov, movzx, movsx, movsxd) are what
    C code compiles an array read to; anything else gets the #PF.
    """
    insn = _decode_at_rip(vcpu)
    if insn is None:
        return False
    ops = insn.operands
    signed = _LOADS.get(insn.id)
    if signed is None or len(ops) != 2 or ops[0].type != X.X86_OP_REG or ops[1].type != X.X86_OP_MEM:
        return False
    size = int(ops[1].size)
    ea = _effective_address(vcpu, insn, ops[1])
    if ea is None or not ea <= cr2 < ea + size:
        return False
    data = vcpu.domain.m2p.read(ea - abi.MACH2PHYS_VIRT_START, size)
    if data is None:
        return False   # past the table: unmapped in Xen too
    value = int.from_bytes(data, "little", signed=signed)
    try:
        _set(vcpu, ops[0].reg, value & ((1 << 64) - 1))
    except KeyError:
        return False
    vcpu.t_rip += insn.size
    return True


_SEGMENT_BASE = {X.X86_REG_FS: "fs", X.X86_REG_GS: "gs"}


def _effective_address(vcpu: "PvVcpu", insn: capstone.CsInsn, op: capstone.x86.X86Op) -> int | None:
    """The linear address a memory operand names (None if it uses a register we do not model)."""
    mem = op.mem
    try:
        ea = mem.disp
        if mem.base == X.X86_REG_RIP:
            ea += insn.address + insn.size
        elif mem.base:
            ea += _get(vcpu, mem.base)
        if mem.index and mem.index not in (X.X86_REG_RIZ, X.X86_REG_EIZ):   # riz: "no index" spelled out
            ea += _get(vcpu, mem.index) * mem.scale
    except KeyError:
        return None
    if insn.addr_size == 4:
        ea &= 0xFFFF_FFFF
    seg = _SEGMENT_BASE.get(mem.segment)
    if seg is not None:
        ea += int(getattr(vcpu.sregs, seg).base)
    return int(ea) & 0xFFFF_FFFF_FFFF_FFFF


_REG_CACHE: dict[int, tuple[str, int, int]] = {}
_NUMBERED = re.compile(r"r(8|9|1[0-5])([bwd]?)")


def _reg(vcpu: "PvVcpu", reg: int) -> tuple[str, int, int]:
    """(64-bit register name, shift, width) of a Capstone register id."""
    name = _md.reg_name(reg)
    base = {
        "al": ("rax", 0, 8), "ah": ("rax", 8, 8), "ax": ("rax", 0, 16), "eax": ("rax", 0, 32), "rax": ("rax", 0, 64),
        "bl": ("rbx", 0, 8), "bh": ("rbx", 8, 8), "bx": ("rbx", 0, 16), "ebx": ("rbx", 0, 32), "rbx": ("rbx", 0, 64),
        "cl": ("rcx", 0, 8), "ch": ("rcx", 8, 8), "cx": ("rcx", 0, 16), "ecx": ("rcx", 0, 32), "rcx": ("rcx", 0, 64),
        "dl": ("rdx", 0, 8), "dh": ("rdx", 8, 8), "dx": ("rdx", 0, 16), "edx": ("rdx", 0, 32), "rdx": ("rdx", 0, 64),
        "sil": ("rsi", 0, 8), "si": ("rsi", 0, 16), "esi": ("rsi", 0, 32), "rsi": ("rsi", 0, 64),
        "dil": ("rdi", 0, 8), "di": ("rdi", 0, 16), "edi": ("rdi", 0, 32), "rdi": ("rdi", 0, 64),
        "bpl": ("rbp", 0, 8), "bp": ("rbp", 0, 16), "ebp": ("rbp", 0, 32), "rbp": ("rbp", 0, 64),
    }.get(name)
    if base:
        return base
    m = _NUMBERED.fullmatch(name)
    if m:   # r8..r15, r8b/r8w/r8d..
        return (f"r{m.group(1)}", 0, {"b": 8, "w": 16, "d": 32}.get(m.group(2), 64))
    raise KeyError(name)   # segment, vector, pseudo (riz) registers: not a store we emulate


def _get(vcpu: "PvVcpu", reg: int) -> int:
    n, shift, width = _reg(vcpu, reg)
    value = vcpu.t_rsp if n == "rsp" else int(getattr(vcpu.regs, n))   # regs.rsp is the stub's
    return (value >> shift) & ((1 << width) - 1)


def _set(vcpu: "PvVcpu", reg: int, value: int) -> None:
    n, shift, width = _reg(vcpu, reg)
    mask = ((1 << width) - 1) << shift
    cur = getattr(vcpu.regs, n)
    if width == 32:
        setattr(vcpu.regs, n, value & 0xFFFFFFFF)  # 32-bit writes zero-extend
    else:
        setattr(vcpu.regs, n, (cur & ~mask) | ((value << shift) & mask))


def _emulate_rmw(vcpu: "PvVcpu", insn: capstone.CsInsn, old: int,
                 bit_off: int) -> tuple[int, Callable[[], None]] | None:
    """New 64-bit slot value for a write instruction, and a callback for its side effects."""
    ops = insn.operands
    if not ops or ops[0].type != X.X86_OP_MEM:
        return None
    size = int(ops[0].size) * 8
    if size not in (8, 16, 32, 64) or bit_off + size > 64:
        return None   # the caller checked alignment; never build a value wider than the slot
    mask = ((1 << size) - 1) << bit_off
    cur = (old & mask) >> bit_off
    m = insn.id
    src: int | None = None
    if len(ops) > 1:
        src = _get(vcpu, ops[1].reg) if ops[1].type == X.X86_OP_REG else int(ops[1].imm) & ((1 << size) - 1)

    def merge(v: int) -> int:
        return (old & ~mask) | ((v << bit_off) & mask)

    nothing = lambda: None  # noqa: E731
    if m == X.X86_INS_MOV and src is not None:
        return merge(src), nothing
    if m == X.X86_INS_XCHG and src is not None and ops[1].type == X.X86_OP_REG:
        reg = ops[1].reg
        return merge(src), lambda: _set(vcpu, reg, cur)
    if m in (X.X86_INS_AND, X.X86_INS_OR, X.X86_INS_XOR) and src is not None:
        v = {X.X86_INS_AND: cur & src, X.X86_INS_OR: cur | src, X.X86_INS_XOR: cur ^ src}[m]
        return merge(v), nothing
    if m in (X.X86_INS_BTR, X.X86_INS_BTS, X.X86_INS_BTC) and src is not None:
        bit = src % size
        was = (cur >> bit) & 1
        v = {X.X86_INS_BTR: cur & ~(1 << bit), X.X86_INS_BTS: cur | (1 << bit), X.X86_INS_BTC: cur ^ (1 << bit)}[m]

        def set_cf() -> None:
            vcpu.t_rflags = (vcpu.t_rflags & ~1) | was
        return merge(v), set_cf
    if m == X.X86_INS_CMPXCHG and src is not None and ops[1].type == X.X86_OP_REG:
        acc = vcpu.regs.rax & ((1 << size) - 1)
        if acc == cur:
            return merge(src), lambda: setattr(vcpu, "t_rflags", vcpu.t_rflags | 0x40)

        def fail() -> None:
            vcpu.t_rflags &= ~0x40
            _set(vcpu, {8: X.X86_REG_AL, 16: X.X86_REG_AX, 32: X.X86_REG_EAX, 64: X.X86_REG_RAX}[size], cur)
        return old, fail
    return None


__all__ = ["handle_exception", "MSR_PAT_VALUE", "abi"]
