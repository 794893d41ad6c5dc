/*
 * preempt: one long hypercall is preemptible, as Xen's continuations make it
 * (issue 13.3; xen/common/multicall.c, xen/arch/x86/mm.c do_mmu_update).
 *
 * One multicall of PREEMPT_CALLS entries, each mmu_update(PREEMPT_REQS
 * identity updates of a pinned L1) with a pdone word of its own, while a
 * 10 ms periodic timer runs with events enabled. The call must complete
 * with every result 0 and every pdone = PREEMPT_REQS (a continuation keeps
 * the count already done in pdone and adds to it), leave the L1 as it was,
 * and the timer's upcalls must arrive *during* it: the hypervisor returns to
 * the guest between chunks, with the frame's RIP on the SYSCALL that
 * re-executes the hypercall.
 *
 * Default shape: 1024 x 4096 (4 Mi updates), the one that ran 34 s as a
 * single hypercall. Build with -DPREEMPT_CALLS=... for another.
 */
#include "guest.h"

#ifndef PREEMPT_CALLS
#define PREEMPT_CALLS 1024
#endif
#define PREEMPT_REQS 4096
#define L1_USED 64        /* entries of the L1 that map something */

static struct mmu_update reqs[PREEMPT_REQS] PAGE_ALIGNED;
static struct multicall_entry calls[PREEMPT_CALLS] PAGE_ALIGNED;
static unsigned done[PREEMPT_CALLS];
static uint64_t before[512];

static evtchn_port_t timer_port;
static volatile int in_call;
static volatile uint64_t ticks_in_call, ticks_at_syscall, last_tick, max_gap;

static void on_port(unsigned port)
{
    if (port != timer_port || !in_call)
        return;
    uint64_t now = pvclock_now();
    ticks_in_call++;
    if (last_tick && now - last_tick > max_gap)
        max_gap = now - last_tick;
    last_tick = now;
    /* The interrupted instruction: the hypercall's SYSCALL (0f 05), re-armed. */
    const uint8_t *rip = (const uint8_t *)evt.frame.rip;
    if (rip >= (const uint8_t *)_stext && rip + 2 <= (const uint8_t *)_etext && rip[0] == 0x0f && rip[1] == 0x05)
        ticks_at_syscall++;
}

void guest_main(void)
{
    require_rc(traps_install(), "set_trap_table");
    require_rc(map_shared_info(), "map_shared_info");
    require_rc(callbacks_install(), "register_callbacks");
    require_rc(evtchn_bind_virq(VIRQ_TIMER, 0, &timer_port), "bind_virq_timer");
    port_unmask_local(timer_port);

    /* An L1 of our own mapping some of our text read-only, pinned. */
    uint64_t *l1 = alloc_page();
    for (unsigned i = 0; i < L1_USED; i++)
        l1[i] = (virt_to_mfn(_stext + (uint64_t)i * PAGE_SIZE) << 12) | PTE_KERNEL_RO;
    require_rc(set_page_ro(l1), "l1_read_only");
    uint64_t l1_mfn = virt_to_mfn(l1);
    require_rc(mmuext_mfn(MMUEXT_PIN_L1_TABLE, l1_mfn), "pin_l1");
    memcpy(before, l1, sizeof(before));

    /* Every request writes an entry back as it is (the list wraps the L1 eight times). */
    for (unsigned i = 0; i < PREEMPT_REQS; i++) {
        reqs[i].ptr = ((l1_mfn << 12) + 8 * (i % 512)) | MMU_NORMAL_PT_UPDATE;
        reqs[i].val = l1[i % 512];
    }
    for (unsigned c = 0; c < PREEMPT_CALLS; c++) {
        calls[c].op = __HYPERVISOR_mmu_update;
        calls[c].result = 0xdeadbeefUL;
        calls[c].args[0] = (uint64_t)reqs;
        calls[c].args[1] = PREEMPT_REQS;
        calls[c].args[2] = (uint64_t)&done[c];
        calls[c].args[3] = DOMID_SELF;
        done[c] = 0;
    }

    struct vcpu_set_periodic_timer p = { .period_ns = 10 * NSEC_PER_MSEC };
    require_rc(HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, &p), "set_periodic_timer");
    evt.hook = on_port;
    events_enable();
    uint64_t start = pvclock_now();
    in_call = 1;
    long rc = HYPERVISOR_multicall(calls, PREEMPT_CALLS);
    in_call = 0;
    uint64_t took = pvclock_now() - start;
    events_disable();
    HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, 0);

    unsigned bad_result = PREEMPT_CALLS, bad_done = PREEMPT_CALLS;
    for (unsigned c = PREEMPT_CALLS; c-- > 0;) {
        if (calls[c].result != 0)
            bad_result = c;
        if (done[c] != PREEMPT_REQS)
            bad_done = c;
    }
    check(rc == 0 && bad_result == PREEMPT_CALLS, "multicall_of_long_mmu_updates_completes",
          "rc %ld; first entry with a result other than 0: %u (%#lx)", rc, bad_result,
          bad_result < PREEMPT_CALLS ? calls[bad_result].result : 0);
    check(bad_done == PREEMPT_CALLS, "every_pdone_counts_the_whole_batch",
          "entry %u: pdone %u, want %u", bad_done, bad_done < PREEMPT_CALLS ? done[bad_done] : 0,
          PREEMPT_REQS);
    check(memcmp(before, l1, sizeof(before)) == 0, "identity_updates_leave_the_table", "the L1 changed");
    check(ticks_in_call > 0 && ticks_at_syscall > 0, "timer_upcalls_arrive_during_the_call",
          "%lu timer upcalls during the call, %lu of them at its SYSCALL", ticks_in_call, ticks_at_syscall);
    printf("note: %u x %u updates in %lu ms, %lu timer upcalls during the call, longest gap %lu us\n",
           PREEMPT_CALLS, PREEMPT_REQS, took / NSEC_PER_MSEC, ticks_in_call, max_gap / 1000);

    check_rc(mmuext_mfn(MMUEXT_UNPIN_TABLE, l1_mfn), "unpin_l1");
    check_rc(set_page_rw(l1), "l1_writable_again");
}
