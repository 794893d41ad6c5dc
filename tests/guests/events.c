/*
 * events: event channels, 2-level ABI (pv-abi.md §6.5, §9).
 *
 * Map shared_info, register the event and failsafe callbacks, bind
 * VIRQ_TIMER and an IPI port, and check when upcalls do and do not arrive:
 * a one-shot timer while blocked, an IPI sent to ourselves (delivered on
 * the way back from the send hypercall), a masked port (no upcall, pending
 * bit set) unmasked with EVTCHNOP_unmask or locally plus a poke hypercall.
 * Then EVTCHNOP_status, a second bind of the same VIRQ (-EEXIST) and
 * EVTCHNOP_close.
 */
#include "guest.h"

#define SEL_BIT(port) (1UL << ((port) / 64))

void guest_main(void)
{
    evtchn_port_t timer_port = 0, ipi_port = 0;
    struct evtchn_status st, st2;
    uint64_t n, u;
    long rc;

    require_rc(traps_install(), "set_trap_table");
    if (!check_rc(map_shared_info(), "map_shared_info"))
        return;
    if (!check_rc(callbacks_install(), "register_callbacks"))
        return;

    /* Xen gives a PV vCPU a default 10 ms periodic timer; stop it so that
     * VIRQ_TIMER fires only when we ask. */
    require_rc(HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, 0), "stop_periodic_timer");

    rc = evtchn_bind_virq(VIRQ_TIMER, 0, &timer_port);
    if (!check(rc == 0 && timer_port != 0 && timer_port < EVT_TRACKED_PORTS,
               "bind_virq_timer", "rc %ld port %u", rc, timer_port))
        return;
    port_unmask_local(timer_port);

    /* 1. One-shot timer 1 ms ahead, then block: SCHEDOP_block enables
     *    events and the upcall runs on the way back. */
    uint64_t now = pvclock_now();
    require_rc(set_singleshot(now + NSEC_PER_MSEC, 0), "set_singleshot_timer");
    int fired = block_until(&evt.port_count[timer_port], 1, now + 5 * NSEC_PER_SEC);
    events_disable();
    check(fired && evt.pending_on_entry == 1 && (evt.sel_on_entry & SEL_BIT(timer_port)) &&
              (timer_port >= 64 || (evt.pending0_on_entry & (1UL << timer_port))),
          "virq_timer_upcall", "fired %d, at upcall entry: upcall_pending %u sel %#lx pending[0] %#lx",
          fired, evt.pending_on_entry, evt.sel_on_entry, evt.pending0_on_entry);

    /* 2. The upcall frame: no error code, kernel-mode CS (RPL cleared),
     *    saved mask 0 (events were enabled), IF set in RFLAGS, events masked
     *    on entry, frame at the interrupted RSP rounded down to 16. */
    const volatile struct regs *f = &evt.frame;
    if (!check(f->vector == VEC_EVENT && (f->cs & 0xffffffffUL) == (FLAT_KERNEL_CS & ~3) &&
                   FRAME_SAVED_MASK(f->cs) == 0 && (f->rflags & X86_EFLAGS_IF) &&
                   (f->ss & 0xffff) == FLAT_KERNEL_SS && f->rip >= (uint64_t)_stext &&
                   f->rip < (uint64_t)_etext && evt.mask_on_entry == 1 &&
                   evt.entry_rsp == (f->rsp & ~0xfUL) - 7 * 8,
               "upcall_frame", "cs %#lx rflags %#lx rip %#lx rsp %#lx ss %#lx, mask on entry "
               "%u, frame at %#lx", f->cs, f->rflags, f->rip, f->rsp, f->ss,
               evt.mask_on_entry, evt.entry_rsp))
        dump_regs((const struct regs *)f);

    /* 3. An IPI to ourselves, with events enabled. */
    rc = evtchn_bind_ipi(0, &ipi_port);
    if (!check(rc == 0 && ipi_port != 0 && ipi_port != timer_port &&
                   ipi_port < EVT_TRACKED_PORTS,
               "bind_ipi", "rc %ld port %u", rc, ipi_port))
        return;
    port_unmask_local(ipi_port);
    events_enable();
    n = evt.port_count[ipi_port];
    rc = evtchn_op_port(EVTCHNOP_send, ipi_port);
    check(rc == 0 && evt.port_count[ipi_port] == n + 1, "ipi_send_self",
          "rc %ld, %lu upcalls for the port, want 1 by the time send returned",
          rc, evt.port_count[ipi_port] - n);

    /* 4. Masked: the pending bit is set, nothing is delivered. */
    port_mask(ipi_port);
    n = evt.port_count[ipi_port];
    u = evt.upcalls;
    rc = evtchn_op_port(EVTCHNOP_send, ipi_port);
    check(rc == 0 && evt.upcalls == u && port_pending(ipi_port), "masked_port_no_upcall",
          "rc %ld, %lu upcalls, pending %d", rc, evt.upcalls - u, port_pending(ipi_port));

    /* 5. EVTCHNOP_unmask delivers the pending event. */
    rc = evtchn_op_port(EVTCHNOP_unmask, ipi_port);
    check(rc == 0 && evt.port_count[ipi_port] == n + 1 && !port_masked(ipi_port),
          "unmask_hypercall_delivers", "rc %ld, %lu upcalls for the port, masked %d",
          rc, evt.port_count[ipi_port] - n, port_masked(ipi_port));

    /* 6. Linux's way: unmask locally (setting selector + upcall_pending
     *    ourselves), then any hypercall (xen_version(0)) delivers it. */
    port_mask(ipi_port);
    n = evt.port_count[ipi_port];
    evtchn_op_port(EVTCHNOP_send, ipi_port);
    port_unmask_local(ipi_port);
    HYPERVISOR_xen_version(XENVER_version, 0);
    check(evt.port_count[ipi_port] == n + 1, "local_unmask_poke_delivers",
          "%lu upcalls for the port after the poke, want 1", evt.port_count[ipi_port] - n);

    /* 7. EVTCHNOP_status of both ports. */
    long rc1 = evtchn_status(timer_port, &st);
    long rc2 = evtchn_status(ipi_port, &st2);
    check(rc1 == 0 && st.status == EVTCHNSTAT_virq && st.vcpu == 0 && st.u.virq == VIRQ_TIMER &&
              rc2 == 0 && st2.status == EVTCHNSTAT_ipi && st2.vcpu == 0,
          "evtchn_status", "timer: rc %ld status %u vcpu %u virq %u; ipi: rc %ld status %u vcpu %u",
          rc1, st.status, st.vcpu, st.u.virq, rc2, st2.status, st2.vcpu);

    /* 8. A VIRQ can be bound once per vCPU. */
    evtchn_port_t again = 0;
    rc = evtchn_bind_virq(VIRQ_TIMER, 0, &again);
    check(rc == -XEN_EEXIST, "bind_virq_eexist", "second bind returned %ld (port %u)", rc, again);

    /* 9. Close a masked, pending port: closing clears its pending bit, the
     *    port reads as closed and can no longer be sent on. */
    events_disable();
    port_mask(ipi_port);
    evtchn_op_port(EVTCHNOP_send, ipi_port);
    int pending_before = port_pending(ipi_port);
    rc = evtchn_op_port(EVTCHNOP_close, ipi_port);
    int pending_after = port_pending(ipi_port);
    rc1 = evtchn_status(ipi_port, &st);
    rc2 = evtchn_op_port(EVTCHNOP_send, ipi_port);
    check(rc == 0 && pending_before && !pending_after && rc1 == 0 &&
              st.status == EVTCHNSTAT_closed && rc2 < 0,
          "evtchn_close", "close rc %ld, pending %d -> %d, status rc %ld status %u, send rc %ld",
          rc, pending_before, pending_after, rc1, st.status, rc2);
}
