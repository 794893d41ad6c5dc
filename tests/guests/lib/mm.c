/*
 * Frames and mappings for the test kernels.
 *
 * Page tables and hypercalls speak machine frames. Hospes uses MFN == PFN,
 * real Xen does not, so every conversion goes through the p2m array the
 * loader gave us (start_info.mfn_list, indexed by PFN) and the read-only
 * M2P (indexed by MFN) whose address XENMEM_machphys_mapping reports
 * (never hard-coded: Hospes cannot put it at 0xffff800000000000).
 *
 * Spare pages come from a pool in .bss: they are ours, inside the bootstrap
 * mapping (4 KiB L1 entries exist for them) and zero.
 */
#include "guest.h"

struct xen_machphys_mapping machphys;
static volatile const uint64_t *m2p;

uint64_t virt_to_pfn(const void *va)
{
    return ((uint64_t)va - GUEST_VIRT_BASE) >> 12;
}

uint64_t pfn_to_mfn(uint64_t pfn)
{
    return ((volatile const uint64_t *)xen_start_info->mfn_list)[pfn];
}

uint64_t virt_to_mfn(const void *va)
{
    return pfn_to_mfn(virt_to_pfn(va));
}

long m2p_init(void)
{
    if (m2p)
        return 0;
    long rc = HYPERVISOR_memory_op(XENMEM_machphys_mapping, &machphys);
    if (rc == 0)
        m2p = (volatile const uint64_t *)machphys.v_start;
    return rc;
}

uint64_t mfn_to_pfn(uint64_t mfn)
{
    return m2p[mfn];
}

void *mfn_to_virt(uint64_t mfn)
{
    return (void *)(GUEST_VIRT_BASE + (mfn_to_pfn(mfn) << 12));
}

#define POOL_PAGES 24
static uint8_t page_pool[POOL_PAGES][PAGE_SIZE] PAGE_ALIGNED;
static unsigned pool_used;

void *alloc_page(void)
{
    if (pool_used >= POOL_PAGES) {
        fail("alloc_page", "page pool of %d pages exhausted", POOL_PAGES);
        finish();
    }
    void *p = page_pool[pool_used++];
    memset(p, 0, PAGE_SIZE);
    return p;
}

long set_page_ro(void *va)
{
    return HYPERVISOR_update_va_mapping((uint64_t)va,
                                        (virt_to_mfn(va) << 12) | PTE_KERNEL_RO,
                                        UVMF_INVLPG);
}

long set_page_rw(void *va)
{
    return HYPERVISOR_update_va_mapping((uint64_t)va,
                                        (virt_to_mfn(va) << 12) | PTE_KERNEL_RW,
                                        UVMF_INVLPG);
}

/* shared_info is not RAM of ours: start_info gives its machine address and
 * we map it over a spare page, the way Linux maps it at a fixmap slot. */
volatile struct shared_info *shared;
static uint8_t shared_info_window[PAGE_SIZE] PAGE_ALIGNED;

long map_shared_info(void)
{
    if (shared)
        return 0;
    uint64_t maddr = xen_start_info->shared_info & PTE_ADDR_MASK;
    long rc = HYPERVISOR_update_va_mapping((uint64_t)shared_info_window,
                                           maddr | PTE_KERNEL_RW, UVMF_INVLPG);
    if (rc == 0)
        shared = (volatile struct shared_info *)shared_info_window;
    return rc;
}
