/*
 * Event channels (2-level ABI, pv-abi.md §9) and pvclock time for the test
 * kernels.
 *
 * The upcall handler follows Linux's xen_evtchn_do_upcall: clear
 * evtchn_upcall_pending, take the selector with an atomic exchange, and for
 * each selected word handle pending & ~mask bits, clearing each pending bit
 * atomically (the hypervisor sets bits in the same words concurrently).
 * It loops while upcall_pending was set again. It runs with events masked
 * (the hypervisor masks on delivery) and returns through HYPERVISOR_iret,
 * which restores the mask from the frame's RFLAGS.IF.
 */
#include "guest.h"

extern void xen_event_entry(void);
extern void xen_failsafe_entry(void);

volatile struct evt_state evt;

static int event_upcall(struct regs *r)
{
    volatile struct vcpu_info *vi = VCPU0;

    evt.mask_on_entry = vi->evtchn_upcall_mask;
    evt.pending_on_entry = vi->evtchn_upcall_pending;
    evt.sel_on_entry = vi->evtchn_pending_sel;
    evt.pending0_on_entry = shared->evtchn_pending[0];
    memcpy((void *)&evt.frame, r, sizeof(*r));
    evt.entry_rsp = trap_entry_rsp;
    evt.upcalls++;

    do {
        vi->evtchn_upcall_pending = 0;
        uint64_t sel = __atomic_exchange_n(&vi->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
        while (sel) {
            unsigned w = (unsigned)__builtin_ctzl(sel);
            sel &= sel - 1;
            uint64_t bits = shared->evtchn_pending[w] & ~shared->evtchn_mask[w];
            while (bits) {
                unsigned b = (unsigned)__builtin_ctzl(bits);
                unsigned port = w * 64 + b;
                bits &= bits - 1;
                __atomic_fetch_and(&shared->evtchn_pending[w], ~(1UL << b),
                                   __ATOMIC_SEQ_CST);
                if (port < EVT_TRACKED_PORTS)
                    evt.port_count[port]++;
                evt.last_port = port;
                if (evt.hook)
                    evt.hook(port);
            }
        }
    } while (vi->evtchn_upcall_pending);
    return TRAP_RETURN;
}

long callbacks_install(void)
{
    trap_set_handler(VEC_EVENT, event_upcall);

    struct callback_register ev = {
        .type = CALLBACKTYPE_event,
        .flags = CALLBACKF_mask_events,
        .address = (uint64_t)xen_event_entry,
    };
    long rc = HYPERVISOR_callback_op(CALLBACKOP_register, &ev);
    if (rc)
        return rc;

    struct callback_register fs = {
        .type = CALLBACKTYPE_failsafe,
        .flags = CALLBACKF_mask_events,
        .address = (uint64_t)xen_failsafe_entry,
    };
    return HYPERVISOR_callback_op(CALLBACKOP_register, &fs);
}

/* Linux's xen_irq_enable: unmask, then force delivery of anything pending
 * with a harmless hypercall (the upcall is delivered on its return). */
void events_enable(void)
{
    VCPU0->evtchn_upcall_mask = 0;
    barrier();
    if (VCPU0->evtchn_upcall_pending)
        HYPERVISOR_xen_version(XENVER_version, 0);
}

void events_disable(void)
{
    VCPU0->evtchn_upcall_mask = 1;
    barrier();
}

#define WORD(port) ((port) / 64)
#define BIT(port)  (1UL << ((port) % 64))

void port_mask(unsigned port)
{
    __atomic_fetch_or(&shared->evtchn_mask[WORD(port)], BIT(port), __ATOMIC_SEQ_CST);
}

void port_unmask_local(unsigned port)
{
    volatile struct vcpu_info *vi = VCPU0;
    __atomic_fetch_and(&shared->evtchn_mask[WORD(port)], ~BIT(port), __ATOMIC_SEQ_CST);
    if ((shared->evtchn_pending[WORD(port)] & BIT(port)) &&
        !(__atomic_fetch_or(&vi->evtchn_pending_sel, 1UL << WORD(port),
                            __ATOMIC_SEQ_CST) & (1UL << WORD(port))))
        vi->evtchn_upcall_pending = 1;
}

void port_clear_pending(unsigned port)
{
    __atomic_fetch_and(&shared->evtchn_pending[WORD(port)], ~BIT(port), __ATOMIC_SEQ_CST);
}

int port_pending(unsigned port)
{
    return (shared->evtchn_pending[WORD(port)] & BIT(port)) != 0;
}

int port_masked(unsigned port)
{
    return (shared->evtchn_mask[WORD(port)] & BIT(port)) != 0;
}

long evtchn_bind_virq(unsigned virq, unsigned vcpu, evtchn_port_t *port)
{
    struct evtchn_bind_virq op = { .virq = virq, .vcpu = vcpu };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &op);
    if (rc == 0)
        *port = op.port;
    return rc;
}

