/*
 * syscall_user: guest user mode (pv-abi.md §6.3, §6.4, §4.3).
 *
 * Build a separate user page-table tree holding only a user code page and a
 * user stack (its table pages read-only in our own mapping, then the L4
 * pinned), register the syscall callback with CALLBACKF_mask_events, give
 * the hypervisor a kernel stack with stack_switch, install the tree with
 * MMUEXT_NEW_USER_BASEPTR and HYPERVISOR_iret to user mode. The user
 * program (syscall_user.S) makes a syscall, takes a #PF and makes a second
 * syscall; each arrives here as a bounce frame on the kernel stack.
 */
#include "guest.h"
#include "syscall_user.h"

extern const char user_code_start[], user_code_end[];
extern const char user_syscall1_ret[], user_pf_insn[], user_pf_resume[], user_cli_insn[], user_rdmsr_insn[];
extern const char user_kdata_store[], user_kdata_resume[];
extern void xen_syscall_entry(void);

#define USER_ADDR(label) (USER_CODE_VA + (uint64_t)((label) - user_code_start))
#define USER_RETVAL 0x5a5a5a5a12345678UL

static uint8_t kstack[16384] __attribute__((aligned(16)));
#define KSTACK_TOP ((uint64_t)kstack + sizeof(kstack))

static struct { int hello, pf, kdata, cli, rdmsr, nr24, done; } seen;

static int syscall_handler(struct regs *r)
{
    uint64_t frame_at = trap_entry_rsp;

    if (r->rax == USER_NR_HELLO && !seen.hello) {
        uint64_t ret = USER_ADDR(user_syscall1_ret);
        uint64_t fl = X86_EFLAGS_ARITH | X86_EFLAGS_IF;
        seen.hello = 1;
        /* SYSCALL put the return RIP in RCX and RFLAGS in R11; the frame
         * carries both plus the user RIP/RSP. CS/SS in this frame are not
         * meaningful (Linux overwrites them), so they are not checked. */
        if (!check(r->rip == ret && r->rcx == ret && r->rdi == USER_MAGIC &&
                       r->rsp == r->rdx && (r->r11 & fl) == (r->rsi & fl),
                   "syscall_frame",
                   "rip %#lx rcx %#lx (want %#lx) rdi %#lx rsp %#lx (want %#lx) "
                   "r11 %#lx (user pushf %#lx)",
                   r->rip, r->rcx, ret, r->rdi, r->rsp, r->rdx, r->r11, r->rsi))
            dump_regs(r);
        check(frame_at == KSTACK_TOP - 7 * 8, "syscall_kernel_stack",
              "frame at %#lx, want %#lx (stack_switch stack, 7 words)",
              frame_at, KSTACK_TOP - 7 * 8);
        /* User mode ran with events enabled; the callback was registered
         * with CALLBACKF_mask_events. */
        check(VCPU0->evtchn_upcall_mask == 1 && FRAME_SAVED_MASK(r->cs) == 0 &&
                  (r->rflags & X86_EFLAGS_IF),
              "syscall_events_masked", "mask %u, saved mask %lu, frame rflags %#lx",
              VCPU0->evtchn_upcall_mask, FRAME_SAVED_MASK(r->cs), r->rflags);
        r->rax = USER_RETVAL;
        r->cs = FLAT_USER_CS64;        /* RPL 3: HYPERVISOR_iret goes to user */
        r->ss = FLAT_USER_SS64;
        return TRAP_RETURN;
    }
    if (r->rax == USER_NR_24 && !seen.nr24) {
        seen.nr24 = 1;
        check(r->rsi == USER_NR_24_ARG, "syscall_24_from_user_reaches_the_kernel",
              "rsi %#lx, want %#x", r->rsi, USER_NR_24_ARG);
        r->cs = FLAT_USER_CS64;
        r->ss = FLAT_USER_SS64;
        return TRAP_RETURN;
    }
    if (r->rax == USER_NR_DONE) {
        seen.done = 1;
        check(r->rsi == 0, "user_reads_zeros_at_the_kernel_data_slot", "read %#lx", r->rsi);
        check(*(volatile uint64_t *)KDATA_VA == 1, "kernel_data_page_untouched_by_user",
              "the kernel sees %#lx at its kernel-data page", *(volatile uint64_t *)KDATA_VA);
        check(r->rdi == USER_RETVAL, "syscall_iret_return",
              "user passed back %#lx, want %#lx (RAX set through HYPERVISOR_iret)",
              r->rdi, USER_RETVAL);
        return TRAP_LEAVE_USER;
    }
    fail("syscall_unexpected", "syscall rax %#lx from rip %#lx", r->rax, r->rip);
    dump_regs(r);
    return TRAP_LEAVE_USER;
}

