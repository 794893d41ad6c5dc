/*
 * crash_nohandler: a #PF before the guest has any trap table. Xen crashes
 * such a domain; Hospes must end it with a register dump, not a traceback.
 */
#include "guest.h"

void guest_main(void)
{
    printf("about to fault without a handler\n");
    volatile uint64_t *p;
    /* Hide the constant address from the compiler's bounds checks. */
    __asm__ volatile("mov $0x10, %0" : "=r"(p));
    *p = 1;
    fail("crash_nohandler", "the store to 0x10 did not fault");
}
