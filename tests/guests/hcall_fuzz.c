/*
 * hcall_fuzz: a seeded random-hypercall fuzzer (issue 13, item 6).
 *
 * Command line (start_info.cmd_line, `hospes run --cmdline`):
 *
 *     seed=S calls=N progress=P trace=T [known=1] [skip=K] [flush=1]
 *
 * makes N hypercalls (default 20000) drawn from a xorshift generator seeded
 * with S (default 1), printing `FUZZ progress i/N ...` every P calls and,
 * from call T on, every call and its result (to replay a finding: the same
 * seed makes the same calls). It ends with per-hypercall counts and
 * `FUZZ done N calls seed S`, then `DONE` and poweroff. The domain must stay
 * alive throughout and Hospes must never report an internal error.
 * known=1 also makes the calls of open findings (see `known` below); skip=K
 * generates but does not make calls below K (to bisect which call did it);
 * flush=1 flushes the TLB after every call, so a damaged table of ours shows
 * at the call that damaged it.
 *
 * What is drawn: every hypercall number Hospes implements and a selection it
 * does not (6, 7, 11, 16, 19, 22, 27, 28, 31, 34-63, large numbers), random
 * sub-ops, and arguments biased to interesting values: 0, -1, small numbers,
 * powers of two, page-aligned addresses inside our own memory, our own
 * page-table frames, our kernel text, unmapped kernel and user addresses,
 * the hypervisor range, non-canonical addresses, frames beyond RAM, huge
 * counts; structures (mmu_update and mmuext_op batches, multicall entries,
 * memory reservations, timers, event-channel and grant arguments) are built
 * from the same pools, with short and huge counts.
 *
 * The deny-list keeps the fuzzer alive; each entry is something Xen also
 * lets a guest do to itself, so refusing it would be wrong:
 *
 *   - set_trap_table: only with pointers that fault (non-canonical, the
 *     hypervisor's slot 256, our unmapped guard page): a table read from
 *     anywhere else replaces our handlers (NULL clears them).
 *   - stack_switch, set_callbacks, callback_op(register), iret: they
 *     replace our stack, callbacks or whole register state.
 *   - sched_op shutdown, shutdown_code, remote_shutdown of domids 1 and
 *     DOMID_SELF, watchdog with a timeout, block (events would be enabled
 *     while a registered vcpu_info may sit where our handler cannot
 *     acknowledge), poll without a timeout; sched_op_compat shutdown.
 *   - vcpu_op down of vCPU 0 (ourselves), send_nmi (vector 2 is our
 *     "unexpected trap"); register_vcpu_info never into a frame we use.
 *   - mmu_update targets: never a frame of ours (Xen stores into a plain
 *     writable page as it is, do_mmu_update's PGT_writable_page case), and
 *     of our live page tables only the L1 entries of the window pages (which
 *     nothing of ours reads), free L2 slots (VA ranges we never touch), or a
 *     write of an entry's current value back (a no-op); the other targets
 *     are free frames, hypervisor frames and invalid addresses.
 *     update_descriptor likewise never names a frame of ours.
 *   - update_va_mapping only over the window pages or addresses we never
 *     map (unmapped kernel, user, hypervisor, non-canonical).
 *   - mmuext_op: no unpin of a live table, NEW_BASEPTR only to our current
 *     L4 (a no-op), to a live lower-level table (wrong type) or to frames
 *     that cannot be one; CLEAR_PAGE and COPY_PAGE write only free,
 *     table or invalid frames.
 *   - event_channel_op: no close of the console port, no reset of ourselves.
 *   - set_debugreg: DR7's enable bits (0-7) are cleared (a breakpoint on our
 *     own code would trap forever).
 *   - pointers a hypercall writes through are never our own live data:
 *     a junk region (refilled with random words), the structures built for
 *     the call, read-only or unmapped pages, bad addresses. Requests that
 *     Hospes acts on (mmu_update, mmuext_op, multicall) are always read
 *     from arrays built for the call with exact counts, or from pointers
 *     that fault.
 *
 * Frames: "free" frames are the upper half of our RAM, which the bootstrap
 * mapping never covers and we never touch; anything may happen to them.
 */
#include "guest.h"

/* ---- numbers not in xen.h ------------------------------------------ */
#define HC_set_gdt            2
#define HC_set_callbacks      4
#define HC_fpu_taskswitch     5
#define HC_sched_op_compat    6
#define HC_update_descriptor  10
#define HC_grant_table_op     20
#define HC_vm_assist          21
#define HC_set_segment_base   25
#define HC_physdev_op         33
#define SCHEDOP_poll          3
#define SCHEDOP_remote_shutdown 4
#define SCHEDOP_shutdown_code 5
#define SCHEDOP_watchdog      6
#define VCPUOP_down           2
#define VCPUOP_register_runstate_memory_area 5
#define VCPUOP_register_vcpu_info 10
#define VCPUOP_send_nmi       11
#define CALLBACKOP_unregister 1
#define EVTCHNOP_reset        10
#define MMUEXT_NEW_BASEPTR_   5
#define MMUEXT_UNPIN_TABLE_   4
#define MMUEXT_CLEAR_PAGE     16
#define MMUEXT_COPY_PAGE      17
#define XENMEM_decrease_reservation 1
#define GNTTABOP_setup_table  2
#define HYP_FRAMES            64      /* hypervisor-owned frames above RAM */

/* ---- the generator ------------------------------------------------- */
static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;     /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dUL;
}

static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }
static int chance(unsigned pct) { return below(100) < pct; }

/* ---- what we know about ourselves ---------------------------------- */
static uint64_t nr_pages, free_first;          /* free frames: [free_first, nr_pages) */
static uint64_t image_first_pfn, image_last_pfn;
static uint64_t pt_first_pfn, pt_count, l4_mfn;
static uint64_t console_mfn, store_mfn;
static evtchn_port_t console_port, store_port;

