/*
 * nullcall: Hospes' transition costs measured from inside a tiny PV guest.
 *
 * Built with the test kernels' runtime and flags (tests/guests/lib, see
 * bench/hospesbench/build.py).  Each measurement runs ROUNDS rounds of N
 * operations, timed with rdtsc and converted to nanoseconds with the pvclock
 * TSC scale (vcpu_info.time: tsc_to_system_mul / tsc_shift, as Linux does),
 * and prints one console line per round:
 *
 *   BENCH <name> n=<N> cycles=<C> ns=<T> tsc_khz=<K>
 *
 * Measurements:
 *   hypercall_null   HYPERVISOR_xen_version(XENVER_version): the null hypercall
 *                    (syscall -> LSTAR stub -> exit -> Python dispatch -> back)
 *   trap_cpuid       forced-emulation CPUID (`ud2; "xen"; cpuid`): #UD at CPL 3
 *                    -> IDT stub -> exit -> emulated in Python -> back
 *   trap_bounce      int3 bounced to the guest's own #BP handler, which
 *                    returns with HYPERVISOR_iret (two exits; the path every
 *                    guest page fault and user-mode exception takes)
 *   mmu_update_pte   HYPERVISOR_mmu_update of one L1 entry (validated in
 *                    Python, applied by the in-VM writer)
 *   update_va_invlpg HYPERVISOR_update_va_mapping(va, pte, UVMF_INVLPG)
 *   iret_kernel      HYPERVISOR_iret to the next instruction, kernel mode to
 *                    kernel mode (the return of every bounce taken in kernel
 *                    mode: one exit, no mode switch)
 *   pf_kernel        a #PF in kernel mode (not-present page) bounced to the
 *                    guest's handler, which skips the load and returns with
 *                    HYPERVISOR_iret (two exits)
 *   user_syscall     a system call from guest user mode: bounced to the
 *                    syscall callback in kernel mode, back to user mode with
 *                    HYPERVISOR_iret (two exits, two mode switches)
 *   pf_user          a #PF in guest user mode (not-present page), bounced to
 *                    the kernel's handler, back with HYPERVISOR_iret (two
 *                    exits, two mode switches): every user page fault's path
 *
 * N and ROUNDS come from the command line ("n=... rounds=..."); defaults
 * 2000 and 5.  Ends with "DONE" and SCHEDOP_shutdown(poweroff).
 */
#include "guest.h"

/* L4 511, L3 510, L2 511: a free 2 MiB slot of the bootstrap area (as the
 * mmu test kernel uses). */
#define FRESH_VA 0xffffffffbfe00000UL
#define FRESH_L2_INDEX 511
#define HOLE_VA (FRESH_VA + 0x1000)     /* the pinned L1 maps only FRESH_VA */

/* Guest user mode: its own page-table tree with the user program at
 * USER_CODE_VA (read-only), an unmapped page, and a stack. */
#define USER_CODE_VA    0x400000
#define USER_HOLE_VA    0x401000
#define USER_STACK_VA   0x402000
#define USER_STACK_TOP  0x403000
#define USER_NR_LOOP    0x1001
#define STR_(x) #x
#define STR(x) STR_(x)

/* The user program, copied to USER_CODE_VA: a syscall loop and a page-fault
 * loop; the kernel counts the round trips and leaves user mode after N. */
__asm__(
    "    .text\n"
    "user_code_start:\n"
    "user_sys_loop:\n"
    "    mov     $" STR(USER_NR_LOOP) ", %eax\n"
    "    syscall\n"
    "    jmp     user_sys_loop\n"
    "user_pf_loop:\n"
    "    mov     $" STR(USER_HOLE_VA) ", %ecx\n"
    "user_pf_insn:\n"
    "    mov     (%rcx), %rax\n"
    "user_pf_resume:\n"
    "    jmp     user_pf_loop\n"
    "user_code_end:\n");
extern const char user_code_start[], user_code_end[];
extern const char user_sys_loop[], user_pf_loop[], user_pf_insn[], user_pf_resume[];
extern void xen_syscall_entry(void);
#define USER_ADDR(label) (USER_CODE_VA + (uint64_t)((label) - user_code_start))

/* iret_self(): HYPERVISOR_iret to its own `ret`, staying in kernel mode (RPL
 * 0 in the frame's CS and SS, as Xen writes kernel-mode bounce frames) with
 * IF clear, so events stay masked. kpf_touch(va): a load the #PF handler
 * skips (to kpf_resume). */
