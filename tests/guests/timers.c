/*
 * timers: time as a PV guest sees it (pv-abi.md §2.7, §9.8).
 *
 * The pvclock record in vcpu_info.time, the wallclock in shared_info, and
 * the timers that raise VIRQ_TIMER: a 20 ms one-shot we block on, the
 * legacy set_timer_op, a periodic timer, and a deadline already in the
 * past (must fire at once; Linux relies on it) or refused with -ETIME when
 * VCPU_SSHOTTMR_future is set.
 */
#include "guest.h"

#define MAX_TICKS 8
static evtchn_port_t timer_port;
static volatile uint64_t tick_at[MAX_TICKS];
static volatile unsigned ticks;

/* Called by the upcall for each port it handles: timestamp timer events. */
static void on_event(unsigned port)
{
    if (port == timer_port && ticks < MAX_TICKS)
        tick_at[ticks++] = pvclock_now();
}

static int read_wallclock(uint32_t *sec, uint32_t *nsec)
{
    for (int tries = 0; tries < 1000; tries++) {
        uint32_t v = shared->wc_version;
        barrier();
        *sec = shared->wc_sec;
        *nsec = shared->wc_nsec;
        barrier();
        if (!(v & 1) && v == shared->wc_version)
            return 1;
    }
    return 0;
}