#define WINDOWS     8
#define JUNK_PAGES  4
#define ARENA_PAGES 8
/* Window pages: update_va_mapping and mmu_update remap them; nothing of ours
 * reads or writes them afterwards and no pointer argument names them. */
static uint8_t windows[WINDOWS][PAGE_SIZE] PAGE_ALIGNED;
/* Junk: random words, the target of every output pointer; its last page is
 * unmapped (a guard), so long accesses run into a fault. */
static uint8_t junk[JUNK_PAGES + 1][PAGE_SIZE] PAGE_ALIGNED;
/* Arena: the structures built for one call, zeroed after it; a guard page
 * (unmapped) follows. */
static uint8_t arena[ARENA_PAGES + 1][PAGE_SIZE] PAGE_ALIGNED;
static size_t arena_used, arena_high;

/* Open findings (tests/test_fuzz_hypercalls.py has each as a strict xfail):
 * avoided unless the command line says known=1, so a long run looks for new
 * ones. time_area: a registered time area whose version field reads
 * 0xffffffff ends the domain; with known=0 time areas go to this page, which
 * only the hypervisor writes. */
static int known;
static uint8_t time_area_page[PAGE_SIZE] PAGE_ALIGNED;

static uint64_t window_pte_ma[WINDOWS];      /* machine address of each window's L1 entry */
#define MAX_FREE_SLOTS 16
static uint64_t free_l2_slot_ma[MAX_FREE_SLOTS];
static unsigned free_l2_slots;

static uint64_t pt_virt(uint64_t i) { return xen_start_info->pt_base + i * PAGE_SIZE; }
static int is_live_pt(uint64_t mfn) { return mfn >= pt_first_pfn && mfn < pt_first_pfn + pt_count; }

static void *arena_alloc(size_t size)
{
    size = (size + 15) & ~15UL;
    if (arena_used + size > ARENA_PAGES * PAGE_SIZE)
        return 0;
    void *p = &arena[0][arena_used];
    arena_used += size;
    if (arena_used > arena_high)
        arena_high = arena_used;
    return p;
}

/* ---- value pools ------------------------------------------------------ */
static uint64_t junk_addr(void)
{
    uint64_t base = (uint64_t)junk[0];
    switch (below(4)) {
    case 0: return base + below(JUNK_PAGES) * PAGE_SIZE;              /* page aligned */
    case 1: return base + JUNK_PAGES * PAGE_SIZE - 1 - below(64);    /* runs into the guard */
    case 2: return base + JUNK_PAGES * PAGE_SIZE;                    /* the guard itself */
    default: return base + below(JUNK_PAGES * PAGE_SIZE);
    }
}

static uint64_t hyp_addr(void)
{
    switch (below(3)) {
    case 0: return HYPERVISOR_VIRT_START + (below(16) << 39) + below(1UL << 39);
    case 1: return machphys.v_start + below(1 << 20) * 8;
    default: return HYPERVISOR_VIRT_END - 8 - below(4096);
    }
}

static uint64_t noncanonical(void)
{
    static const uint64_t v[] = { 0x0000800000000000UL, 0x8000000000000000UL,
                                  0x00007ffffffffffcUL, 0x7fffffffffffffffUL, 0xffff7ffffffff000UL };
    return v[below(5)];
}

static uint64_t unmapped_kernel(void)
{
    return GUEST_VIRT_BASE + 0x40000000UL + below(1 << 18) * PAGE_SIZE;
}

static uint64_t unmapped_user(void)
{
    return 0x400000UL + below(1 << 16) * PAGE_SIZE + (chance(20) ? below(PAGE_SIZE) : 0);
}

/* A pointer that faults or leads only to memory we may lose. */
static uint64_t bad_ptr(void)
{
    switch (below(7)) {
    case 0: return 0;
    case 1: return below(PAGE_SIZE);
    case 2: return noncanonical();
    case 3: return HYPERVISOR_VIRT_START + below(1UL << 39);   /* slot 256 */
    case 4: return (uint64_t)junk[JUNK_PAGES] + below(PAGE_SIZE);
    case 5: return unmapped_user();
    default: return unmapped_kernel();
    }
}

/* A pointer a hypercall may write through. */
static uint64_t out_ptr(void)
{
    switch (below(10)) {
    case 0: case 1: case 2: case 3: return junk_addr();
    case 4: return pt_virt(below(pt_count)) + below(512) * 8;    /* read-only: must fault */
    case 5: return hyp_addr();
    default: return bad_ptr();
    }
}

/* A pointer a hypercall only reads through: also our own kernel text. */
static uint64_t in_ptr(void)
{
    if (chance(15))
        return (uint64_t)_stext + below((uint64_t)(_etext - _stext));
    return out_ptr();
}

static uint64_t rv(void)
{
    switch (below(16)) {
    case 0: return 0;
    case 1: return ~0UL;
    case 2: return below(64);
    case 3: return 1UL << below(64);
    case 4: return (1UL << below(64)) - 1;
    case 5: {
        static const uint64_t v[] = { 0x7fffffff, 0x80000000, 0xffffffff, 0x100000000UL,
                                      0xffff, 0x10000, 4096, 4097, 1024, 1025, 8192 };
        return v[below(11)];
    }
    case 6: return junk_addr();
    case 7: return hyp_addr();
    case 8: return noncanonical();
    case 9: return unmapped_kernel();
    case 10: return below(nr_pages + 2 * HYP_FRAMES);
    case 11: return -below(64);
    default: return rnd();
    }
}

static uint64_t free_mfn(void) { return free_first + below(nr_pages - free_first); }

/* Any frame, our own live ones included (for operations that must refuse
 * them or leave them alone). */
