/*
 * XEN_NOTE: emit one Xen ELF note (owner "Xen") into .note.Xen, which the
 * linker script puts in a PT_NOTE segment. Layout per the ELF spec: namesz,
 * descsz, type, name padded to 4, desc padded to 4. descsz is the exact
 * size of what `desc` emits, so a string written with .ascii is not
 * NUL-terminated (Linux's FEATURES note is like that; loaders must parse
 * by descsz).
 *
 *     XEN_NOTE XEN_ELFNOTE_LOADER, .asciz "generic"
 *     XEN_NOTE XEN_ELFNOTE_ENTRY,  .quad _start
 */
#ifndef HOSPES_GUEST_ELFNOTE_H
#define HOSPES_GUEST_ELFNOTE_H
#ifdef __ASSEMBLER__
#include "xen.h"

.macro XEN_NOTE type, desc:vararg
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 2f - 1f
    .long 4f - 3f
    .long \type
1:  .asciz "Xen"
2:  .balign 4
3:  \desc
4:  .balign 4
    .popsection
.endm

#endif
#endif