__asm__(
    "    .text\n"
    "    .globl iret_self\n"
    "iret_self:\n"
    "    mov     %rsp, %r8\n"
    "    pushq   $(" STR(FLAT_KERNEL_SS) " & ~3)\n"
    "    push    %r8\n"
    "    pushfq\n"
    "    andq    $~0x200, (%rsp)\n"
    "    pushq   $(" STR(FLAT_KERNEL_CS) " & ~3)\n"
    "    lea     1f(%rip), %r9\n"
    "    push    %r9\n"
    "    pushq   $0\n"
    "    push    %rcx\n"
    "    push    %r11\n"
    "    push    %rax\n"
    "    mov     $" STR(__HYPERVISOR_iret) ", %eax\n"
    "    syscall\n"
    "    ud2\n"
    "1:  ret\n"
    "    .globl kpf_touch\n"
    "kpf_touch:\n"
    "kpf_insn:\n"
    "    mov     (%rdi), %rax\n"
    "kpf_resume:\n"
    "    ret\n");
void iret_self(void);
void kpf_touch(const void *va);
extern const char kpf_insn[], kpf_resume[];

static uint8_t kstack[16384] __attribute__((aligned(16)));
#define KSTACK_TOP ((uint64_t)kstack + sizeof(kstack))

static struct vcpu_time_info tinfo;
static uint64_t tsc_khz;

static uint64_t cycles_to_ns(uint64_t delta)
{
    if (tinfo.tsc_shift < 0)
        delta >>= -tinfo.tsc_shift;
    else
        delta <<= tinfo.tsc_shift;
    return (uint64_t)(((unsigned __int128)delta * tinfo.tsc_to_system_mul) >> 32);
}

static void report(const char *name, uint64_t n, uint64_t cycles)
{
    printf("BENCH %s n=%lu cycles=%lu ns=%lu tsc_khz=%lu\n", name, n, cycles,
           cycles_to_ns(cycles), tsc_khz);
}

static uint64_t parse_arg(const char *key, uint64_t dflt)
{
    const char *cl = xen_start_info->cmd_line;
    size_t klen = strlen(key);
    for (size_t i = 0; cl[i] && i < sizeof(xen_start_info->cmd_line); i++) {
        if ((i == 0 || cl[i - 1] == ' ') && memcmp(cl + i, key, klen) == 0 && cl[i + klen] == '=') {
            uint64_t v = 0;
            for (const char *p = cl + i + klen + 1; *p >= '0' && *p <= '9'; p++)
                v = v * 10 + (uint64_t)(*p - '0');
            return v ? v : dflt;
        }
    }
    return dflt;
}

static inline void xen_cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    asm volatile(".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e\n\t"   /* ud2; .ascii "xen" */
                 "cpuid"
                 : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d)
                 : "0"(leaf), "2"(0)
                 : "memory");
}

static volatile uint64_t bp_count;

static int bp_handler(struct regs *r)
{
    (void)r;                     /* RIP is already past the int3 */
    bp_count++;
    return TRAP_RETURN;
}

/* Round trips counted by the handlers: user mode is left after user_target. */
static volatile uint64_t user_count, user_target, kpf_count;

static int syscall_handler(struct regs *r)
{
    if (r->rax != USER_NR_LOOP) {
        fail("user_syscall", "syscall rax %#lx from rip %#lx", r->rax, r->rip);
        return TRAP_LEAVE_USER;
    }
    if (++user_count >= user_target)
        return TRAP_LEAVE_USER;
    r->cs = FLAT_USER_CS64;          /* RPL 3: HYPERVISOR_iret goes back to user mode */
    r->ss = FLAT_USER_SS64;
    return TRAP_RETURN;
}

static int pf_handler(struct regs *r)
{
    if ((r->cs & 3) == 3 && r->rip == USER_ADDR(user_pf_insn) && VCPU0->cr2 == USER_HOLE_VA) {
        if (++user_count >= user_target)
            return TRAP_LEAVE_USER;
        r->rip = USER_ADDR(user_pf_resume);
        return TRAP_RETURN;
    }
    if ((r->cs & 3) != 3 && r->rip == (uint64_t)kpf_insn && VCPU0->cr2 == HOLE_VA) {
        kpf_count++;
        r->rip = (uint64_t)kpf_resume;
        return TRAP_RETURN;
    }
    fail("unexpected_pf", "#PF at %#lx cr2 %#lx error %#lx cs %#lx", r->rip, VCPU0->cr2, r->error, r->cs);
    dump_regs(r);
    finish();
}