static uint64_t mfn_any(void)
{
    switch (below(12)) {
    case 0: case 1: case 2: return free_mfn();
    case 3: return image_first_pfn + below(image_last_pfn - image_first_pfn + 1);
    case 4: return pt_first_pfn + below(pt_count);
    case 5: return chance(50) ? console_mfn : store_mfn;
    case 6: return nr_pages + below(HYP_FRAMES);
    case 7: return nr_pages + HYP_FRAMES + below(1 << 20);
    case 8: return below(256);
    case 9: return l4_mfn;
    case 10: return rv();
    default: return rv() >> 12;
    }
}

/* A frame an operation may write: free, a table (refused), the hypervisor's
 * (refused) or not a frame at all. */
static uint64_t mfn_dst(void)
{
    switch (below(6)) {
    case 0: case 1: case 2: return free_mfn();
    case 3: return pt_first_pfn + below(pt_count);
    case 4: return nr_pages + below(HYP_FRAMES);
    default: return nr_pages + HYP_FRAMES + (rnd() >> 24);
    }
}

static uint64_t pte_flags(void)
{
    uint64_t f = below(2) ? _PAGE_PRESENT : 0;
    if (chance(60)) f |= _PAGE_RW;
    if (chance(40)) f |= _PAGE_USER;
    if (chance(30)) f |= _PAGE_ACCESSED | _PAGE_DIRTY;
    if (chance(15)) f |= 0x80;                  /* PSE (or PAT in an L1) */
    if (chance(10)) f |= 0x100;                 /* global */
    if (chance(10)) f |= 0x18;                  /* PWT PCD */
    if (chance(10)) f |= below(8) << 9;         /* available bits */
    if (chance(15)) f |= 1UL << 63;             /* NX */
    if (chance(5)) f |= (below(1 << 11)) << 52; /* high available bits */
    if (chance(5)) f = rnd() & 0xfff;
    return f;
}

static uint64_t pte_val(void)
{
    if (chance(5))
        return rv();
    return ((mfn_any() << 12) & PTE_ADDR_MASK) | pte_flags();
}

static uint64_t count_val(uint64_t sane)
{
    switch (below(8)) {
    case 0: return 0;
    case 1: return rv();
    case 2: return 0x7fffffff + below(3);
    default: return 1 + below(sane);
    }
}

static uint16_t domid_val(void)
{
    static const uint16_t v[] = { DOMID_SELF, DOMID_SELF, 0, 1, 2, 0x7ff1, 0x7ff2, 0x7ff4, 0xffff };
    return chance(90) ? v[below(9)] : (uint16_t)rnd();
}

static uint32_t port_val(void)
{
    switch (below(6)) {
    case 0: return console_port;
    case 1: return store_port;
    case 2: return (uint32_t)below(16);
    case 3: return 4095 + (uint32_t)below(3);
    case 4: return (uint32_t)rv();
    default: return (uint32_t)below(1100);
    }
}

/* ---- one call --------------------------------------------------------- */
struct call { uint64_t nr, a[5]; };

static void gen(struct call *c, unsigned depth);

/* A VA whose mapping we may change. */
static uint64_t va_target(void)
{
    switch (below(7)) {
    case 0: case 1: case 2: return (uint64_t)windows[below(WINDOWS)];
    case 3: return unmapped_kernel();
    case 4: return unmapped_user();
    case 5: return hyp_addr();
    default: return chance(50) ? noncanonical() : 0;
    }
}

/* An mmu_update request naming no live table entry we depend on. */
static void gen_mmu_req(struct mmu_update *u)
{
    uint64_t cmd = chance(85) ? below(3) : below(8);
    uint64_t ma;
    u->val = pte_val();
    switch (below(10)) {
    case 0: case 1: case 2:
        ma = window_pte_ma[below(WINDOWS)];
        break;
    case 3:
        if (free_l2_slots) {
            ma = free_l2_slot_ma[below(free_l2_slots)];
            u->val = (free_mfn() << 12) | pte_flags();
        } else {
            ma = free_mfn() << 12;
        }
        break;
    case 4: {                                   /* a live entry written back as it is */
        uint64_t i = below(pt_count), slot = below(512);
        ma = ((pt_first_pfn + i) << 12) + slot * 8;
        u->val = ((volatile uint64_t *)pt_virt(i))[slot];
        cmd = chance(50) ? MMU_NORMAL_PT_UPDATE : MMU_PT_UPDATE_PRESERVE_AD;
        break;
    }
    case 5: case 6:
        ma = (free_mfn() << 12) + below(512) * 8;
        break;
    case 8:
        ma = (nr_pages + below(2 * HYP_FRAMES)) << 12;
        break;
    default:
        ma = rv() & ~7UL;
        if (is_live_pt(ma >> 12) && ((ma & 3) != MMU_MACHPHYS_UPDATE))
            ma = 0x1000;
        break;
    }
    if (cmd == MMU_MACHPHYS_UPDATE) {
        ma = mfn_any() << 12;
        u->val = chance(50) ? below(nr_pages) : rv();
    }
    u->ptr = (ma & ~7UL) | cmd;
    /* The guard, for every path above: none of our frames, except a live table
     * in a window slot, a free L2 slot or unchanged (whatever a hypervisor
     * makes of bits 2-0). */
    if (u->ptr >> 12 < free_first && (u->ptr & 3) != MMU_MACHPHYS_UPDATE) {
        uint64_t entry_ma = u->ptr & ~7UL;
        int ok = 0;
        if (!is_live_pt(entry_ma >> 12)) {
            /* Xen stores into a plain writable page as it is: not into ours */
            u->ptr = (free_mfn() << 12) | (u->ptr & 7);
            return;
        }
        for (unsigned i = 0; i < WINDOWS; i++)
            ok |= entry_ma == window_pte_ma[i];
        for (unsigned i = 0; i < free_l2_slots; i++)
            ok |= entry_ma == free_l2_slot_ma[i];
        uint64_t cur = ((volatile uint64_t *)pt_virt((entry_ma >> 12) - pt_first_pfn))[(entry_ma & 0xfff) / 8];
        if (!ok && u->val != cur)
            u->ptr = (free_mfn() << 12) | (u->ptr & 7);
    }
}

