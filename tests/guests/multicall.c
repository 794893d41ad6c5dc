/*
 * multicall: HYPERVISOR_multicall (pv-abi.md §5.2). Linux batches most of
 * its MMU work this way and BUG()s unless the multicall itself returns 0;
 * it then inspects every entry's result. Entries run in order, a failing
 * entry (an unknown hypercall number: -ENOSYS) does not stop the batch.
 */
#include "guest.h"

#define MAGIC_A 0xa1a1a1a1a1a1a1a1UL
#define MAGIC_B 0xb2b2b2b2b2b2b2b2UL
#define UNSET   0xdeadbeefdeadbeefUL
#define UNKNOWN_HYPERCALL 60

static struct multicall_entry calls[4];

void guest_main(void)
{
    require_rc(traps_install(), "set_trap_table");

    volatile uint64_t *a = alloc_page(), *b = alloc_page();
    a[0] = MAGIC_A;
    b[0] = MAGIC_B;
    long version = HYPERVISOR_xen_version(XENVER_version, 0);

    for (unsigned i = 0; i < 4; i++)
        calls[i].result = UNSET;
    calls[0].op = __HYPERVISOR_xen_version;
    calls[0].args[0] = XENVER_version;
    calls[1].op = __HYPERVISOR_update_va_mapping;      /* page a now shows frame b */
    calls[1].args[0] = (uint64_t)a;
    calls[1].args[1] = (virt_to_mfn((void *)b) << 12) | PTE_KERNEL_RW;
    calls[1].args[2] = UVMF_INVLPG;
    calls[2].op = UNKNOWN_HYPERCALL;
    calls[3].op = __HYPERVISOR_xen_version;
    calls[3].args[0] = XENVER_pagesize;

    long rc = HYPERVISOR_multicall(calls, 4);
    check(rc == 0, "multicall_returns_zero", "multicall returned %ld", rc);
    check(calls[0].result == (uint64_t)version, "multicall_xen_version_result",
          "entry 0 result %#lx, direct xen_version gave %#lx", calls[0].result, version);
    uint64_t seen = calls[1].result == 0 ? a[0] : 0;
    check(calls[1].result == 0 && seen == MAGIC_B, "multicall_update_va_mapping",
          "entry 1 result %#lx, page reads %#lx", calls[1].result, seen);
    check((long)calls[2].result == -XEN_ENOSYS, "multicall_unknown_op_enosys",
          "entry 2 (hypercall %d) result %ld, want %d", UNKNOWN_HYPERCALL,
          (long)calls[2].result, -XEN_ENOSYS);
    check(calls[3].result == PAGE_SIZE, "multicall_continues_after_error",
          "entry 3 (xen_version pagesize) result %#lx", calls[3].result);

    /* Put page a's own frame back. */
    if (set_page_rw((void *)a) != 0 || a[0] != MAGIC_A)
        fail("multicall_restore", "could not map page a back");
}