#define L1_INDEX(va) (((va) >> 12) & 511)
#define L2_INDEX(va) (((va) >> 21) & 511)

/* Build and register guest user mode (as tests/guests/syscall_user.c does). */
static int user_mode_setup(void)
{
    uint64_t *l4 = alloc_page(), *l3 = alloc_page(), *l2 = alloc_page(), *l1 = alloc_page();
    uint8_t *code = alloc_page(), *stack = alloc_page();
    memcpy(code, user_code_start, (size_t)(user_code_end - user_code_start));
    l4[0] = (virt_to_mfn(l3) << 12) | PTE_TABLE;
    l3[0] = (virt_to_mfn(l2) << 12) | PTE_TABLE;
    l2[L2_INDEX(USER_CODE_VA)] = (virt_to_mfn(l1) << 12) | PTE_TABLE;
    l1[L1_INDEX(USER_CODE_VA)] = (virt_to_mfn(code) << 12) | _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED;
    l1[L1_INDEX(USER_STACK_VA)] = (virt_to_mfn(stack) << 12) | _PAGE_PRESENT | _PAGE_RW |
                                  _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY;
    long rc = set_page_ro(l4);
    if (!rc) rc = set_page_ro(l3);
    if (!rc) rc = set_page_ro(l2);
    if (!rc) rc = set_page_ro(l1);
    if (!rc) rc = mmuext_mfn(MMUEXT_PIN_L4_TABLE, virt_to_mfn(l4));
    if (!check_rc(rc, "user_pt_pinned"))
        return 0;
    struct callback_register cb = {
        .type = CALLBACKTYPE_syscall,
        .flags = CALLBACKF_mask_events,
        .address = (uint64_t)xen_syscall_entry,
    };
    return check_rc(callbacks_install(), "callbacks") &&
           check_rc(HYPERVISOR_callback_op(CALLBACKOP_register, &cb), "syscall_callback") &&
           check_rc(HYPERVISOR_stack_switch(FLAT_KERNEL_SS, KSTACK_TOP), "stack_switch") &&
           check_rc(mmuext_mfn(MMUEXT_NEW_USER_BASEPTR, virt_to_mfn(l4)), "new_user_baseptr");
}

/* Run the user program from ``entry`` until n round trips; returns TSC cycles. */
static uint64_t user_loop(const char *entry, uint64_t n)
{
    struct iret_context ctx = {
        .rip = USER_ADDR(entry),
        .cs = FLAT_USER_CS64,
        .rflags = X86_EFLAGS_IF | 0x2,     /* user mode runs with events enabled, as Linux's */
        .rsp = USER_STACK_TOP,
        .ss = FLAT_USER_SS64,
    };
    user_count = 0;
    user_target = n;
    uint64_t t0 = rdtsc();
    run_user(&ctx);
    return rdtsc() - t0;
}

static uint64_t *table_va(uint64_t entry)
{
    return mfn_to_virt((entry & PTE_ADDR_MASK) >> 12);
}

static uint64_t maddr_of(const void *va)
{
    return (virt_to_mfn(va) << 12) | ((uint64_t)va & (PAGE_SIZE - 1));
}

