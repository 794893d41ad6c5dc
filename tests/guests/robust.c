/*
 * robust: hypercall arguments at the edges that once took Hospes down
 * (issue 13.4), each answered as Xen answers it.
 *
 * set_timer_op (xen/common/sched/core.c, do_set_timer_op): 0 stops the
 * timer; a deadline with bit 63 set, or 2^50 ns or more ahead, is a "huge
 * timeout" that fires 100 ms from now; anything else is armed as given.
 * VCPUOP_set_singleshot_timer (xen/common/domain.c): a deadline already
 * past (0 too) sends the timer event at once; VCPUOP_set_periodic_timer
 * refuses a period above STIME_DELTA_MAX (2^62 - 1) with -EINVAL.
 * multicall: an entry's result is an unsigned long, so get_debugreg of a
 * kernel address comes back whole.
 *
 * Events stay masked throughout: the timer port's pending bit is watched.
 */
#include "guest.h"

static evtchn_port_t timer_port;

/* Spin (events masked) until the timer port is pending or `limit` ns pass;
 * the ns it took, or ~0 if it never fired. */
static uint64_t wait_pending(uint64_t start, uint64_t limit)
{
    while (!port_pending(timer_port)) {
        if (pvclock_now() - start >= limit)
            return ~0UL;
        asm volatile("pause");
    }
    return pvclock_now() - start;
}

static void huge_timeout(const char *name, uint64_t deadline_offset, int absolute)
{
    port_clear_pending(timer_port);
    uint64_t start = pvclock_now();
    uint64_t deadline = absolute ? deadline_offset : start + deadline_offset;
    long rc = HYPERVISOR_set_timer_op(deadline);
    uint64_t took = wait_pending(start, 2 * NSEC_PER_SEC);
    check(rc == 0 && took != ~0UL && took >= 100 * NSEC_PER_MSEC && took < NSEC_PER_SEC, name,
          "deadline %#lx: rc %ld, fired after %ld ns (Xen: 100 ms)", deadline, rc, (long)took);
}

static struct multicall_entry calls[2];

void guest_main(void)
{
    long rc;
    uint64_t start, took;

    require_rc(traps_install(), "set_trap_table");
    require_rc(map_shared_info(), "map_shared_info");
    require_rc(HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, 0), "stop_periodic_timer");
    require_rc(evtchn_bind_virq(VIRQ_TIMER, 0, &timer_port), "bind_virq_timer");
    events_disable();
    port_unmask_local(timer_port);

    /* 1. set_timer_op(~0): a wrapped (negative) deadline fires in 100 ms. */
    huge_timeout("set_timer_op_all_ones_fires_in_100ms", ~0UL, 1);
    /* 2. Bit 63 alone. */
    huge_timeout("set_timer_op_bit63_fires_in_100ms", 1UL << 63, 1);
    /* 3. 2^50 ns ahead is "huge" too. */
    huge_timeout("set_timer_op_2p50_ahead_fires_in_100ms", (1UL << 50) + NSEC_PER_SEC, 0);

    /* 4. Just under 2^50 ns ahead is armed as given: nothing within 150 ms. */
    port_clear_pending(timer_port);
    start = pvclock_now();
    rc = HYPERVISOR_set_timer_op(start + (1UL << 50) - NSEC_PER_SEC);
    took = wait_pending(start, 150 * NSEC_PER_MSEC);
    long rc0 = HYPERVISOR_set_timer_op(0);
    check(rc == 0 && rc0 == 0 && took == ~0UL, "set_timer_op_below_2p50_is_armed",
          "rc %ld/%ld, fired after %ld ns", rc, rc0, (long)took);

    /* 5. set_timer_op(0) stops an armed timer. */
    port_clear_pending(timer_port);
    start = pvclock_now();
    rc = HYPERVISOR_set_timer_op(start + 20 * NSEC_PER_MSEC);
    rc0 = HYPERVISOR_set_timer_op(0);
    took = wait_pending(start, 80 * NSEC_PER_MSEC);
    check(rc == 0 && rc0 == 0 && took == ~0UL, "set_timer_op_zero_stops",
          "rc %ld/%ld, fired after %ld ns", rc, rc0, (long)took);

    /* 6. VCPUOP_set_singleshot_timer(0): already past, fires at once. */
    port_clear_pending(timer_port);
    start = pvclock_now();
    rc = set_singleshot(0, 0);
    took = wait_pending(start, NSEC_PER_SEC);
    check(rc == 0 && took != ~0UL && took < 50 * NSEC_PER_MSEC, "singleshot_zero_fires_now",
          "rc %ld, fired after %ld ns", rc, (long)took);

    /* 7. VCPUOP_set_singleshot_timer(~0) is not in the past (an unsigned
     *    compare): Xen arms s_time_t -1, which is due at once. */
    port_clear_pending(timer_port);
    start = pvclock_now();
    rc = set_singleshot(~0UL, 0);
    took = wait_pending(start, NSEC_PER_SEC);
    check(rc == 0 && took != ~0UL && took < 50 * NSEC_PER_MSEC, "singleshot_all_ones_fires_now",
          "rc %ld, fired after %ld ns", rc, (long)took);
    port_clear_pending(timer_port);

    /* 8. A periodic timer above STIME_DELTA_MAX is -EINVAL; at it, accepted. */
    struct vcpu_set_periodic_timer p = { .period_ns = 1UL << 62 };
    rc = HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, &p);
    p.period_ns = (1UL << 62) - 1;
    long rc2 = HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, &p);
    HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, 0);
    check(rc == -XEN_EINVAL && rc2 == 0, "periodic_above_stime_delta_max_einval",
          "2^62: %ld (want %d), 2^62-1: %ld (want 0)", rc, -XEN_EINVAL, rc2);

    /* 9. get_debugreg inside a multicall after set_debugreg(0, <kernel
     *    address>): the entry's result is the whole address. */
    uint64_t addr = (uint64_t)_stext;
    rc = HYPERVISOR_set_debugreg(0, addr);
    calls[0].op = __HYPERVISOR_get_debugreg;
    calls[0].args[0] = 0;
    calls[0].result = 0;
    calls[1].op = __HYPERVISOR_get_debugreg;
    calls[1].args[0] = 7;
    calls[1].result = 0;
    long mrc = HYPERVISOR_multicall(calls, 2);
    long direct = HYPERVISOR_get_debugreg(0);
    check(rc == 0 && mrc == 0 && calls[0].result == addr && (uint64_t)direct == addr &&
              calls[1].result == 0x400,
          "multicall_get_debugreg_kernel_address",
          "set %ld, multicall %ld, dr0 %#lx (direct %#lx), dr7 %#lx; want %#lx and 0x400",
          rc, mrc, calls[0].result, direct, calls[1].result, addr);
    HYPERVISOR_set_debugreg(0, 0);
}
