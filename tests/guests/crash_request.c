/*
 * crash_request: the guest asks to crash (SCHEDOP_shutdown, SHUTDOWN_crash),
 * as Linux does on a panic with panic_on_oops. Hospes must report why, with
 * the guest's last console lines, not an empty reason. It also writes one
 * line with console_io, which belongs in the hypervisor's log, not on the
 * console.
 */
#include "guest.h"

void guest_main(void)
{
    static const char line[] = "crash_request: a line for the hypervisor log\n";
    HYPERVISOR_console_io(CONSOLEIO_write, sizeof(line) - 1, line);
    printf("crash_request: last words before the crash\n");
    struct sched_shutdown sd = { .reason = SHUTDOWN_crash };
    long rc = HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
    fail("crash_request", "SCHEDOP_shutdown(crash) returned %ld", rc);
}
