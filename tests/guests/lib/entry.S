/*
 * Entry point, exception/callback entry stubs and the HYPERVISOR_iret
 * return path of the Hospes test kernels.
 *
 * Start of day (pv-abi.md §2.3): RIP = ENTRY note, RSI = VA of start_info,
 * RSP = end of the loader's boot stack page, events masked. We keep RSI and
 * RSP for the checks, zero .bss and move to our own stack.
 *
 * Bounce frames (pv-abi.md §6.2): when Xen delivers an exception, an event
 * upcall or a user-mode syscall, RSP points at
 *     RCX, R11, [error code], RIP, CS (saved upcall mask in bits 32-39),
 *     RFLAGS, RSP, SS
 * and the live RCX/R11 are garbage. The stubs pop RCX and R11 (so they hold
 * the interrupted values again, as in Linux's xen_asm_exc_* stubs), push a
 * 0 error code where the frame has none plus the vector, save the GPRs and
 * call trap_dispatch(struct regs *). Return is HYPERVISOR_iret (§4.3):
 * with RIP..SS on the stack, push the flags word (0), RCX, R11, RAX and
 * `syscall` with RAX = 23; the hypervisor restores all of them.
 */
#include "xen.h"

    .section .text.entry, "ax"
    .globl _start
_start:
    cld
    mov     %rsi, %r12                  /* start_info */
    mov     %rsp, %r13                  /* loader's boot stack */
    lea     _bss_start(%rip), %rdi
    lea     _bss_end(%rip), %rcx
    sub     %rdi, %rcx
    xor     %eax, %eax
    rep stosb
    lea     boot_stack_top(%rip), %rsp
    mov     %r12, xen_start_info(%rip)
    mov     %r13, xen_boot_rsp(%rip)
    call    kernel_entry                /* does not return */
    ud2

    .text

/* Exception vectors the kernels install (xen.h: trap_info). */
.macro TRAP_STUB vec, has_err
    .globl trap_entry_\vec
trap_entry_\vec:
    mov     %rsp, trap_entry_rsp(%rip)
    pop     %rcx
    pop     %r11
    .if \has_err == 0
    push    $0
    .endif
    push    $\vec
    jmp     common_entry
.endm

    TRAP_STUB 0, 0      /* #DE */
    TRAP_STUB 1, 0      /* #DB */
    TRAP_STUB 3, 0      /* #BP */
    TRAP_STUB 4, 0      /* #OF */
    TRAP_STUB 5, 0      /* #BR */
    TRAP_STUB 6, 0      /* #UD */
    TRAP_STUB 7, 0      /* #NM */
    TRAP_STUB 10, 1     /* #TS */
    TRAP_STUB 11, 1     /* #NP */
    TRAP_STUB 12, 1     /* #SS */
    TRAP_STUB 13, 1     /* #GP */
    TRAP_STUB 14, 1     /* #PF */
    TRAP_STUB 16, 0     /* #MF */
    TRAP_STUB 17, 1     /* #AC */
    TRAP_STUB 18, 0     /* #MC */
    TRAP_STUB 19, 0     /* #XM */

/* Event upcall (CALLBACKTYPE_event): same frame as an exception, no error code. */
    .globl xen_event_entry
xen_event_entry:
    mov     %rsp, trap_entry_rsp(%rip)
    pop     %rcx
    pop     %r11
    push    $0
    push    $256                        /* VEC_EVENT */
    jmp     common_entry

/* User-mode SYSCALL (CALLBACKTYPE_syscall): frame on the kernel stack given to
 * stack_switch; RCX = user return RIP, R11 = user RFLAGS. */
    .globl xen_syscall_entry
xen_syscall_entry:
    mov     %rsp, trap_entry_rsp(%rip)
    pop     %rcx
    pop     %r11
    push    $0
    push    $257                        /* VEC_SYSCALL */
    jmp     common_entry

/* Failsafe callback: a segment reload failed in the hypervisor. The frame has
 * DS/ES/FS/GS after RCX/R11 (§6.6); none of our kernels expects one, so
 * report and stop. */
    .globl xen_failsafe_entry
xen_failsafe_entry:
    mov     %rsp, %rdi
    and     $-16, %rsp
    cld
    call    failsafe_handler            /* does not return */
    ud2

common_entry:
    push    %rax
    push    %rbx
    push    %rcx
    push    %rdx
    push    %rsi
    push    %rdi
    push    %rbp
    push    %r8
    push    %r9
    push    %r10
    push    %r11
    push    %r12
    push    %r13
    push    %r14
    push    %r15
    mov     %rsp, %rdi                  /* struct regs * */
    mov     %rsp, %rbx
    and     $-16, %rsp                  /* C ABI alignment */
    cld
    call    trap_dispatch
    mov     %rbx, %rsp
    cmp     $1, %eax                    /* TRAP_LEAVE_USER */
    je      user_leave
    pop     %r15
    pop     %r14
    pop     %r13
    pop     %r12
    pop     %r11
    pop     %r10
    pop     %r9
    pop     %r8
    pop     %rbp
    pop     %rdi
    pop     %rsi
    pop     %rdx
    pop     %rcx
    pop     %rbx
    pop     %rax
    add     $16, %rsp                   /* vector, error code */
    push    $0                          /* iret flags: VGCF_in_syscall clear */
    jmp     *xen_iret_target(%rip)

/* HYPERVISOR_iret as Linux 6.1's xen_iret does it (flags word already pushed). */
    .globl xen_iret_syscall
xen_iret_syscall:
    push    %rcx
    push    %r11
    push    %rax
    mov     $__HYPERVISOR_iret, %eax
    syscall
    ud2                                 /* iret does not return here */

/* void run_user(struct iret_context *ctx): HYPERVISOR_iret with ctx (CS with
 * RPL 3 switches to the user page table); comes back through user_leave when
 * a handler returns TRAP_LEAVE_USER, on the kernel stack it left from. */
    .globl run_user
run_user:
    push    %rbx
    push    %rbp
    push    %r12
    push    %r13
    push    %r14
    push    %r15
    mov     %rsp, user_saved_rsp(%rip)
    mov     %rdi, %rsp
    mov     $__HYPERVISOR_iret, %eax
    syscall
    ud2

user_leave:
    mov     user_saved_rsp(%rip), %rsp
    pop     %r15
    pop     %r14
    pop     %r13
    pop     %r12
    pop     %rbp
    pop     %rbx
    ret

/* Entry stub addresses by vector, for trap_info tables (0 = none). */
    .section .rodata
    .balign 8
    .globl trap_entry_table
trap_entry_table:
    .quad trap_entry_0, trap_entry_1, 0, trap_entry_3
    .quad trap_entry_4, trap_entry_5, trap_entry_6, trap_entry_7
    .quad 0, 0, trap_entry_10, trap_entry_11
    .quad trap_entry_12, trap_entry_13, trap_entry_14, 0
    .quad trap_entry_16, trap_entry_17, trap_entry_18, trap_entry_19

    .data
    .balign 8
    .globl xen_iret_target
xen_iret_target:
    .quad xen_iret_syscall

    .bss
    .balign 16
user_saved_rsp:
    .skip 8
    .balign 16
boot_stack:
    .skip 32768
boot_stack_top:

    .section .note.GNU-stack, "", @progbits
