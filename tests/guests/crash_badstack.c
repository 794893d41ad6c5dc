/*
 * crash_badstack: a fault while the kernel stack is unmapped, so the bounce
 * frame cannot be written (Xen crashes the domain).
 */
#include "guest.h"

void guest_main(void)
{
    traps_install();
    printf("about to fault on an unmapped stack\n");
    __asm__ volatile("mov $0x00007ff000000000, %%rsp\n\tud2" ::: "memory");
    fail("crash_badstack", "ud2 did not fault");
}