static int pf_handler(struct regs *r)
{
    if ((r->cs & 3) != 3) {
        fail("unexpected_trap", "kernel-mode #PF at %#lx cr2 %#lx error %#lx",
             r->rip, VCPU0->cr2, r->error);
        finish();
    }
    if (r->rip == USER_ADDR(user_kdata_store) && !seen.kdata) {
        /* A present, read-only page: a user-mode write fault (P | W | U). */
        seen.kdata = 1;
        check(r->error == 7 && VCPU0->cr2 == KDATA_VA, "user_cannot_write_the_kernel_data_slot",
              "error %#lx (want 7) cr2 %#lx", r->error, VCPU0->cr2);
        r->rip = USER_ADDR(user_kdata_resume);
        return TRAP_RETURN;
    }
    seen.pf = 1;
    /* From user mode: error code bit 2 (U) set, CS/SS the user's, frame
     * on the stack_switch stack (8 words with the error code). */
    if (!check(r->error == 4 && VCPU0->cr2 == USER_HOLE_VA &&
                   r->rip == USER_ADDR(user_pf_insn) &&
                   (r->cs & 0xffffffffUL) == FLAT_USER_CS64 &&
                   (r->ss & 0xffff) == FLAT_USER_SS64 && r->rsp == USER_STACK_TOP &&
                   trap_entry_rsp == KSTACK_TOP - 8 * 8,
               "user_pf_bounce", "error %#lx (want 4) cr2 %#lx rip %#lx (want %#lx) "
               "frame at %#lx (want %#lx)",
               r->error, VCPU0->cr2, r->rip, USER_ADDR(user_pf_insn), trap_entry_rsp,
               KSTACK_TOP - 8 * 8))
        dump_regs(r);
    r->rip = USER_ADDR(user_pf_resume);
    return TRAP_RETURN;
}

/* The user program's cli and rdmsr: #GP(0) from user mode, skipped. */
static int gp_handler(struct regs *r)
{
    if ((r->cs & 3) == 3 && r->error == 0 && r->rip == USER_ADDR(user_cli_insn) && !seen.cli) {
        seen.cli = 1;
        pass("user_cli_gp");
        r->rip += 1;
        return TRAP_RETURN;
    }
    if ((r->cs & 3) == 3 && r->error == 0 && r->rip == USER_ADDR(user_rdmsr_insn) && !seen.rdmsr) {
        seen.rdmsr = 1;
        pass("user_rdmsr_gp");
        r->rip += 2;
        return TRAP_RETURN;
    }
    fail("unexpected_trap", "#GP error %#lx at rip %#lx", r->error, r->rip);
    dump_regs(r);
    finish();
}

#define L1_INDEX(va) (((va) >> 12) & 511)
#define L2_INDEX(va) (((va) >> 21) & 511)

