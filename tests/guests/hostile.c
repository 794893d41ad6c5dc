/*
 * hostile: a guest that tries to turn pages the hypervisor writes into page
 * tables, and other ways out of the PV MMU's rules (issue 13).
 *
 * The hypervisor keeps writing some of our pages through mappings of its
 * own: the xenstore and console rings, a registered vcpu_info. Xen counts
 * each such mapping as a writable type reference, and a frame with a
 * writable reference cannot become a page table or a GDT page. If it could,
 * a guest would pin its store ring as an L1 (validated while harmless), have
 * the store write an entry of its choosing into it (the reply to a read of a
 * value it stored), hook that L1 into its tree and map hypervisor frames.
 *
 * Each attempt below must be refused exactly as Xen refuses it (-EINVAL from
 * get_page_type's type conflict), and a control shows that the same
 * operation on an ordinary page of ours succeeds, so the refusal is the
 * hypervisor's reference and not something else. Pages we make read-only
 * for an attempt (a pin needs that: our own writable mapping is a writable
 * reference too) are made writable again afterwards.
 *
 * The writable-page-table emulation must refuse what Xen's refuses: only
 * naturally aligned stores of up to 8 bytes into an L1 are emulated; a
 * misaligned one, or a store into an L2, is the guest's own #PF.
 *
 * vcpu_info is registered last: after that the vcpu_info in shared_info
 * (where the runtime reads CR2 and the time) is no longer updated.
 */
#include "guest.h"
#include "xenstore.h"

#define __HYPERVISOR_set_gdt       2
#define __HYPERVISOR_vm_assist     21
#define VMASST_CMD_enable          0
#define VMASST_TYPE_writable_pagetables 2
#define MMUEXT_PIN_L2_TABLE        1
#define VCPUOP_register_vcpu_info  10

struct vcpu_register_vcpu_info {
    uint64_t mfn;
    uint32_t offset;
    uint32_t rsvd;
};

/* L4 511, L3 510, L2 511: a free L2 slot far above the bootstrap mapping
 * (tests/guests/mmu.c uses the same one). */
#define FRESH_L2_INDEX 511

static struct start_info *si;
static volatile struct xs_ring *store;
static void *console_page;
static uint64_t *boot_l2;
static uint64_t hv_frame;          /* a frame of the hypervisor's (M2P's L3) */

static uint64_t *table_va(uint64_t entry)
{
    return mfn_to_virt((entry & PTE_ADDR_MASK) >> 12);
}

static uint64_t maddr_of(const void *va)
{
    return (virt_to_mfn(va) << 12) | ((uint64_t)va & (PAGE_SIZE - 1));
}

static long pin(unsigned cmd, uint64_t mfn)
{
    return mmuext_mfn(cmd, mfn);
}

static long set_gdt(uint64_t *frames, unsigned entries)
{
    return _hc(__HYPERVISOR_set_gdt, frames, entries, 0, 0, 0);
}

/* An ordinary page of ours, read-only and pinned as an L1. */
static uint64_t *new_l1(const char *what)
{
    uint64_t *l1 = alloc_page();
    long rc = set_page_ro(l1);
    if (!rc)
        rc = pin(MMUEXT_PIN_L1_TABLE, virt_to_mfn(l1));
    require_rc(rc, what);
    return l1;
}

/* ---- stores that may fault --------------------------------------------- */

/* store8(addr, value): movq at addr; store8_off3: at addr + 3. A #PF handler
 * resumes at the matching *_resume label. */
void store8(volatile void *addr, uint64_t value);
void store8_off3(volatile void *addr, uint64_t value);
extern char store8_fault[], store8_resume[], store8_off3_fault[], store8_off3_resume[];
asm(".pushsection .text\n"
    ".globl store8, store8_fault, store8_resume\n"
    "store8:\n"
    "store8_fault:\n"
    "    movq %rsi, (%rdi)\n"
    "store8_resume:\n"
    "    ret\n"
    ".globl store8_off3, store8_off3_fault, store8_off3_resume\n"
    "store8_off3:\n"
    "store8_off3_fault:\n"
    "    movq %rsi, 3(%rdi)\n"
    "store8_off3_resume:\n"
    "    ret\n"
    ".popsection\n");

