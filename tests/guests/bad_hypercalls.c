/*
 * bad_hypercalls: a guest that passes garbage to hypercalls. Each must fail
 * with Xen's error code and leave the hypervisor (and this guest) running.
 */
#include "guest.h"

#define BAD_VA 0x00007ff000000000UL        /* canonical, never mapped here */
#define NONCANON 0x0000800000000000UL      /* not canonical */

void guest_main(void)
{
    long rc;
    traps_install();

    rc = HYPERVISOR_mmu_update((struct mmu_update *)BAD_VA, 1, 0, DOMID_SELF);
    check(rc == -XEN_EFAULT, "mmu_update_bad_pointer", "rc %ld", rc);

    rc = HYPERVISOR_mmu_update((struct mmu_update *)BAD_VA, 0x7fffffff, 0, DOMID_SELF);
    check(rc < 0, "mmu_update_huge_count", "rc %ld", rc);

    rc = HYPERVISOR_console_io(CONSOLEIO_write, 0x7fffffff, (const char *)BAD_VA);
    check(rc < 0, "console_io_huge_count", "rc %ld", rc);

    rc = HYPERVISOR_console_io(CONSOLEIO_write, 16, (const char *)NONCANON);
    check(rc == -XEN_EFAULT, "console_io_noncanonical", "rc %ld", rc);

    rc = HYPERVISOR_set_trap_table((const struct trap_info *)BAD_VA);
    check(rc == -XEN_EFAULT, "set_trap_table_bad_pointer", "rc %ld", rc);

    rc = HYPERVISOR_multicall((struct multicall_entry *)BAD_VA, 4);
    check(rc == -XEN_EFAULT, "multicall_bad_pointer", "rc %ld", rc);

    rc = HYPERVISOR_vcpu_op(0 /* initialise */, 4096, (void *)BAD_VA);
    check(rc == -XEN_ENOENT, "vcpu_op_bad_vcpu", "rc %ld", rc);

    rc = HYPERVISOR_update_va_mapping(BAD_VA, 0x1234567000UL | 7, 0);
    check(rc < 0, "update_va_mapping_unmapped_va", "rc %ld", rc);

    rc = HYPERVISOR_mmuext_op((struct mmuext_op *)BAD_VA, 1, 0, DOMID_SELF);
    check(rc == -XEN_EFAULT, "mmuext_op_bad_pointer", "rc %ld", rc);

    rc = HYPERVISOR_raw(4000);
    check(rc == -XEN_ENOSYS, "hypercall_out_of_range", "rc %ld", rc);
}
