/*
 * The Xen ELF notes every test kernel carries (elfnote.h numbers).
 *
 * A Xen PV64 loader (libelf) accepts the image because LOADER starts with
 * "generic" and XEN_VERSION starts with "xen-3.0". VIRT_BASE and
 * PADDR_OFFSET = 0 mean a segment with p_paddr P is placed at VA
 * VIRT_BASE + P, which is exactly where lib/guest.ld links it. The kernel
 * that wants a hypercall page adds its own HYPERCALL_PAGE note.
 */
#include "elfnote.h"

#ifndef HOSPES_PADDR_OFFSET
#define HOSPES_PADDR_OFFSET 0
#endif

#ifndef HOSPES_NO_XEN_NOTES   /* a variant that carries only __xen_guest */
    XEN_NOTE XEN_ELFNOTE_GUEST_OS,     .asciz "hospes-test"
    XEN_NOTE XEN_ELFNOTE_LOADER,       .asciz "generic"
    XEN_NOTE XEN_ELFNOTE_XEN_VERSION,  .asciz "xen-3.0"
    XEN_NOTE XEN_ELFNOTE_VIRT_BASE,    .quad GUEST_VIRT_BASE
    XEN_NOTE XEN_ELFNOTE_PADDR_OFFSET, .quad HOSPES_PADDR_OFFSET
    XEN_NOTE XEN_ELFNOTE_ENTRY,        .quad _start
    /* '!' = required. Deliberately not NUL-terminated, like Linux's. */
    XEN_NOTE XEN_ELFNOTE_FEATURES,     .ascii "!writable_page_tables"
#endif

    .section .note.GNU-stack, "", @progbits
