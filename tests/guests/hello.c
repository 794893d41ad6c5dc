/*
 * hello: the smallest useful PV kernel. Checks that the console works and
 * that the start-of-day state matches the Xen PV64 ABI (pv-abi.md §2):
 * start_info contents, where the loader's boot stack and page tables are.
 * Uses nothing but hypercalls: no trap table, no shared_info mapping.
 */
#include "guest.h"

void guest_main(void)
{
    struct start_info *si = xen_start_info;
    uint64_t region_end = GUEST_VIRT_BASE + si->nr_pages * PAGE_SIZE;

    /* 1. The console itself (the runtime falls back to the console ring if
     *    console_io fails, so the FAIL line still gets out). */
    static const char hello[] = "hello from the Hospes PV test kernel\n";
    long rc = HYPERVISOR_console_io(CONSOLEIO_write, sizeof(hello) - 1, hello);
    check(rc == 0, "console_io_write", "CONSOLEIO_write returned %ld", rc);

    /* 2. xen_version(XENVER_version) = (major << 16) | minor. */
    long ver = HYPERVISOR_xen_version(XENVER_version, 0);
    printf("xen version %ld.%ld\n", ver >> 16, ver & 0xffff);
    check(ver >= 0 && (ver >> 16) >= 4, "xen_version_major",
          "XENVER_version returned %#lx, want major >= 4", ver);

    /* 3. start_info: RSI pointed at it. Linux does not check the magic but
     *    Xen always writes "xen-3.0-x86_64" for a 64-bit PV guest. */
    check(memcmp(si->magic, "xen-3.0-x86_64", 14) == 0, "start_info_magic",
          "magic is '%.32s'", si->magic);
    check(si->nr_pages > 0, "start_info_nr_pages", "nr_pages is 0");
    printf("nr_pages %lu shared_info %#lx store %#lx/%u console %#lx/%u\n",
           si->nr_pages, si->shared_info, si->store_mfn, si->store_evtchn,
           si->console.domU.mfn, si->console.domU.evtchn);
    printf("pt_base %#lx nr_pt_frames %lu mfn_list %#lx boot rsp %#lx image %p-%p\n",
           si->pt_base, si->nr_pt_frames, si->mfn_list, xen_boot_rsp,
           _image_start, _end);
    /* Ports 0 are invalid: Linux refuses a console or xenstore on port 0. */
    check(si->shared_info != 0 && si->store_mfn != 0 && si->store_evtchn != 0 &&
              si->console.domU.mfn != 0 && si->console.domU.evtchn != 0 &&
              si->mfn_list >= GUEST_VIRT_BASE && si->mfn_list < region_end,
          "start_info_fields", "a field is zero or out of the bootstrap region");

    /* 4. The loader's boot stack lies in the bootstrap region, after our
     *    image (libxc order: image, [p2m], start_info, store, console, page
     *    tables, stack). */
    uint64_t rsp = xen_boot_rsp;
    check(rsp > (uint64_t)_end && rsp <= region_end && (uint64_t)si < rsp,
          "boot_stack_in_region", "rsp %#lx not in (%p, %#lx]", rsp, _end, region_end);

    /* 5. pt_base: VA of the bootstrap L4, page aligned, in the region, and
     *    4-level tables need at least L4 + L3 + L2 + one L1. */
    check((si->pt_base & (PAGE_SIZE - 1)) == 0 && si->pt_base > (uint64_t)_end &&
              si->pt_base < region_end && si->nr_pt_frames >= 4,
          "pt_base_aligned", "pt_base %#lx nr_pt_frames %lu", si->pt_base, si->nr_pt_frames);
}