static struct {
    uint64_t count, error, cr2, rip;
} pf;

static int pf_handler(struct regs *r)
{
    pf.count++;
    pf.error = r->error;
    pf.cr2 = VCPU0->cr2;
    pf.rip = r->rip;
    if (r->rip == (uint64_t)store8_fault)
        r->rip = (uint64_t)store8_resume;
    else if (r->rip == (uint64_t)store8_off3_fault)
        r->rip = (uint64_t)store8_off3_resume;
    else {
        fail("unexpected_trap", "#PF error %#lx at rip %#lx cr2 %#lx", r->error, r->rip, pf.cr2);
        dump_regs(r);
        finish();
    }
    return TRAP_RETURN;
}

/* ---- the attempts --------------------------------------------------------- */

static void control_pin_ordinary_page(void)
{
    uint64_t *page = alloc_page();
    long rc = set_page_ro(page), pinned = -1, unpinned = -1, rw = -1;
    if (!rc)
        pinned = pin(MMUEXT_PIN_L1_TABLE, virt_to_mfn(page));
    if (!pinned)
        unpinned = pin(MMUEXT_UNPIN_TABLE, virt_to_mfn(page));
    if (!rc)
        rw = set_page_rw(page);
    check(rc == 0 && pinned == 0 && unpinned == 0 && rw == 0, "control_pin_ordinary_page",
          "read-only %ld, pin %ld, unpin %ld, writable again %ld", rc, pinned, unpinned, rw);
}

/* Pin a page the hypervisor writes, our own mapping of it read-only first. */
static void pin_refused(const char *name, void *va, unsigned cmd)
{
    long ro = set_page_ro(va);
    long rc = ro ? 0 : pin(cmd, virt_to_mfn(va));
    if (rc == 0 && !ro)
        pin(MMUEXT_UNPIN_TABLE, virt_to_mfn(va));
    long rw = set_page_rw(va);
    check(ro == 0 && rc == -XEN_EINVAL && rw == 0, name,
          "read-only %ld, pin returned %ld (want -EINVAL), writable again %ld", ro, rc, rw);
}

static void pin_frame_refused(const char *name, uint64_t mfn)
{
    long rc = pin(MMUEXT_PIN_L1_TABLE, mfn);
    if (rc == 0)
        pin(MMUEXT_UNPIN_TABLE, mfn);
    check(rc == -XEN_EINVAL, name, "pinning mfn %#lx returned %ld (want -EINVAL)", mfn, rc);
}

static void gdt_attempts(void)
{
    /* Control: an ordinary zeroed page is a fine GDT frame, and gives its
     * reference back when the GDT is replaced. */
    uint64_t *page = alloc_page();
    uint64_t frames[1] = { virt_to_mfn(page) };
    long ro = set_page_ro(page);
    long rc = ro ? -1 : set_gdt(frames, 512);
    long cleared = set_gdt(frames, 0);
    long rw = set_page_rw(page);
    check(ro == 0 && rc == 0 && cleared == 0 && rw == 0, "control_gdt_ordinary_page",
          "read-only %ld, set_gdt %ld, empty set_gdt %ld, writable again %ld", ro, rc, cleared, rw);

    /* The store ring (still all zeroes: no request was made yet). */
    frames[0] = si->store_mfn;
    ro = set_page_ro((void *)store);
    rc = ro ? 0 : set_gdt(frames, 512);
    if (rc == 0 && !ro)
        set_gdt(frames, 0);
    rw = set_page_rw((void *)store);
    check(ro == 0 && rc == -XEN_EINVAL && rw == 0, "store_ring_as_gdt_refused",
          "read-only %ld, set_gdt returned %ld (want -EINVAL), writable again %ld", ro, rc, rw);
}

