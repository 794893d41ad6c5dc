/*
 * fifo_events: FIFO-based event channels (xen/include/public/event_channel.h,
 * xen/common/event_fifo.c), the ABI Linux picks when EVTCHNOP_init_control
 * succeeds.
 *
 * First Xen's answers before and while switching: expand_array before any
 * control block (-EOPNOTSUPP), set_priority under 2-level (-ENOSYS),
 * init_control with a vCPU that does not exist (-ENOENT), a control block
 * crossing the page end or misaligned (-EINVAL), a frame that is not ours
 * (-EINVAL), then the real one (0, link_bits 17) and a second one for the
 * same vCPU (-EINVAL). An IPI port pending under 2-level when we switch keeps
 * its event. Then the event array (one page, every word masked first, as
 * Linux's init_array_page) and delivery: an event queued (P and L set, HEAD,
 * READY and upcall_pending), a second one linked behind it (LINK), both
 * consumed in order by an upcall that walks the queue as Linux's
 * consume_one_event; two priorities (the higher first); a masked event
 * (pending, not queued) and EVTCHNOP_unmask delivering it; an IPI to
 * ourselves; and VIRQ_TIMER arriving through the queue, not the bitmaps.
 */
#include "guest.h"

#define EVTCHNOP_init_control 11
#define EVTCHNOP_expand_array 12
#define EVTCHNOP_set_priority 13
#define XEN_EOPNOTSUPP 95

#define FIFO_PENDING  (1u << 31)
#define FIFO_MASKED   (1u << 30)
#define FIFO_LINKED   (1u << 29)
#define FIFO_BUSY     (1u << 28)
#define FIFO_LINK_MASK ((1u << 17) - 1)
#define FIFO_QUEUES   16
#define FIFO_PRIORITY_DEFAULT 7

struct evtchn_init_control {
    uint64_t control_gfn;
    uint32_t offset;
    uint32_t vcpu;
    uint8_t  link_bits;      /* OUT */
    uint8_t  _pad[7];
};
_Static_assert(sizeof(struct evtchn_init_control) == 24, "evtchn_init_control");
struct evtchn_expand_array { uint64_t array_gfn; };
struct evtchn_set_priority { uint32_t port; uint32_t priority; };
struct evtchn_fifo_control_block {
    uint32_t ready;
    uint32_t _rsvd;
    uint32_t head[FIFO_QUEUES];
};
_Static_assert(sizeof(struct evtchn_fifo_control_block) == 72, "evtchn_fifo_control_block");

#define CB_OFFSET 0x100   /* anywhere 8-aligned that fits; not 0, to see the offset is used */

static volatile struct evtchn_fifo_control_block *cb;
static volatile uint32_t *words;
static uint32_t local_head[FIFO_QUEUES];   /* Linux keeps its own head per queue */
static volatile uint64_t count[EVT_TRACKED_PORTS];
static volatile uint32_t order[16];
static volatile unsigned norder;
static volatile uint64_t fifo_upcalls;