static void gen_mmuext(struct mmuext_op *op)
{
    op->cmd = chance(90) ? (uint32_t)below(21) : (uint32_t)rnd();
    op->pad = chance(90) ? 0 : (uint32_t)rnd();
    op->arg1.mfn = mfn_any();
    op->arg2.src_mfn = chance(50) ? mfn_any() : rv();
    switch (op->cmd) {
    case MMUEXT_UNPIN_TABLE_:
        if (is_live_pt(op->arg1.mfn))
            op->arg1.mfn = free_mfn();
        break;
    case MMUEXT_NEW_BASEPTR_:
        switch (below(4)) {
        case 0: op->arg1.mfn = l4_mfn; break;                       /* no-op */
        case 1: op->arg1.mfn = pt_first_pfn + 1 + below(pt_count - 1); break;
        case 2: op->arg1.mfn = nr_pages + below(HYP_FRAMES); break;
        default: op->arg1.mfn = nr_pages + HYP_FRAMES + (rnd() >> 20); break;
        }
        break;
    case MMUEXT_INVLPG_LOCAL: case 9: case 11:
        op->arg1.linear_addr = chance(50) ? va_target() : rv();
        op->arg2.vcpumask = out_ptr();
        break;
    case 8:
        op->arg2.vcpumask = in_ptr();
        break;
    case 13:                                    /* SET_LDT */
        op->arg1.linear_addr = chance(50) ? va_target() : rv();
        op->arg2.nr_ents = chance(50) ? (uint32_t)below(8200) : (uint32_t)rv();
        break;
    case MMUEXT_CLEAR_PAGE:
        op->arg1.mfn = mfn_dst();
        break;
    case MMUEXT_COPY_PAGE:
        op->arg1.mfn = mfn_dst();
        op->arg2.src_mfn = mfn_any();
        break;
    }
}

static void gen_mmu_update(struct call *c)
{
    unsigned n = chance(10) ? 0 : 1 + (unsigned)below(chance(90) ? 8 : 64);
    struct mmu_update *u = arena_alloc(n * sizeof(*u));
    if (!u || chance(8)) {
        c->a[0] = bad_ptr();
        c->a[1] = count_val(4096);
    } else {
        for (unsigned i = 0; i < n; i++)
            gen_mmu_req(&u[i]);
        c->a[0] = (uint64_t)u;
        c->a[1] = n;
    }
    c->a[2] = chance(70) ? 0 : out_ptr();
    c->a[3] = chance(80) ? DOMID_SELF : domid_val();
}

static void gen_mmuext_op(struct call *c)
{
    unsigned n = chance(10) ? 0 : 1 + (unsigned)below(chance(90) ? 4 : 32);
    struct mmuext_op *op = arena_alloc(n * sizeof(*op));
    if (!op || chance(8)) {
        c->a[0] = bad_ptr();
        c->a[1] = count_val(4096);
    } else {
        for (unsigned i = 0; i < n; i++)
            gen_mmuext(&op[i]);
        c->a[0] = (uint64_t)op;
        c->a[1] = n;
    }
    c->a[2] = chance(70) ? 0 : out_ptr();
    c->a[3] = chance(80) ? DOMID_SELF : domid_val();
}

static void gen_multicall(struct call *c, unsigned depth)
{
    unsigned n = depth ? (unsigned)below(3) : (unsigned)below(9);
    struct multicall_entry *e = arena_alloc(n * sizeof(*e));
    if (!e || chance(8)) {
        c->a[0] = bad_ptr();
        c->a[1] = count_val(2048);
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        struct call sub;
        gen(&sub, depth + 1);
        e[i].op = sub.nr;
        e[i].result = rv();
        for (unsigned j = 0; j < 5; j++)
            e[i].args[j] = sub.a[j];
        e[i].args[5] = rv();
    }
    c->a[0] = (uint64_t)e;
    c->a[1] = n;
}

static uint64_t *words(unsigned n)
{
    uint64_t *w = arena_alloc(n * 8);
    if (w)
        for (unsigned i = 0; i < n; i++)
            w[i] = chance(30) ? (uint64_t)(uint32_t)rv() : rv();
    return w;
}

/* A structure of n random words, or a bad/out pointer. */
static uint64_t struct_ptr(unsigned n)
{
    if (chance(15))
        return out_ptr();
    uint64_t *w = words(n);
    return w ? (uint64_t)w : bad_ptr();
}