static void table_link_attempts(void)
{
    /* Hook the store ring into our tree as an L1, and switch to it as an L4. */
    long ro = set_page_ro((void *)store);
    uint64_t l2e = maddr_of(&boot_l2[FRESH_L2_INDEX]);
    long link = ro ? 0 : mmu_update1(l2e | MMU_NORMAL_PT_UPDATE, (si->store_mfn << 12) | PTE_TABLE);
    uint64_t slot = boot_l2[FRESH_L2_INDEX];
    if (link == 0 && !ro)
        mmu_update1(l2e | MMU_NORMAL_PT_UPDATE, 0);
    long base = ro ? 0 : pin(MMUEXT_NEW_BASEPTR, si->store_mfn);
    long rw = set_page_rw((void *)store);
    check(ro == 0 && link == -XEN_EINVAL && slot == 0 && rw == 0, "store_ring_link_as_l1_refused",
          "read-only %ld, mmu_update returned %ld (want -EINVAL), L2 slot %#lx", ro, link, slot);
    check(ro == 0 && base == -XEN_EINVAL, "store_ring_new_baseptr_refused",
          "new_baseptr returned %ld (want -EINVAL)", base);
}

/* The escape of issue 13: store a forged entry, queue a read of it, make the
 * ring an L1 and hook it in before the store answers (it would then write the
 * entry into a live L1). Both are refused; the store still answers, through
 * a ring that stayed an ordinary page. */
static void forged_pte_attempt(void)
{
    static const char path[] = "data/hostile";
    uint64_t forged[16];
    for (unsigned i = 0; i < 16; i++)   /* some copy lands 8-byte aligned in the reply */
        forged[i] = (hv_frame << 12) | PTE_TABLE;
    uint32_t type = 0;
    char reply[sizeof(forged)];

    long rc = xs_queue(XS_WRITE, 1, path, sizeof(path), forged, sizeof(forged));
    xs_notify();
    long n = rc ? -1 : xs_reply(&type, reply, sizeof(reply));
    if (n < 0 || type != XS_WRITE) {
        fail("store_forged_pte_never_a_table", "XS_WRITE: reply length %ld type %u", n, type);
        return;
    }
    rc = xs_queue(XS_READ, 2, path, sizeof(path), 0, 0);
    long ro = set_page_ro((void *)store);
    long pinned = ro ? 0 : pin(MMUEXT_PIN_L1_TABLE, si->store_mfn);
    uint64_t l2e = maddr_of(&boot_l2[FRESH_L2_INDEX]);
    long link = ro ? 0 : mmu_update1(l2e | MMU_NORMAL_PT_UPDATE, (si->store_mfn << 12) | PTE_TABLE);
    if (link == 0)
        mmu_update1(l2e | MMU_NORMAL_PT_UPDATE, 0);
    if (pinned == 0 && !ro)
        pin(MMUEXT_UNPIN_TABLE, si->store_mfn);
    long rw = set_page_rw((void *)store);
    xs_notify();                    /* the store writes the forged entries now */
    n = xs_reply(&type, reply, sizeof(reply));
    check(rc == 0 && ro == 0 && pinned == -XEN_EINVAL && link == -XEN_EINVAL && rw == 0 &&
              n == (long)sizeof(forged) && type == XS_READ && !memcmp(reply, forged, sizeof(forged)),
          "store_forged_pte_never_a_table",
          "pin %ld, link %ld (want -EINVAL for both), read reply length %ld type %u", pinned, link, n,
          type);
}

