/*
 * reboot: asks for a reboot as soon as it starts (SCHEDOP_shutdown with
 * SHUTDOWN_reboot), a guest in a reboot loop. The toolstack tests check that
 * Hospes spaces such restarts out and stops the loop (xl waits 2 s before a
 * restart). No PASS lines: it never gets to DONE.
 */
#include "guest.h"

#define SHUTDOWN_REBOOT 1       /* xen/include/public/sched.h */

void guest_main(void)
{
    struct sched_shutdown sd = { .reason = SHUTDOWN_REBOOT };
    printf("reboot test kernel: rebooting\n");
    HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
    for (;;)
        HYPERVISOR_sched_op(SCHEDOP_block, 0);
}
