/*
 * elf_shnote, elf_xen_guest, elf_paddr_offset: one kernel, three ways of
 * telling the loader about itself (build.py VARIANTS), each of which Xen's
 * libelf accepts (xen/common/libelf/libelf-dominfo.c):
 *
 *   elf_shnote        Xen notes only in the SHT_NOTE section .note.Xen (no
 *                     PT_NOTE program header): libelf's fallback when no
 *                     note segment holds Xen notes.
 *   elf_xen_guest     no notes, only the legacy "__xen_guest" section string
 *                     (GUEST_OS=...,XEN_VER=...,VIRT_BASE=...,
 *                     ELF_PADDR_OFFSET=...,HYPERCALL_PAGE=<page>,LOADER=...).
 *   elf_paddr_offset  notes with PADDR_OFFSET 0x40000000: every p_paddr is
 *                     0x40000000 above where the loader places it, far
 *                     beyond the domain's memory.
 *
 * Each checks that it was placed where it was linked (initialised data
 * intact, .bss zero), that the loader filled the hypercall page the
 * metadata names at the right address, and that the page works.
 */
#include "guest.h"

extern char hypercall_page[];

/* Initialised data with a pattern a misplaced image would not show. */
static volatile uint64_t pattern[64] = {
    [0] = 0x0123456789abcdefUL, [31] = 0xfedcba9876543210UL, [63] = 0x5a5a5a5aa5a5a5a5UL,
};
static volatile uint64_t zeroes[64];

#define HYPERCALL_STUB(n) ((long (*)(unsigned long, unsigned long))(hypercall_page + 32 * (n)))

void guest_main(void)
{
    struct start_info *si = xen_start_info;

    check(pattern[0] == 0x0123456789abcdefUL && pattern[31] == 0xfedcba9876543210UL &&
              pattern[63] == 0x5a5a5a5aa5a5a5a5UL && pattern[1] == 0 && zeroes[0] == 0 &&
              zeroes[63] == 0,
          "image_placed_as_linked", "data %#lx %#lx %#lx, bss %#lx %#lx",
          pattern[0], pattern[31], pattern[63], zeroes[0], zeroes[63]);

    /* The page the metadata names, 0x101 pages above VIRT_BASE. */
    uint64_t page = (uint64_t)hypercall_page;
    const uint8_t *stub = (const uint8_t *)hypercall_page + 32 * __HYPERVISOR_xen_version;
    /* push %rcx; push %r11; mov $17,%eax; syscall (pv-abi.md §4.2). */
    static const uint8_t want[] = { 0x51, 0x41, 0x53, 0xb8, 17, 0, 0, 0, 0x0f, 0x05 };
    check(page == GUEST_VIRT_BASE + 0x101000 && memcmp(stub, want, sizeof(want)) == 0,
          "hypercall_page_filled", "page at %#lx (want %#lx), stub 17 starts %02x %02x %02x %02x",
          page, GUEST_VIRT_BASE + 0x101000, stub[0], stub[1], stub[2], stub[3]);

    long direct = HYPERVISOR_xen_version(XENVER_version, 0);
    long paged = page == GUEST_VIRT_BASE + 0x101000 && stub[0] == 0x51
                     ? HYPERCALL_STUB(__HYPERVISOR_xen_version)(XENVER_version, 0)
                     : -1;
    check(direct > 0 && paged == direct, "hypercall_page_call",
          "through the page %ld, direct %ld", paged, direct);

    /* libxc's order after the image: [p2m,] start_info, rings, page tables. */
    check((uint64_t)si > (uint64_t)_end && si->pt_base > (uint64_t)si &&
              si->mfn_list >= (uint64_t)_end && si->nr_pages * PAGE_SIZE >= 64UL << 20,
          "boot_data_after_image", "image ends %p, start_info %p, pt_base %#lx, mfn_list %#lx",
          _end, si, si->pt_base, si->mfn_list);
}