static void gen_memory_op(struct call *c)
{
    uint64_t raw = chance(85) ? below(32) : rv();
    uint64_t cmd = raw & 63;                    /* what the hypervisor takes as the command */
    c->a[0] = raw;
    if (chance(5))
        c->a[0] |= below(1 << 10) << 6;        /* a continuation's extent index */
    if ((cmd == 0 || cmd == 1 || cmd == 6) && chance(90)) {
        struct { uint64_t start; uint64_t nr; uint32_t order, flags; uint16_t domid; uint8_t pad[6]; } *r;
        r = arena_alloc(sizeof(*r));
        unsigned n = 1 + (unsigned)below(8);
        uint64_t *ext = arena_alloc(n * 8);
        if (!r || !ext) {
            c->a[1] = bad_ptr();
            return;
        }
        for (unsigned i = 0; i < n; i++) {
            if (cmd == XENMEM_decrease_reservation)
                ext[i] = chance(10) ? image_first_pfn + below(image_last_pfn - image_first_pfn + 1) : mfn_dst();
            else
                ext[i] = chance(70) ? free_mfn() : mfn_any();
        }
        r->start = chance(85) ? (uint64_t)ext : (cmd == XENMEM_decrease_reservation ? bad_ptr() : out_ptr());
        r->nr = chance(80) ? n : (chance(50) ? rv() : 0);
        if (r->nr > n && r->start == (uint64_t)ext)
            r->start = bad_ptr();   /* never read past the vetted extents */
        r->order = chance(80) ? (uint32_t)below(3) : (uint32_t)rv();
        r->flags = chance(80) ? 0 : (uint32_t)rv();
        r->domid = domid_val();
        c->a[1] = (uint64_t)r;
        return;
    }
    if (cmd == 1) {                             /* decrease with a pointer that faults */
        c->a[1] = bad_ptr();
        return;
    }
    c->a[1] = chance(50) ? out_ptr() : struct_ptr(4);
}

static void gen_vcpu_op(struct call *c)
{
    uint64_t cmd = chance(90) ? below(16) : rv();
    static const uint64_t ids[] = { 0, 0, 0, 1, 31, 32, 4096, ~0UL };
    uint64_t vcpu = chance(90) ? ids[below(8)] : rv();
    if (cmd == VCPUOP_down && (uint32_t)vcpu == 0)
        vcpu = 1;
    if (cmd == VCPUOP_send_nmi)
        cmd = 3;                                /* is_up instead */
    c->a[0] = cmd;
    c->a[1] = vcpu;
    uint64_t *w = arena_alloc(64);          /* room for what get_runstate_info writes */
    if (!w) {
        c->a[2] = bad_ptr();
        return;
    }
    switch (cmd) {
    case VCPUOP_register_runstate_memory_area:
    case VCPUOP_register_vcpu_time_memory_area:
        w[0] = chance(70) ? out_ptr() : rv();
        if (!known && cmd == VCPUOP_register_vcpu_time_memory_area && chance(70))
            w[0] = (uint64_t)time_area_page + below(PAGE_SIZE - 32);
        else if (!known && cmd == VCPUOP_register_vcpu_time_memory_area)
            w[0] = bad_ptr();
        if (w[0] >= (uint64_t)_image_start && w[0] < (uint64_t)_end &&
            !(w[0] >= (uint64_t)junk[0] && w[0] < (uint64_t)junk[JUNK_PAGES + 1]))
            w[0] = bad_ptr();
        break;
    case VCPUOP_set_periodic_timer: {
        static const uint64_t p[] = { 0, 1, 1000, 50000, 1000000, 10000000, 1UL << 62, (1UL << 62) - 1, ~0UL };
        w[0] = chance(85) ? p[below(9)] : rv();
        break;
    }
    case VCPUOP_set_singleshot_timer: {
        uint64_t now = pvclock_now();
        static const uint64_t d[] = { 0, 1, 1000, 100000, 1000000 };
        w[0] = chance(60) ? now + d[below(5)] : (chance(50) ? now - below(1UL << 40) : rv());
        w[1] = chance(70) ? below(2) : rv();
        break;
    }
    case VCPUOP_register_vcpu_info:
        w[0] = chance(80) ? mfn_dst() : rv();
        if (w[0] == console_mfn || (w[0] >= image_first_pfn && w[0] <= image_last_pfn))
            w[0] = free_mfn();
        w[1] = chance(70) ? below(64) * 64 : rv();
        break;
    default:
        for (unsigned i = 0; i < 4; i++)
            w[i] = rv();
        if (chance(20)) {
            c->a[2] = out_ptr();
            return;
        }
        break;
    }
    c->a[2] = (uint64_t)w;
}

static void gen_sched_op(struct call *c)
{
    static const uint64_t cmds[] = { 0, 0, 3, 3, 4, 6, 7, 8, 9, 100 };
    uint64_t cmd = chance(95) ? cmds[below(10)] : rv();
    if ((uint32_t)cmd == SCHEDOP_block || (uint32_t)cmd == SCHEDOP_shutdown ||
        (uint32_t)cmd == SCHEDOP_shutdown_code)
        cmd = 0;
    c->a[0] = cmd;
    uint64_t *w = arena_alloc(32);
    if (!w) {
        c->a[1] = bad_ptr();
        return;
    }
    switch ((uint32_t)cmd) {
    case SCHEDOP_poll: {
        unsigned n = (unsigned)below(5);
        uint32_t *ports = arena_alloc(4 * (n + 1));
        for (unsigned i = 0; ports && i < n; i++)
            ports[i] = port_val();
        w[0] = ports && chance(85) ? (uint64_t)ports : in_ptr();
        uint64_t nr = chance(80) ? n : (chance(50) ? 128 + below(3) : rv());
        if (nr > n && w[0] == (uint64_t)ports)
            w[0] = bad_ptr();
        w[1] = nr & 0xffffffff;
        w[2] = chance(50) ? 1 : pvclock_now() + below(50000);   /* never 0: no timeout */
        break;
    }
    case SCHEDOP_remote_shutdown: {
        uint16_t d = domid_val();
        if (d == 1 || d == DOMID_SELF)
            d = 2;
        w[0] = d | ((uint64_t)(uint32_t)rv() << 32);
        break;
    }
    case SCHEDOP_watchdog:
        w[0] = (uint32_t)rv();                  /* id; timeout 0 */
        break;
    default:
        w[0] = rv();
        w[1] = rv();
        break;
    }
    c->a[1] = chance(90) ? (uint64_t)w : bad_ptr();
}

