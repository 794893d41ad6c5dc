/*
 * iret_edges: HYPERVISOR_iret as Xen's do_iret (xen/arch/x86/pv/iret.c) and
 * multicall (pv_do_multicall_call) treat it.
 *
 * - A non-canonical RSP in the frame is copied as it is: the fault comes
 *   only when the guest uses it. The code at the frame's RIP reads RSP
 *   before touching the stack and puts a good one back.
 * - An iret entry in a multicall takes effect and ends the batch: the guest
 *   resumes at the frame's RIP with the frame's RAX, the entry's result is
 *   that RAX, and the entries after it never run.
 */
#include "guest.h"

#define NONCANONICAL 0x8000000000000000UL
#define MAGIC_RAX    0x5a5a1234UL
#define UNSET        0xdeadbeefdeadbeefUL

uint64_t iret_edges_saved_rsp;
static struct multicall_entry calls[3];

/* HYPERVISOR_iret to the next instruction, with RSP = new_rsp in the frame;
 * returns the RSP the guest found there. Events stay masked (IF clear). */
static uint64_t iret_with_rsp(uint64_t new_rsp)
{
    uint64_t seen;
    asm volatile(
        "mov %%rsp, iret_edges_saved_rsp(%%rip)\n\t"
        "pushq $0xe02b\n\t"             /* ss */
        "pushq %[rsp]\n\t"              /* rsp */
        "pushq $0x2\n\t"                /* rflags: IF clear */
        "pushq $0xe030\n\t"             /* cs: FLAT_KERNEL_CS, RPL 0 as Linux pushes it */
        "lea 1f(%%rip), %%rax\n\t"
        "pushq %%rax\n\t"               /* rip */
        "pushq $0\n\t"                  /* flags: not VGCF_in_syscall */
        "pushq %%rcx\n\t"
        "pushq %%r11\n\t"
        "pushq $0\n\t"                  /* rax */
        "mov $23, %%eax\n\t"
        "syscall\n"
        "1:\n\t"
        "mov %%rsp, %[seen]\n\t"
        "mov iret_edges_saved_rsp(%%rip), %%rsp\n\t"
        : [seen] "=&r"(seen)
        : [rsp] "r"(new_rsp)
        : "rax", "rcx", "r11", "memory");
    return seen;
}

/* HYPERVISOR_multicall(calls, n) with an iret frame on the stack, which
 * returns to the next instruction with RSP as before and RAX = MAGIC_RAX;
 * returns RAX as found there. */
static uint64_t multicall_with_iret_frame(unsigned long n)
{
    uint64_t rax;
    struct multicall_entry *list = calls;
    asm volatile(
        "mov %%rsp, iret_edges_saved_rsp(%%rip)\n\t"
        "pushq $0xe02b\n\t"
        "pushq iret_edges_saved_rsp(%%rip)\n\t"
        "pushq $0x2\n\t"
        "pushq $0xe030\n\t"
        "lea 1f(%%rip), %%rax\n\t"
        "pushq %%rax\n\t"
        "pushq $0\n\t"
        "pushq %%rcx\n\t"
        "pushq %%r11\n\t"
        "pushq %[magic]\n\t"
        "mov $13, %%eax\n\t"            /* __HYPERVISOR_multicall */
        "syscall\n\t"
        "mov iret_edges_saved_rsp(%%rip), %%rsp\n\t"   /* returned normally: drop the frame */
        "1:\n\t"
        : "=a"(rax), "+D"(list), "+S"(n)
        : [magic] "i"(MAGIC_RAX)
        : "rcx", "r11", "rdx", "r10", "r8", "memory");
    return rax;
}

void guest_main(void)
{
    require_rc(traps_install(), "set_trap_table");

    /* 1. A non-canonical RSP reaches the guest as it was. */
    uint64_t seen = iret_with_rsp(NONCANONICAL);
    check(seen == NONCANONICAL, "iret_noncanonical_rsp_copied",
          "RSP after the iret is %#lx, want %#lx", seen, NONCANONICAL);

    /* 2. An iret entry ends the batch. */
    long version = HYPERVISOR_xen_version(XENVER_version, 0);
    for (unsigned i = 0; i < 3; i++)
        calls[i].result = UNSET;
    calls[0].op = __HYPERVISOR_xen_version;
    calls[0].args[0] = XENVER_version;
    calls[1].op = __HYPERVISOR_iret;
    calls[2].op = __HYPERVISOR_xen_version;
    calls[2].args[0] = XENVER_pagesize;
    uint64_t rax = multicall_with_iret_frame(3);
    check(rax == MAGIC_RAX && calls[0].result == (uint64_t)version && calls[1].result == MAGIC_RAX &&
              calls[2].result == UNSET,
          "multicall_iret_ends_batch",
          "rax %#lx (want %#lx), results %#lx %#lx %#lx (want %#lx, %#lx, untouched)",
          rax, MAGIC_RAX, calls[0].result, calls[1].result, calls[2].result, version, MAGIC_RAX);
}