static void ptwr_attempts(void)
{
    /* Xen emulates L1 stores only for a guest that asks, as Linux does. */
    require_rc(_hc(__HYPERVISOR_vm_assist, VMASST_CMD_enable, VMASST_TYPE_writable_pagetables, 0, 0, 0),
               "vm_assist_writable_pagetables");
    trap_set_handler(14, pf_handler);
    uint64_t *l1 = new_l1("ptwr_l1");
    uint64_t *data = alloc_page();
    uint64_t pte = (virt_to_mfn(data) << 12) | PTE_KERNEL_RW;

    /* An aligned 8-byte store is emulated: validated and written. */
    uint64_t before = pf.count;
    store8(&l1[5], pte);
    check(pf.count == before && (l1[5] & PTE_ADDR_MASK) == (pte & PTE_ADDR_MASK) && (l1[5] & _PAGE_PRESENT),
          "aligned_ptwr_emulated", "%lu faults, entry %#lx", pf.count - before, l1[5]);

    /* Misaligned: not emulated, our #PF (present | write, U clear: kernel mode). */
    before = pf.count;
    store8_off3(&l1[6], pte);
    check(pf.count == before + 1 && pf.error == 3 && pf.cr2 == (uint64_t)&l1[6] + 3 &&
              pf.rip == (uint64_t)store8_off3_fault && l1[6] == 0 && l1[7] == 0,
          "misaligned_ptwr_pf", "%lu faults, error %#lx, cr2 %#lx (want %#lx), rip %#lx, entries %#lx %#lx",
          pf.count - before, pf.error, pf.cr2, (uint64_t)&l1[6] + 3, pf.rip, l1[6], l1[7]);

    /* A store of a hypervisor frame into the L1: refused, our #PF. */
    before = pf.count;
    store8(&l1[8], (hv_frame << 12) | PTE_KERNEL_RW);
    check(pf.count == before + 1 && pf.error == 3 && l1[8] == 0, "ptwr_hypervisor_frame_pf",
          "%lu faults, error %#lx, entry %#lx", pf.count - before, pf.error, l1[8]);

    /* The bootstrap L2 is a page table too, but Xen emulates L1 writes only. */
    before = pf.count;
    store8(&boot_l2[FRESH_L2_INDEX], 0);
    check(pf.count == before + 1 && pf.error == 3 && pf.cr2 == (uint64_t)&boot_l2[FRESH_L2_INDEX],
          "l2_store_pf", "%lu faults, error %#lx, cr2 %#lx", pf.count - before, pf.error, pf.cr2);
}

static void vcpu_info_attempts(void)
{
    /* A page table cannot hold vcpu_info (map_vcpu_info wants a writable type). */
    uint64_t *l1 = new_l1("vcpu_info_l1");
    struct vcpu_register_vcpu_info info = { .mfn = virt_to_mfn(l1), .offset = 0 };
    long rc = HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, &info);
    check(rc == -XEN_EINVAL, "vcpu_info_on_page_table_refused",
          "registering vcpu_info in a pinned L1 returned %ld (want -EINVAL)", rc);

    uint64_t *page = alloc_page();
    info.mfn = virt_to_mfn(page);
    info.offset = 64;
    if (!check_rc(HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, &info), "register_vcpu_info"))
        return;
    pin_refused("pin_vcpu_info_page_refused", page, MMUEXT_PIN_L1_TABLE);
}

void guest_main(void)
{
    si = xen_start_info;
    require_rc(map_shared_info(), "map_shared_info");
    require_rc(traps_install(), "set_trap_table");
    require_rc(m2p_init(), "m2p_init");
    store = xs_ring();
    console_page = mfn_to_virt(si->console.domU.mfn);
    uint64_t *l4 = (uint64_t *)si->pt_base;
    boot_l2 = table_va(table_va(l4[511])[510]);
    hv_frame = (l4[257] & PTE_ADDR_MASK) >> 12;    /* the M2P's L3 */
    if (boot_l2[FRESH_L2_INDEX] != 0) {
        fail("fresh_l2_slot", "L2 slot %d is in use (%#lx)", FRESH_L2_INDEX, boot_l2[FRESH_L2_INDEX]);
        return;
    }

    control_pin_ordinary_page();
    pin_refused("pin_store_ring_l1_refused", (void *)store, MMUEXT_PIN_L1_TABLE);
    pin_refused("pin_store_ring_l2_refused", (void *)store, MMUEXT_PIN_L2_TABLE);
    pin_refused("pin_console_ring_l1_refused", console_page, MMUEXT_PIN_L1_TABLE);
    pin_frame_refused("pin_shared_info_refused", si->shared_info >> 12);
    pin_frame_refused("pin_hypervisor_frame_refused", hv_frame);
    gdt_attempts();
    table_link_attempts();
    forged_pte_attempt();
    ptwr_attempts();
    vcpu_info_attempts();
}
