/*
 * The hypercall page of the hypercall_page kernel: one page-aligned page in
 * the image, announced with XEN_ELFNOTE_HYPERCALL_PAGE (its VA). The loader
 * fills it with 128 stubs of 32 bytes (pv-abi.md §4.2); we ship it zeroed so
 * an unfilled page is detected instead of executed.
 */
#include "elfnote.h"

    .section .text.hypercall_page, "ax"
    .balign 4096
    .globl hypercall_page
hypercall_page:
    .fill 4096, 1, 0

    XEN_NOTE XEN_ELFNOTE_HYPERCALL_PAGE, .quad hypercall_page

    .section .note.GNU-stack, "", @progbits