void guest_main(void)
{
    struct vcpu_time_info t;
    volatile uint64_t *count;
    uint64_t start, end, c0;
    long rc;

    require_rc(traps_install(), "set_trap_table");
    require_rc(map_shared_info(), "map_shared_info");
    require_rc(callbacks_install(), "register_callbacks");

    /* 1. pvclock: a stable record, a TSC frequency that makes sense. */
    pvclock_snapshot(&t);
    uint64_t khz = pvclock_tsc_khz(&t);
    uint64_t t1 = pvclock_now();
    check(!(t.version & 1) && t.tsc_to_system_mul != 0 && khz > 100000 && khz < 10000000 &&
              t1 > 0,
          "pvclock_sane", "version %u mul %u shift %d -> %lu kHz, now %lu ns",
          t.version, t.tsc_to_system_mul, t.tsc_shift, khz, t1);

    /* 2. It advances with the TSC: spin ~2 ms worth of TSC ticks. */
    uint64_t spin = (khz > 100000 && khz < 10000000 ? khz : 2000000) * 2;
    uint64_t tsc0 = rdtsc();
    while (rdtsc() - tsc0 < spin)
        asm volatile("pause");
    uint64_t t2 = pvclock_now();
    check(t2 > t1 && t2 - t1 >= NSEC_PER_MSEC && t2 - t1 < NSEC_PER_SEC, "pvclock_advances",
          "%lu ns passed while spinning 2 ms of TSC", t2 - t1);

    /* 2b. The record is one line of a synchronised TSC, and a registered time
     * area gets a copy of it at once (the area Linux's vDSO reads). */
    check(t.flags & PVCLOCK_TSC_STABLE_BIT, "pvclock_tsc_stable", "flags %#x", t.flags);
    static struct vcpu_time_info area __attribute__((aligned(64)));
    area.version = 6;
    uint64_t area_va = (uint64_t)&area;
    rc = HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_time_memory_area, 0, &area_va);
    struct vcpu_time_info now_t;
    pvclock_snapshot(&now_t);
    check(rc == 0 && area.version == 8 && area.tsc_timestamp == now_t.tsc_timestamp &&
              area.system_time == now_t.system_time && area.tsc_to_system_mul == now_t.tsc_to_system_mul &&
              area.tsc_shift == now_t.tsc_shift && area.flags == now_t.flags,
          "time_area_copy", "rc %ld version %u tsc %lu/%lu system %lu/%lu", rc, area.version,
          area.tsc_timestamp, now_t.tsc_timestamp, area.system_time, now_t.system_time);
    uint64_t bad_va = HYPERVISOR_VIRT_START + 0x1000;
    long bad = HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_time_memory_area, 0, &bad_va);
    area_va = 0;
    long off = HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_time_memory_area, 0, &area_va);
    check(bad == -XEN_EFAULT && off == 0, "time_area_hypervisor_efault", "hypervisor address %ld, unregister %ld",
          bad, off);

    /* 3. Wallclock: UNIX time at system time 0, after 2020-01-01. */
    uint32_t sec = 0, nsec = 0;
    int stable = read_wallclock(&sec, &nsec);
    printf("wallclock %u.%09u, boot + %lu s\n", sec, nsec, t2 / NSEC_PER_SEC);
    check(stable && sec > 1577836800u && sec < 4102444800u && nsec < NSEC_PER_SEC,
          "wallclock", "wc_version stable %d, wc_sec %u wc_nsec %u", stable, sec, nsec);

    /* Timer events from here on. */
    require_rc(HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, 0), "stop_periodic_timer");
    require_rc(evtchn_bind_virq(VIRQ_TIMER, 0, &timer_port), "bind_virq_timer");
    if (timer_port >= EVT_TRACKED_PORTS) {
        fail("bind_virq_timer", "port %u too large for this kernel", timer_port);
        return;
    }
    port_unmask_local(timer_port);
    evt.hook = on_event;
    count = &evt.port_count[timer_port];

    /* 4. A 20 ms one-shot timer; block until it fires. */
    c0 = *count;
    ticks = 0;
    start = pvclock_now();
    rc = set_singleshot(start + 20 * NSEC_PER_MSEC, 0);
    int woke = rc == 0 && block_until(count, c0 + 1, start + 10 * NSEC_PER_SEC);
    end = pvclock_now();
    events_disable();
    check(woke && ticks >= 1 && tick_at[0] >= start + 20 * NSEC_PER_MSEC &&
              end - start >= 20 * NSEC_PER_MSEC,
          "singleshot_sleeps", "rc %ld woke %d, fired %ld ns after arming, returned after %lu ns",
          rc, woke, ticks ? (long)(tick_at[0] - start) : -1L, end - start);

    /* 5. The legacy set_timer_op (absolute deadline, one argument). */
    c0 = *count;
    start = pvclock_now();
    rc = HYPERVISOR_set_timer_op(start + 5 * NSEC_PER_MSEC);
    woke = rc == 0 && block_until(count, c0 + 1, start + 10 * NSEC_PER_SEC);
    end = pvclock_now();
    events_disable();
    check(woke && end - start >= 5 * NSEC_PER_MSEC, "set_timer_op",
          "rc %ld woke %d after %lu ns", rc, woke, end - start);

    /* 6. A 10 ms periodic timer fires repeatedly. A one-shot at +2 s is the
     *    watchdog (a separate timer, same VIRQ) so a dead periodic timer
     *    cannot block us forever. */
    c0 = *count;
    ticks = 0;
    start = pvclock_now();
    struct vcpu_set_periodic_timer period = { .period_ns = 10 * NSEC_PER_MSEC };
    long wrc = set_singleshot(start + 2 * NSEC_PER_SEC, 0);
    rc = HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, &period);
    woke = rc == 0 && wrc == 0 && block_until(count, c0 + 3, start + 2 * NSEC_PER_SEC);
    long src = HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, 0);
    HYPERVISOR_vcpu_op(VCPUOP_stop_singleshot_timer, 0, 0);
    events_disable();
    unsigned got = ticks;
    check(woke && src == 0 && got >= 3 && tick_at[2] - tick_at[0] >= 18 * NSEC_PER_MSEC,
          "periodic_timer", "rc %ld/%ld/%ld, %u ticks in %lu ns, ticks 0..2 span %ld ns",
          wrc, rc, src, got, pvclock_now() - start,
          got >= 3 ? (long)(tick_at[2] - tick_at[0]) : -1L);

    /* 7. A deadline in the past fires at once. Events stay masked: watch
     *    the port's pending bit instead of taking the upcall. */
    port_clear_pending(timer_port);
    start = pvclock_now();
    rc = set_singleshot(start > NSEC_PER_MSEC ? start - NSEC_PER_MSEC : 1, 0);
    while (rc == 0 && !port_pending(timer_port) && pvclock_now() - start < NSEC_PER_SEC)
        asm volatile("pause");
    end = pvclock_now();
    int pending = port_pending(timer_port);
    check(rc == 0 && pending, "past_deadline_fires", "rc %ld, pending %d after %lu ns",
          rc, pending, end - start);
    events_enable();                     /* take the event */
    events_disable();

    /* 8. ...unless VCPU_SSHOTTMR_future asks for -ETIME instead. */
    start = pvclock_now();
    rc = set_singleshot(start > NSEC_PER_MSEC ? start - NSEC_PER_MSEC : 1, VCPU_SSHOTTMR_future);
    check(rc == -XEN_ETIME, "singleshot_future_etime", "returned %ld, want %d", rc, -XEN_ETIME);
}