static void gen_evtchn_op(struct call *c)
{
    uint64_t cmd = chance(92) ? below(15) : rv();
    c->a[0] = cmd;
    uint32_t *w = arena_alloc(32);
    /* close and reset read their port or domain from memory we choose */
    int guarded = (uint32_t)cmd == EVTCHNOP_close || (uint32_t)cmd == EVTCHNOP_reset;
    if (!w || (chance(8) && !guarded)) {
        c->a[1] = w || !guarded ? out_ptr() : bad_ptr();
        return;
    }
    /* Fields as the structures lay them out, each drawn from its pool. */
    for (unsigned i = 0; i < 8; i++)
        w[i] = chance(50) ? port_val() : (uint32_t)rv();
    if (chance(60))
        w[0] = chance(50) ? domid_val() : (uint32_t)below(25);   /* dom / virq */
    if (chance(40))
        w[1] = (uint32_t)below(3);                              /* vcpu / remote dom */
    switch ((uint32_t)cmd) {
    case EVTCHNOP_close:
        if (w[0] == console_port)
            w[0] = store_port;
        break;
    case EVTCHNOP_reset:
        w[0] = 0;                               /* dom0: not ours to reset */
        break;
    }
    c->a[1] = (uint64_t)w;
}

static void gen_grant_op(struct call *c)
{
    uint64_t cmd = chance(92) ? below(14) : rv();
    c->a[0] = cmd;
    c->a[2] = chance(80) ? below(3) : count_val(64);
    if (cmd == GNTTABOP_setup_table && chance(85)) {
        struct { uint16_t dom; uint16_t pad; uint32_t nr_frames; uint16_t status; uint8_t pad2[6];
                 uint64_t frame_list; } *s = arena_alloc(24);
        if (s) {
            s->dom = domid_val();
            s->nr_frames = chance(70) ? (uint32_t)below(70) : (uint32_t)rv();
            s->status = (uint16_t)rnd();
            s->frame_list = out_ptr();
            c->a[1] = (uint64_t)s;
            return;
        }
    }
    c->a[1] = struct_ptr(4);
}

static const uint64_t unimplemented[] = { 6, 7, 11, 16, 19, 22, 27, 28, 31, 34, 35, 36, 37, 38, 39,
                                          40, 41, 42, 43, 48, 55, 63 };

/* Implemented hypercalls, with weights (out of the sum). */
static const struct { uint8_t nr, weight; } families[] = {
    { __HYPERVISOR_set_trap_table, 1 }, { __HYPERVISOR_mmu_update, 12 }, { HC_set_gdt, 3 },
    { HC_fpu_taskswitch, 1 }, { __HYPERVISOR_set_debugreg, 3 }, { __HYPERVISOR_get_debugreg, 2 },
    { HC_update_descriptor, 3 }, { __HYPERVISOR_memory_op, 8 }, { __HYPERVISOR_multicall, 6 },
    { __HYPERVISOR_update_va_mapping, 10 }, { __HYPERVISOR_set_timer_op, 3 },
    { __HYPERVISOR_xen_version, 3 }, { __HYPERVISOR_console_io, 2 }, { HC_grant_table_op, 4 },
    { HC_vm_assist, 2 }, { __HYPERVISOR_vcpu_op, 8 }, { HC_set_segment_base, 2 },
    { __HYPERVISOR_mmuext_op, 12 }, { __HYPERVISOR_sched_op, 4 }, { __HYPERVISOR_callback_op, 2 },
    { __HYPERVISOR_event_channel_op, 8 }, { HC_physdev_op, 3 },
};