/* Linux's clear_linked: drop L and LINK in one exchange, return the LINK. */
static uint32_t clear_linked(volatile uint32_t *w)
{
    uint32_t old = *w, new;
    do {
        new = old & ~(FIFO_LINKED | FIFO_LINK_MASK);
    } while (!__atomic_compare_exchange_n(w, &old, new, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old & FIFO_LINK_MASK;
}

static void consume_one(unsigned q, uint32_t *ready)
{
    uint32_t head = local_head[q];
    if (head == 0) {
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        head = cb->head[q];
    }
    uint32_t port = head;
    volatile uint32_t *w = &words[port];
    head = clear_linked(w);
    if (head == 0)
        *ready &= ~(1u << q);
    uint32_t now = *w;
    if ((now & FIFO_PENDING) && !(now & FIFO_MASKED)) {
        __atomic_fetch_and(w, ~FIFO_PENDING, __ATOMIC_SEQ_CST);
        if (port < EVT_TRACKED_PORTS)
            count[port]++;
        if (norder < 16)
            order[norder++] = port;
    }
    local_head[q] = head;
}

static int fifo_upcall(struct regs *r)
{
    (void)r;
    volatile struct vcpu_info *vi = VCPU0;
    fifo_upcalls++;
    do {
        vi->evtchn_upcall_pending = 0;
        uint32_t ready = __atomic_exchange_n(&cb->ready, 0, __ATOMIC_SEQ_CST);
        while (ready) {
            consume_one((unsigned)__builtin_ctz(ready), &ready);
            ready |= __atomic_exchange_n(&cb->ready, 0, __ATOMIC_SEQ_CST);
        }
    } while (vi->evtchn_upcall_pending);
    return TRAP_RETURN;
}

static long init_control(uint64_t gfn, uint32_t offset, uint32_t vcpu, uint8_t *link_bits)
{
    struct evtchn_init_control op = { .control_gfn = gfn, .offset = offset, .vcpu = vcpu };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_init_control, &op);
    if (link_bits)
        *link_bits = op.link_bits;
    return rc;
}

static long expand_array(uint64_t gfn)
{
    struct evtchn_expand_array op = { .array_gfn = gfn };
    return HYPERVISOR_event_channel_op(EVTCHNOP_expand_array, &op);
}

static long set_priority(uint32_t port, uint32_t priority)
{
    struct evtchn_set_priority op = { .port = port, .priority = priority };
    return HYPERVISOR_event_channel_op(EVTCHNOP_set_priority, &op);
}

static void word_unmask(uint32_t port)
{
    __atomic_fetch_and(&words[port], ~FIFO_MASKED, __ATOMIC_SEQ_CST);
}

static void word_mask(uint32_t port)
{
    __atomic_fetch_or(&words[port], FIFO_MASKED, __ATOMIC_SEQ_CST);
}

static void reset_order(void)
{
    norder = 0;
    for (unsigned i = 0; i < 16; i++)
        order[i] = 0;
}

void guest_main(void)
{
    evtchn_port_t early = 0, a = 0, b = 0, hi = 0, lo = 0, timer = 0;
    uint8_t link_bits = 0;
    long rc, rc2, rc3;

    require_rc(traps_install(), "set_trap_table");
    require_rc(map_shared_info(), "map_shared_info");
    require_rc(callbacks_install(), "register_callbacks");
    trap_set_handler(VEC_EVENT, fifo_upcall);
    require_rc(HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, 0), "stop_periodic_timer");
    events_disable();

    void *cb_page = alloc_page();
    void *array_page = alloc_page();
    uint64_t cb_mfn = virt_to_mfn(cb_page), array_mfn = virt_to_mfn(array_page);

    /* 1. Before FIFO: no event array to expand, no priorities. */
    require_rc(evtchn_bind_ipi(0, &early), "bind_ipi_early");
    rc = expand_array(array_mfn);
    rc2 = set_priority(early, 3);
    check(rc == -XEN_EOPNOTSUPP && rc2 == -XEN_ENOSYS, "two_level_refuses_fifo_ops",
          "expand_array %ld (want -EOPNOTSUPP), set_priority %ld (want -ENOSYS)", rc, rc2);

    /* 2. init_control's checks, in Xen's order. */
    rc = init_control(cb_mfn, CB_OFFSET, 99, 0);
    check(rc == -XEN_ENOENT, "init_control_bad_vcpu", "rc %ld, want -ENOENT", rc);
    rc = init_control(cb_mfn, PAGE_SIZE - sizeof(struct evtchn_fifo_control_block) + 8, 0, 0);
    rc2 = init_control(cb_mfn, CB_OFFSET + 4, 0, 0);
    check(rc == -XEN_EINVAL && rc2 == -XEN_EINVAL, "init_control_bad_offset",
          "across the page end %ld, misaligned %ld, want -EINVAL", rc, rc2);
    rc = init_control(0xfffffffffULL, CB_OFFSET, 0, 0);
    check(rc == -XEN_EINVAL, "init_control_bad_gfn", "rc %ld, want -EINVAL", rc);

    /* 3. The IPI port goes pending under 2-level (masked there), then we switch. */
    port_mask(early);
    evtchn_op_port(EVTCHNOP_send, early);
    int early_pending = port_pending(early);

    cb = (volatile struct evtchn_fifo_control_block *)((char *)cb_page + CB_OFFSET);
    rc = init_control(cb_mfn, CB_OFFSET, 0, &link_bits);
    check(rc == 0 && link_bits == 17, "init_control", "rc %ld link_bits %u", rc, link_bits);
    rc = init_control(cb_mfn, CB_OFFSET, 0, 0);
    check(rc == -XEN_EINVAL, "init_control_twice", "rc %ld, want -EINVAL", rc);

    /* 4. The event array: masked words first, as Linux hands a page over. */
    words = (volatile uint32_t *)array_page;
    for (unsigned i = 0; i < PAGE_SIZE / 4; i++)
        words[i] = FIFO_MASKED;
    rc = expand_array(0xfffffffffULL);
    rc2 = expand_array(array_mfn);
    check(rc == -XEN_EINVAL && rc2 == 0, "expand_array", "bad frame %ld (want -EINVAL), ours %ld", rc, rc2);
    check(early_pending && words[early] == (FIFO_PENDING | FIFO_MASKED) && cb->ready == 0,
          "pending_carried_over", "2-level pending %d, word %#x, ready %#x", early_pending,
          words[early], cb->ready);
    events_enable();
    rc = evtchn_op_port(EVTCHNOP_unmask, early);
    check(rc == 0 && count[early] == 1 && words[early] == 0, "carried_over_unmask_delivers",
          "rc %ld, %lu deliveries, word %#x", rc, count[early], words[early]);
    events_disable();

    /* 5. set_priority's check. */
    rc = set_priority(early, 16);
    rc2 = set_priority(early, 15);
    rc3 = set_priority(early, FIFO_PRIORITY_DEFAULT);
    check(rc == -XEN_EINVAL && rc2 == 0 && rc3 == 0, "set_priority",
          "16: %ld (want -EINVAL), 15: %ld, 7: %ld", rc, rc2, rc3);

    /* 6. One event through the queue, events masked so we can look at it. */
    require_rc(evtchn_bind_ipi(0, &a), "bind_ipi_a");
    require_rc(evtchn_bind_ipi(0, &b), "bind_ipi_b");
    word_unmask(a);
    word_unmask(b);
    VCPU0->evtchn_upcall_pending = 0;   /* events are masked: we look, the upcall comes later */
    evtchn_op_port(EVTCHNOP_send, a);
    check(words[a] == (FIFO_PENDING | FIFO_LINKED) && cb->head[FIFO_PRIORITY_DEFAULT] == a &&
              cb->ready == (1u << FIFO_PRIORITY_DEFAULT) && VCPU0->evtchn_upcall_pending == 1 &&
              !port_pending(a),
          "event_queued", "word %#x head %u ready %#x upcall_pending %u 2l-pending %d",
          words[a], cb->head[FIFO_PRIORITY_DEFAULT], cb->ready, VCPU0->evtchn_upcall_pending,
          port_pending(a));
    evtchn_op_port(EVTCHNOP_send, b);
    check((words[a] & FIFO_LINK_MASK) == b && words[b] == (FIFO_PENDING | FIFO_LINKED) &&
              cb->head[FIFO_PRIORITY_DEFAULT] == a,
          "event_linked_behind_tail", "word a %#x word b %#x head %u", words[a], words[b],
          cb->head[FIFO_PRIORITY_DEFAULT]);
    reset_order();
    events_enable();
    events_disable();
    check(norder == 2 && order[0] == a && order[1] == b && words[a] == 0 && words[b] == 0 &&
              cb->ready == 0,
          "upcall_consumes_queue_in_order", "%u events: %u %u; words %#x %#x ready %#x",
          norder, order[0], order[1], words[a], words[b], cb->ready);

    /* 7. Priorities: the lower number is served first. */
    require_rc(evtchn_bind_ipi(0, &lo), "bind_ipi_lo");
    require_rc(evtchn_bind_ipi(0, &hi), "bind_ipi_hi");
    require_rc(set_priority(lo, 10), "set_priority_lo");
    require_rc(set_priority(hi, 3), "set_priority_hi");
    word_unmask(lo);
    word_unmask(hi);
    evtchn_op_port(EVTCHNOP_send, lo);
    evtchn_op_port(EVTCHNOP_send, hi);
    uint32_t ready = cb->ready;
    uint32_t head_lo = cb->head[10], head_hi = cb->head[3];
    reset_order();
    events_enable();
    events_disable();
    check(ready == ((1u << 10) | (1u << 3)) && head_lo == lo && head_hi == hi && norder == 2 &&
              order[0] == hi && order[1] == lo,
          "priority_order", "ready %#x heads %u/%u, served %u: %u then %u", ready, head_hi,
          head_lo, norder, order[0], order[1]);

    /* 8. Masked: pending but not queued; EVTCHNOP_unmask queues and delivers it. */
    word_mask(a);
    evtchn_op_port(EVTCHNOP_send, a);
    uint32_t masked_word = words[a];
    uint32_t masked_ready = cb->ready;
    uint8_t masked_upcall = VCPU0->evtchn_upcall_pending;
    events_enable();
    uint64_t n = count[a];
    rc = evtchn_op_port(EVTCHNOP_unmask, a);
    check(masked_word == (FIFO_PENDING | FIFO_MASKED) && masked_ready == 0 && masked_upcall == 0 &&
              rc == 0 && count[a] == n + 1 && words[a] == 0,
          "masked_then_unmask_delivers", "masked: word %#x ready %#x upcall %u; unmask rc %ld, "
          "%lu deliveries, word %#x", masked_word, masked_ready, masked_upcall, rc,
          count[a] - n, words[a]);

    /* 9. An IPI to ourselves with events enabled: delivered when send returns. */
    n = count[b];
    rc = evtchn_op_port(EVTCHNOP_send, b);
    check(rc == 0 && count[b] == n + 1, "ipi_send_self", "rc %ld, %lu deliveries", rc, count[b] - n);
    events_disable();

    /* 10. VIRQ_TIMER through the queue (the 2-level bitmaps stay untouched). */
    require_rc(evtchn_bind_virq(VIRQ_TIMER, 0, &timer), "bind_virq_timer");
    word_unmask(timer);
    uint64_t now = pvclock_now();
    require_rc(set_singleshot(now + NSEC_PER_MSEC, 0), "set_singleshot_timer");
    int fired = block_until(&count[timer], 1, now + 5 * NSEC_PER_SEC);
    events_disable();
    check(fired && !port_pending(timer) && words[timer] == 0, "virq_timer_fifo",
          "fired %d, 2-level pending %d, word %#x", fired, port_pending(timer), words[timer]);
}