long evtchn_bind_ipi(unsigned vcpu, evtchn_port_t *port)
{
    struct evtchn_bind_ipi op = { .vcpu = vcpu };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_ipi, &op);
    if (rc == 0)
        *port = op.port;
    return rc;
}

long evtchn_op_port(int cmd, evtchn_port_t port)
{
    struct evtchn_port_arg op = { .port = port };
    return HYPERVISOR_event_channel_op(cmd, &op);
}

long evtchn_status(evtchn_port_t port, struct evtchn_status *st)
{
    memset(st, 0, sizeof(*st));
    st->dom = DOMID_SELF;
    st->port = port;
    return HYPERVISOR_event_channel_op(EVTCHNOP_status, st);
}

/* ---- pvclock ------------------------------------------------------- */
/* The record is consistent when version is even and unchanged around the
 * reads (the hypervisor makes it odd while updating). */
void pvclock_snapshot(struct vcpu_time_info *out)
{
    volatile struct vcpu_time_info *t = &VCPU0->time;
    uint32_t v;
    do {
        v = t->version;
        barrier();
        out->version = v;
        out->tsc_timestamp = t->tsc_timestamp;
        out->system_time = t->system_time;
        out->tsc_to_system_mul = t->tsc_to_system_mul;
        out->tsc_shift = t->tsc_shift;
        out->flags = t->flags;
        barrier();
    } while ((v & 1) || v != t->version);
}

static uint64_t scale_delta(uint64_t delta, uint32_t mul, int8_t shift)
{
    if (shift < 0)
        delta >>= -shift;
    else
        delta <<= shift;
    return (uint64_t)(((unsigned __int128)delta * mul) >> 32);
}

uint64_t pvclock_now(void)
{
    volatile struct vcpu_time_info *t = &VCPU0->time;
    uint32_t v;
    uint64_t ns;
    do {
        v = t->version;
        barrier();
        uint64_t stamp = t->tsc_timestamp;
        uint64_t sys = t->system_time;
        uint32_t mul = t->tsc_to_system_mul;
        int8_t shift = t->tsc_shift;
        ns = sys + scale_delta(rdtsc() - stamp, mul, shift);
        barrier();
    } while ((v & 1) || v != t->version);
    return ns;
}

/* Linux's pvclock_tsc_khz. */
uint64_t pvclock_tsc_khz(const struct vcpu_time_info *t)
{
    if (!t->tsc_to_system_mul)
        return 0;
    uint64_t khz = (1000000ULL << 32) / t->tsc_to_system_mul;
    if (t->tsc_shift < 0)
        khz <<= -t->tsc_shift;
    else
        khz >>= t->tsc_shift;
    return khz;
}

int block_until(volatile uint64_t *counter, uint64_t target, uint64_t deadline)
{
    while (*counter < target) {
        if (pvclock_now() >= deadline)
            return 0;
        /* Clears the event mask and sleeps until an event is deliverable;
         * the upcall runs on the way back. */
        HYPERVISOR_sched_op(SCHEDOP_block, 0);
    }
    return 1;
}

long set_singleshot(uint64_t deadline_ns, uint32_t flags)
{
    struct vcpu_set_singleshot_timer t = { .timeout_abs_ns = deadline_ns, .flags = flags };
    return HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &t);
}
