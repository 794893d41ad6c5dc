/*
 * hypercall_page: kernels older than Linux 6.1.12x call the hypervisor
 * through a hypercall page the loader fills in (XEN_ELFNOTE_HYPERCALL_PAGE).
 * Stub i sits at page + 32*i and is `push %rcx; push %r11; mov $i,%eax;
 * syscall; pop %r11; pop %rcx; ret`; stub 23 (iret) is jumped to with the
 * flags word already pushed and is `push %rcx; push %r11; push %rax;
 * mov $23,%eax; syscall` (pv-abi.md §4.2). Check the bytes, call
 * xen_version and console_io through it, and return from an exception
 * through its iret stub.
 */
#include "guest.h"

extern uint8_t hypercall_page[];

#define VCPUOP_is_up 3
#define IS_UP_PROBES 1000

static const uint8_t normal_stub[14] = {
    0x51,                           /* push %rcx */
    0x41, 0x53,                     /* push %r11 */
    0xb8, 0, 0, 0, 0,               /* mov $i, %eax */
    0x0f, 0x05,                     /* syscall */
    0x41, 0x5b,                     /* pop %r11 */
    0x59,                           /* pop %rcx */
    0xc3,                           /* ret */
};

static const uint8_t iret_stub[11] = {
    0x51, 0x41, 0x53,               /* push %rcx; push %r11 */
    0x50,                           /* push %rax */
    0xb8, __HYPERVISOR_iret, 0, 0, 0,
    0x0f, 0x05,                     /* syscall */
};

/* Call stub nr of the page with up to three arguments (C calling it like
 * Linux's old `call hypercall_page + nr*32`). */
static long page_call(unsigned nr, uint64_t a1, uint64_t a2, uint64_t a3)
{
    register uint64_t r10 asm("r10") = 0;
    register uint64_t r8 asm("r8") = 0;
    void *stub = hypercall_page + 32 * nr;
    long ret;
    asm volatile("call *%[stub]"
                 : "=a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                 : [stub] "r"(stub)
                 : "memory");
    return ret;
}

/* vcpu_op's stub starts with `cmp $max_vcpus,%esi; jae` (8 bytes) before the usual one. */
static int stub_ok(unsigned i)
{
    uint8_t want[14];
    unsigned skip = i == __HYPERVISOR_vcpu_op ? 8 : 0;
    memcpy(want, normal_stub, sizeof(want));
    memcpy(want + 4, &i, 4);
    return memcmp(hypercall_page + 32 * i + skip, want, sizeof(want)) == 0;
}

static volatile uint64_t bp_count;

static int bp_handler(struct regs *r)
{
    (void)r;
    bp_count++;
    return TRAP_RETURN;         /* int3 is a trap: RIP is already past it */
}

void guest_main(void)
{
    int ok = stub_ok(0);
    if (!check(ok, "hypercall_page_stub0_bytes",
               "stub 0 is %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x",
               hypercall_page[0], hypercall_page[1], hypercall_page[2], hypercall_page[3],
               hypercall_page[4], hypercall_page[5], hypercall_page[6], hypercall_page[7],
               hypercall_page[8], hypercall_page[9], hypercall_page[10], hypercall_page[11],
               hypercall_page[12], hypercall_page[13]))
        return;                 /* not filled in: do not jump into it */

    unsigned bad = 0;
    for (unsigned i = 1; i < 128; i++)
        if (i != __HYPERVISOR_iret && !stub_ok(i) && !bad)
            bad = i;
    check(bad == 0, "hypercall_page_all_stubs", "stub %u differs", bad);
    int iret_ok = memcmp(hypercall_page + 32 * __HYPERVISOR_iret, iret_stub,
                         sizeof(iret_stub)) == 0;
    check(iret_ok, "hypercall_page_iret_stub_bytes", "stub 23 differs");

    long direct = HYPERVISOR_xen_version(XENVER_version, 0);
    long paged = page_call(__HYPERVISOR_xen_version, XENVER_version, 0, 0);
    check(paged == direct && paged > 0, "hypercall_page_xen_version",
          "through the page %#lx, direct %#lx", paged, direct);

    /* vcpu_op's stub answers an id beyond the domain's vCPUs itself (-ENOENT,
     * as Xen does for any command): Linux probes NR_CPUS ids at boot. The
     * host side checks that these made no exit (test_pv_guests.py). */
    long up0 = page_call(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 0, 0);
    long wrong = 0, wrong_id = 0;
    for (uint64_t id = 1; id <= IS_UP_PROBES; id++) {
        long r = page_call(__HYPERVISOR_vcpu_op, VCPUOP_is_up, id, 0);
        if (r != -2 && !wrong) {
            wrong = r;
            wrong_id = (long)id;
        }
    }
    /* Xen reads the id as an unsigned int: the upper half of RSI is ignored. */
    long high = page_call(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 0xffffffff00000000ull, 0);
    long neg = page_call(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 0xffffffffull, 0);
    /* The same through a direct SYSCALL, as Linux 6.1.12x and later make them. */
    long direct_wrong = 0;
    for (uint64_t id = 1; id <= IS_UP_PROBES; id++) {
        long r = HYPERVISOR_vcpu_op(VCPUOP_is_up, (int)id, 0);
        if (r != -2 && !direct_wrong)
            direct_wrong = r ? r : -1;
    }
    check(HYPERVISOR_vcpu_op(VCPUOP_is_up, 0, 0) == 1 && direct_wrong == 0,
          "syscall_vcpu_op_beyond_max", "direct is_up beyond the vCPUs gave %ld", direct_wrong);
    check(up0 == 1 && wrong == 0 && high == 1 && neg == -2, "hypercall_page_vcpu_op_beyond_max",
          "is_up(0) %ld, is_up(%ld) %ld, is_up(high half set) %ld, is_up(0xffffffff) %ld",
          up0, wrong_id, wrong, high, neg);

    static const char msg[] = "console_io through the hypercall page\n";
    long rc = page_call(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof(msg) - 1,
                        (uint64_t)msg);
    check(rc == 0, "hypercall_page_console_io", "returned %ld", rc);

    /* Return from an int3 through the page's iret stub instead of our own. */
    if (!iret_ok)
        return;
    trap_set_handler(3, bp_handler);
    require_rc(traps_install(), "set_trap_table");
    xen_iret_target = (uint64_t)(hypercall_page + 32 * __HYPERVISOR_iret);
    uint64_t n = bp_count;
    asm volatile("int3" ::: "memory");
    xen_iret_target = (uint64_t)xen_iret_syscall;
    check(bp_count == n + 1, "hypercall_page_iret", "int3 handler ran %lu times",
          bp_count - n);
}
