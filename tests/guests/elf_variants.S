/*
 * The loader metadata of the elf_* variant kernels (build.py VARIANTS): a
 * page-aligned hypercall page the loader must fill (shipped zeroed), named
 * either by a XEN_ELFNOTE_HYPERCALL_PAGE note (elf_shnote, elf_paddr_offset)
 * or by the legacy __xen_guest string (elf_xen_guest), whose HYPERCALL_PAGE
 * is a page number relative to VIRT_BASE (libelf: (n << 12) + VIRT_BASE).
 * .text.hypercall_page comes right after the entry code (lib/guest.ld), so
 * it is the image's second page: VA 0xffffffff80101000, page 0x101.
 */
#include "elfnote.h"

    .section .text.hypercall_page, "ax"
    .balign 4096
    .globl hypercall_page
hypercall_page:
    .fill 4096, 1, 0

#ifdef ELF_VARIANT_XEN_GUEST
    /* Not allocated: a loader reads it from the section headers. */
    .section __xen_guest, "", @progbits
    .ascii "GUEST_OS=hospes-test,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,"
    .ascii "ELF_PADDR_OFFSET=0xffffffff80000000,HYPERCALL_PAGE=0x101,LOADER=generic"
    .byte 0
#else
    XEN_NOTE XEN_ELFNOTE_HYPERCALL_PAGE, .quad hypercall_page
#endif

    .section .note.GNU-stack, "", @progbits