void guest_main(void)
{
    uint64_t n = parse_arg("n", 2000), rounds = parse_arg("rounds", 5);
    uint64_t t0, t1;
    long rc;

    trap_set_handler(3, bp_handler);
    trap_set_handler(14, pf_handler);
    trap_set_handler(VEC_SYSCALL, syscall_handler);
    require_rc(traps_install(), "set_trap_table");
    require_rc(map_shared_info(), "map_shared_info");
    require_rc(m2p_init(), "machphys_mapping");
    pvclock_snapshot(&tinfo);
    tsc_khz = pvclock_tsc_khz(&tinfo);
    printf("nullcall: n=%lu rounds=%lu tsc_khz=%lu mul=%u shift=%d\n", n, rounds, tsc_khz,
           tinfo.tsc_to_system_mul, tinfo.tsc_shift);

    /* A pinned L1 hooked into a free slot of the bootstrap L2, one entry of
     * which the mmu_update loop flips between two frames. */
    struct start_info *si = xen_start_info;
    uint64_t *l4 = (uint64_t *)si->pt_base;
    uint64_t *l2 = table_va(table_va(l4[511])[510]);
    if (l2[FRESH_L2_INDEX] != 0) {
        fail("fresh_va", "L2 slot %d is in use (%#lx)", FRESH_L2_INDEX, l2[FRESH_L2_INDEX]);
        return;
    }
    uint64_t *l1 = alloc_page(), *fa = alloc_page(), *fb = alloc_page();
    require_rc(set_page_ro(l1), "l1_ro");
    require_rc(mmuext_mfn(MMUEXT_PIN_L1_TABLE, virt_to_mfn(l1)), "pin_l1");
    require_rc(mmu_update1(maddr_of(&l2[FRESH_L2_INDEX]) | MMU_NORMAL_PT_UPDATE,
                           (virt_to_mfn(l1) << 12) | PTE_TABLE), "l2_link");
    uint64_t pte_ma = maddr_of(&l1[0]);
    uint64_t pte_a = (virt_to_mfn(fa) << 12) | PTE_KERNEL_RW;
    uint64_t pte_b = (virt_to_mfn(fb) << 12) | PTE_KERNEL_RW;
    fa[0] = 0xa;
    fb[0] = 0xb;
    if (!user_mode_setup())
        return;

    for (uint64_t r = 0; r < rounds; r++) {
        /* warm-up on the first round only */
        if (r == 0)
            for (int i = 0; i < 50; i++)
                HYPERVISOR_xen_version(XENVER_version, 0);

        t0 = rdtsc();
        for (uint64_t i = 0; i < n; i++)
            HYPERVISOR_xen_version(XENVER_version, 0);
        t1 = rdtsc();
        report("hypercall_null", n, t1 - t0);

        uint32_t a, b, c, d;
        t0 = rdtsc();
        for (uint64_t i = 0; i < n; i++)
            xen_cpuid(0x40000000, &a, &b, &c, &d);
        t1 = rdtsc();
        report("trap_cpuid", n, t1 - t0);

        uint64_t before = bp_count;
        t0 = rdtsc();
        for (uint64_t i = 0; i < n; i++)
            asm volatile("int3" ::: "memory");
        t1 = rdtsc();
        if (bp_count - before != n) {
            fail("trap_bounce", "%lu int3 handled, want %lu", bp_count - before, n);
            return;
        }
        report("trap_bounce", n, t1 - t0);

        rc = 0;
        t0 = rdtsc();
        for (uint64_t i = 0; i < n && rc == 0; i++)
            rc = mmu_update1(pte_ma | MMU_NORMAL_PT_UPDATE, (i & 1) ? pte_b : pte_a);
        t1 = rdtsc();
        if (rc) {
            fail("mmu_update_pte", "rc %ld", rc);
            return;
        }
        report("mmu_update_pte", n, t1 - t0);

        t0 = rdtsc();
        for (uint64_t i = 0; i < n && rc == 0; i++)
            rc = HYPERVISOR_update_va_mapping(FRESH_VA, (i & 1) ? pte_a : pte_b, UVMF_INVLPG);
        t1 = rdtsc();
        if (rc) {
            fail("update_va_invlpg", "rc %ld", rc);
            return;
        }
        report("update_va_invlpg", n, t1 - t0);
        uint64_t seen = *(volatile uint64_t *)FRESH_VA;
        uint64_t want = ((n - 1) & 1) ? 0xa : 0xb;
        if (seen != want) {
            fail("update_va_invlpg", "mapping reads %#lx, want %#lx", seen, want);
            return;
        }

        t0 = rdtsc();
        for (uint64_t i = 0; i < n; i++)
            iret_self();
        t1 = rdtsc();
        report("iret_kernel", n, t1 - t0);

        before = kpf_count;
        t0 = rdtsc();
        for (uint64_t i = 0; i < n; i++)
            kpf_touch((const void *)HOLE_VA);
        t1 = rdtsc();
        if (kpf_count - before != n) {
            fail("pf_kernel", "%lu #PF handled, want %lu", kpf_count - before, n);
            return;
        }
        report("pf_kernel", n, t1 - t0);

        uint64_t cycles = user_loop(user_sys_loop, n);
        if (user_count != n) {
            fail("user_syscall", "%lu system calls, want %lu", user_count, n);
            return;
        }
        report("user_syscall", n, cycles);

        cycles = user_loop(user_pf_loop, n);
        if (user_count != n) {
            fail("pf_user", "%lu user page faults, want %lu", user_count, n);
            return;
        }
        report("pf_user", n, cycles);
    }
    pass("nullcall");
}