static void gen(struct call *c, unsigned depth)
{
    for (unsigned i = 0; i < 5; i++)
        c->a[i] = rv();
    if (chance(7)) {                            /* a number Hospes does not implement */
        c->nr = chance(85) ? unimplemented[below(sizeof(unimplemented) / 8)]
                           : (chance(50) ? 64 + below(1000) : rnd() | (1UL << 40));
        if (c->nr == HC_sched_op_compat && (c->a[0] == SCHEDOP_shutdown || c->a[0] == SCHEDOP_remote_shutdown))
            c->a[0] = 0;
        if (c->nr == 16 || c->nr == 19)          /* compat event channel / physdev: a pointer */
            c->a[0] = struct_ptr(4);
        return;
    }
    unsigned total = 0;
    for (unsigned i = 0; i < sizeof(families) / sizeof(families[0]); i++)
        total += families[i].weight;
    unsigned pick = (unsigned)below(total), f = 0;
    while (pick >= families[f].weight)
        pick -= families[f++].weight;
    c->nr = families[f].nr;

    switch (c->nr) {
    case __HYPERVISOR_set_trap_table: {
        uint64_t p = bad_ptr();
        if (p < 0x1000 || (p >= (uint64_t)_image_start && p < (uint64_t)_end &&
                           p < (uint64_t)junk[JUNK_PAGES]))
            p = noncanonical();
        c->a[0] = p;
        break;
    }
    case __HYPERVISOR_mmu_update:
        gen_mmu_update(c);
        break;
    case HC_set_gdt: {
        unsigned n = 1 + (unsigned)below(16);
        uint64_t *frames = arena_alloc(n * 8);
        for (unsigned i = 0; frames && i < n; i++)
            frames[i] = mfn_any();
        c->a[0] = frames && chance(85) ? (uint64_t)frames : in_ptr();
        static const uint64_t ents[] = { 0, 1, 256, 511, 512, 513, 7167, 7168, 8192 };
        c->a[1] = chance(80) ? ents[below(9)] : rv();
        if (c->a[0] == (uint64_t)frames && c->a[1] > n * 512)
            c->a[1] = n * 512;
        break;
    }
    case HC_fpu_taskswitch:
        c->a[0] = chance(80) ? below(2) : rv();
        break;
    case __HYPERVISOR_set_debugreg:
        c->a[0] = chance(85) ? below(9) : rv();
        c->a[1] = chance(50) ? rv() : (chance(50) ? (uint64_t)_stext : hyp_addr());
        if ((uint32_t)c->a[0] == 7)
            c->a[1] &= ~0xffUL;                 /* no breakpoint enabled */
        break;
    case __HYPERVISOR_get_debugreg:
        c->a[0] = chance(85) ? below(10) : rv();
        break;
    case HC_update_descriptor:
        /* Xen writes a valid descriptor into any writable page: not ours */
        c->a[0] = (mfn_dst() << 12) + (chance(80) ? below(512) * 8 : below(4096));
        if (chance(10)) {
            uint64_t v = rv();
            if (v >> 12 >= free_first)
                c->a[0] = v;
        }
        c->a[1] = rv();
        break;
    case __HYPERVISOR_memory_op:
        gen_memory_op(c);
        break;
    case __HYPERVISOR_multicall:
        if (depth > 1) {
            c->nr = __HYPERVISOR_xen_version;
            c->a[0] = 0;
            break;
        }
        gen_multicall(c, depth);
        break;
    case __HYPERVISOR_update_va_mapping:
        c->a[0] = va_target();
        c->a[1] = pte_val();
        c->a[2] = chance(80) ? below(8) : (chance(50) ? out_ptr() : rv()) & ~3UL;
        break;
    case __HYPERVISOR_set_timer_op: {
        uint64_t now = pvclock_now();
        switch (below(5)) {
        case 0: c->a[0] = 0; break;
        case 1: c->a[0] = now + below(10000000); break;
        case 2: c->a[0] = now - below(1000000000); break;
        case 3: c->a[0] = now + (1UL << 50) + below(1000); break;
        default: c->a[0] = rv(); break;
        }
        break;
    }
    case __HYPERVISOR_xen_version:
        c->a[0] = chance(85) ? below(12) : rv();
        c->a[1] = out_ptr();
        break;
    case __HYPERVISOR_console_io:
        c->a[0] = chance(85) ? below(3) : rv();
        c->a[1] = chance(70) ? below(48) : count_val(16400);
        /* only a write reads the buffer; read and the rest may write it */
        c->a[2] = (uint32_t)c->a[0] == CONSOLEIO_write && c->a[1] <= 48 ? in_ptr() : out_ptr();
        break;
    case HC_grant_table_op:
        gen_grant_op(c);
        break;
    case HC_vm_assist:
        c->a[0] = chance(85) ? below(3) : rv();
        c->a[1] = chance(85) ? (chance(80) ? below(6) : 32) : rv();
        break;
    case __HYPERVISOR_vcpu_op:
        gen_vcpu_op(c);
        break;
    case HC_set_segment_base:
        c->a[0] = chance(85) ? below(5) : rv();
        c->a[1] = rv();
        break;
    case __HYPERVISOR_mmuext_op:
        gen_mmuext_op(c);
        break;
    case __HYPERVISOR_sched_op:
        gen_sched_op(c);
        break;
    case __HYPERVISOR_callback_op:
        c->a[0] = chance(85) ? CALLBACKOP_unregister : 2 + below(1000);
        c->a[1] = struct_ptr(2);
        break;
    case __HYPERVISOR_event_channel_op:
        gen_evtchn_op(c);
        break;
    case HC_physdev_op:
        c->a[0] = chance(85) ? below(32) : rv();
        c->a[1] = chance(80) ? struct_ptr(3) : in_ptr();
        break;
    }
}

/* ---- set-up ------------------------------------------------------------ */
static uint64_t parse_arg(const char *key, uint64_t dflt)
{
    const char *cl = xen_start_info->cmd_line;
    size_t n = strlen(key), len = 0;
    while (len < sizeof(xen_start_info->cmd_line) && cl[len])
        len++;
    for (size_t i = 0; i + n < len; i++) {
        if ((i == 0 || cl[i - 1] == ' ') && memcmp(cl + i, key, n) == 0 && cl[i + n] == '=') {
            uint64_t v = 0;
            int digits = 0;
            for (size_t j = i + n + 1; j < len && cl[j] >= '0' && cl[j] <= '9'; j++, digits++)
                v = v * 10 + (uint64_t)(cl[j] - '0');
            return digits ? v : dflt;
        }
    }
    return dflt;
}

static volatile uint64_t *table_of(uint64_t entry)
{
    uint64_t mfn = (entry & PTE_ADDR_MASK) >> 12;
    if (!(entry & _PAGE_PRESENT) || !is_live_pt(mfn)) {
        fail("fuzz_setup", "bootstrap entry %#lx is not one of the %lu table frames from %lu",
             entry, pt_count, pt_first_pfn);
        finish();
    }
    return mfn_to_virt(mfn);
}

/* Machine address of the L1 entry mapping va (the bootstrap tables, 4 KiB pages). */
static uint64_t l1_entry_ma(uint64_t va, uint64_t *l2_ma)
{
    volatile uint64_t *l4 = (volatile uint64_t *)xen_start_info->pt_base;
    volatile uint64_t *l3 = table_of(l4[(va >> 39) & 511]);
    uint64_t e3 = l3[(va >> 30) & 511];
    volatile uint64_t *l2 = table_of(e3);
    uint64_t e2 = l2[(va >> 21) & 511];
    if (l2_ma)
        *l2_ma = e3 & PTE_ADDR_MASK;
    table_of(e2);                               /* checks the L1 is one of ours too */
    return (e2 & PTE_ADDR_MASK) + ((va >> 12) & 511) * 8;
}