void guest_main(void)
{
    require_rc(map_shared_info(), "map_shared_info");
    trap_set_handler(14, pf_handler);
    trap_set_handler(13, gp_handler);
    trap_set_handler(VEC_SYSCALL, syscall_handler);
    require_rc(traps_install(), "set_trap_table");
    require_rc(callbacks_install(), "register_callbacks");

    /* The user tree: L4[0] -> L3[0] -> L2[2] -> L1 with the code page at
     * 0x400000 (read-only) and the stack at 0x402000; 0x401000 stays
     * unmapped. Entries hold machine frames. */
    uint64_t *l4 = alloc_page(), *l3 = alloc_page(), *l2 = alloc_page(), *l1 = alloc_page();
    uint8_t *code = alloc_page(), *stack = alloc_page();
    memcpy(code, user_code_start, (size_t)(user_code_end - user_code_start));
    l4[0] = (virt_to_mfn(l3) << 12) | PTE_TABLE;
    l3[0] = (virt_to_mfn(l2) << 12) | PTE_TABLE;
    l2[L2_INDEX(USER_CODE_VA)] = (virt_to_mfn(l1) << 12) | PTE_TABLE;
    l1[L1_INDEX(USER_CODE_VA)] = (virt_to_mfn(code) << 12) |
                                 _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED;
    l1[L1_INDEX(USER_STACK_VA)] = (virt_to_mfn(stack) << 12) | _PAGE_PRESENT | _PAGE_RW |
                                  _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY;

    /* A page-table frame may not be mapped writable anywhere when it is
     * validated: make all four read-only in our mapping, then pin. */
    long rc = set_page_ro(l4);
    if (!rc) rc = set_page_ro(l3);
    if (!rc) rc = set_page_ro(l2);
    if (!rc) rc = set_page_ro(l1);
    if (!rc) rc = mmuext_mfn(MMUEXT_PIN_L4_TABLE, virt_to_mfn(l4));
    if (!check_rc(rc, "user_pt_pinned"))
        return;

    struct callback_register cb = {
        .type = CALLBACKTYPE_syscall,
        .flags = CALLBACKF_mask_events,
        .address = (uint64_t)xen_syscall_entry,
    };
    int ok = check_rc(HYPERVISOR_callback_op(CALLBACKOP_register, &cb),
                      "syscall_callback_registered");
    /* A context switch's two hypercalls, many times over: Hospes' SYSCALL stub
     * answers them in the VM (the test counts the exits). The last values win. */
    long rcs = 0;
    for (int i = 0; i < 1000; i++) {
        rcs |= HYPERVISOR_stack_switch(FLAT_KERNEL_SS, KSTACK_TOP - 64 - 16 * (i & 3));
        rcs |= _hc(25 /* set_segment_base */, 1 /* SEGBASE_GS_USER */, 0x6000 + i, 0, 0, 0);
    }
    check_rc(rcs, "context_switch_hypercalls");
    /* A non-canonical base is still -EINVAL (the stub leaves it to Hospes). */
    check(_hc(25, 1, 0x0000800000000000UL, 0, 0, 0) == -22, "set_gs_user_non_canonical", "not -EINVAL");
    ok &= check_rc(HYPERVISOR_stack_switch(FLAT_KERNEL_SS, KSTACK_TOP), "stack_switch");
    ok &= check_rc(mmuext_mfn(MMUEXT_NEW_USER_BASEPTR, virt_to_mfn(l4)),
                   "new_user_baseptr");
    /* The kernel may run cli (vIOPL 1, as Linux asks) and read the user GS base;
     * user mode still may not. */
    static uint32_t iopl = 1;
    ok &= check_rc(_hc(33 /* physdev_op */, 6 /* PHYSDEVOP_set_iopl */, &iopl, 0, 0, 0), "set_iopl");
    ok &= check_rc(_hc(25 /* set_segment_base */, 1 /* SEGBASE_GS_USER */, 0x5000, 0, 0, 0), "set_gs_user");
    uint32_t lo, hi;
    asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0xc0000102));
    check(((uint64_t)hi << 32 | lo) == 0x5000, "shadow_gs_reads_the_last_set_gs_user",
          "rdmsr(MSR_SHADOW_GS_BASE) %#lx", (uint64_t)hi << 32 | lo);
    if (!ok)
        return;                 /* iret to user would kill the domain */

    /* RPL 3 in CS: HYPERVISOR_iret switches to the user page table. IF set:
     * user mode runs with events enabled (mask := !IF). */
    struct iret_context ctx = {
        .rip = USER_CODE_VA,
        .cs = FLAT_USER_CS64,
        .rflags = X86_EFLAGS_IF | 0x2,
        .rsp = USER_STACK_TOP,
        .ss = FLAT_USER_SS64,
    };
    run_user(&ctx);

    /* Back in kernel mode: the DONE syscall handler abandoned user mode. */
    check(seen.hello && seen.pf && seen.kdata && seen.cli && seen.rdmsr && seen.nr24 && seen.done,
          "syscall_done", "user program incomplete: hello %d pf %d kdata %d cli %d rdmsr %d nr24 %d done %d",
          seen.hello, seen.pf, seen.kdata, seen.cli, seen.rdmsr, seen.nr24, seen.done);
}