static void setup(void)
{
    struct start_info *si = xen_start_info;
    require_rc(traps_install(), "set_trap_table");
    require_rc(map_shared_info(), "map_shared_info");
    require_rc(m2p_init(), "machphys_mapping");
    HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, 0);
    events_disable();

    nr_pages = si->nr_pages;
    pt_first_pfn = virt_to_pfn((void *)si->pt_base);
    pt_count = si->nr_pt_frames;
    l4_mfn = pfn_to_mfn(pt_first_pfn);
    image_first_pfn = virt_to_pfn(_image_start);
    /* the bootstrap region: image, start_info, p2m, tables, stack (+512 KiB) */
    image_last_pfn = virt_to_pfn((void *)(xen_boot_rsp - 1));
    if (pt_first_pfn + pt_count - 1 > image_last_pfn)
        image_last_pfn = pt_first_pfn + pt_count - 1;
    free_first = nr_pages / 2;
    console_mfn = si->console.domU.mfn;
    store_mfn = si->store_mfn;
    console_port = si->console.domU.evtchn;
    store_port = si->store_evtchn;
    if (free_first <= image_last_pfn + 256 || pfn_to_mfn(pt_first_pfn + pt_count - 1) != pt_first_pfn + pt_count - 1) {
        fail("fuzz_setup", "needs identity frames and >= 2x the bootstrap region (%lu pages, region ends %lu)",
             nr_pages, image_last_pfn);
        finish();
    }
    for (unsigned i = 0; i < WINDOWS; i++)
        window_pte_ma[i] = l1_entry_ma((uint64_t)windows[i], 0);
    /* Empty slots of the L2 that maps us: 2 MiB ranges nothing of ours uses. */
    uint64_t l2_ma;
    l1_entry_ma((uint64_t)_image_start, &l2_ma);
    volatile uint64_t *l2 = mfn_to_virt(l2_ma >> 12);
    for (unsigned i = 0; i < 512 && free_l2_slots < MAX_FREE_SLOTS; i += 17)
        if (l2[i] == 0)
            free_l2_slot_ma[free_l2_slots++] = l2_ma + i * 8;
    /* The guards: unmapped pages after the junk and the arena. */
    require_rc(HYPERVISOR_update_va_mapping((uint64_t)junk[JUNK_PAGES], 0, UVMF_INVLPG), "junk_guard");
    require_rc(HYPERVISOR_update_va_mapping((uint64_t)arena[ARENA_PAGES], 0, UVMF_INVLPG), "arena_guard");
    printf("FUZZ setup: %lu pages, free from %lu, tables %lu+%lu, image %lu-%lu, %u free L2 slots\n",
           nr_pages, free_first, pt_first_pfn, pt_count, image_first_pfn, image_last_pfn, free_l2_slots);
}

static void refill_junk(void)
{
    uint64_t *w = (uint64_t *)junk[0] + below(JUNK_PAGES * PAGE_SIZE / 8 - 64);
    for (unsigned i = 0; i < 64; i++)
        w[i] = rv();
}

#define MAX_NR 64
static uint64_t calls_by_nr[MAX_NR + 1], ok_by_nr[MAX_NR + 1];

void guest_main(void)
{
    uint64_t seed = parse_arg("seed", 1);
    uint64_t total = parse_arg("calls", 20000);
    uint64_t progress = parse_arg("progress", 10000);
    uint64_t trace = parse_arg("trace", ~0UL);
    uint64_t skip = parse_arg("skip", 0);
    known = (int)parse_arg("known", 0);       /* generate but do not make calls below this */
    uint64_t flush = parse_arg("flush", 0);     /* flush the TLB after every call: finds a
                                                 * damaged table at the call that did it */
    rng_state = seed * 0x9e3779b97f4a7c15UL + 0x7f4a7c159e3779b9UL;
    if (!rng_state)
        rng_state = 1;

    setup();
    printf("FUZZ start seed %lu calls %lu\n", seed, total);
    for (uint64_t i = 0; i < total; i++) {
        struct call c;
        arena_used = 0;
        refill_junk();
        gen(&c, 0);
        if (i >= trace)
            printf("FUZZ call %lu: hc %lu (%#lx, %#lx, %#lx, %#lx, %#lx)\n",
                   i, c.nr, c.a[0], c.a[1], c.a[2], c.a[3], c.a[4]);
        for (size_t w = 0; i >= trace && w < arena_used / 8; w += 4) {
            const uint64_t *q = (const uint64_t *)arena[0] + w;
            printf("FUZZ   arena+%#lx: %#lx %#lx %#lx %#lx\n", w * 8, q[0], q[1], q[2], q[3]);
        }
        long rc = i < skip ? 0 : _hc(c.nr, c.a[0], c.a[1], c.a[2], c.a[3], c.a[4]);
        if (i >= trace)
            printf("FUZZ rc %ld\n", rc);
        if (flush) {
            struct mmuext_op op = { .cmd = MMUEXT_TLB_FLUSH_LOCAL };
            HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF);
        }
        unsigned k = c.nr < MAX_NR ? (unsigned)c.nr : MAX_NR;
        calls_by_nr[k]++;
        ok_by_nr[k] += rc >= 0;
        memset(arena, 0, arena_high);
        arena_high = 0;
        if (progress && (i + 1) % progress == 0) {
            /* Still ourselves: the hypervisor answers and our tables are in place. */
            long major = HYPERVISOR_xen_version(XENVER_version, 0) >> 16;
            printf("FUZZ progress %lu/%lu xen %ld\n", i + 1, total, major);
        }
    }
    for (unsigned k = 0; k <= MAX_NR; k++)
        if (calls_by_nr[k])
            printf("FUZZ hypercall %s%u: %lu calls, %lu succeeded\n",
                   k == MAX_NR ? ">=" : "", k, calls_by_nr[k], ok_by_nr[k]);
    long major = HYPERVISOR_xen_version(XENVER_version, 0) >> 16;
    check(major >= 4, "fuzz_alive", "xen_version after the run: %ld", major);
    printf("FUZZ done %lu calls seed %lu\n", total, seed);
}
