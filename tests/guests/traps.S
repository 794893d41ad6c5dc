/*
 * Fault probes for the traps kernel. Each probe records, right before its
 * faulting instruction, the instruction's address, the resume address, RSP
 * and RFLAGS (CF set with stc so the frame's arithmetic flags are
 * predictable), and loads RCX/R11 with magic values: the bounce frame must
 * carry them and HYPERVISOR_iret must restore them. The handler resumes at
 * label 2 (probe_resume_rip), where the probe stores RCX/R11 as seen after
 * the return.
 */
#define RCX_MAGIC 0x1111222233334444
#define R11_MAGIC 0x5555666677778888

.macro PROBE name, insn:vararg
    .globl \name
\name:
    lea     1f(%rip), %r8
    mov     %r8, probe_fault_rip(%rip)
    lea     2f(%rip), %r8
    mov     %r8, probe_resume_rip(%rip)
    movabs  $RCX_MAGIC, %rcx
    movabs  $R11_MAGIC, %r11
    mov     %rsp, probe_rsp(%rip)
    stc
    pushfq
    pop     %r8
    mov     %r8, probe_rflags(%rip)
1:  \insn
2:  mov     %rcx, probe_rcx_after(%rip)
    mov     %r11, probe_r11_after(%rip)
    ret
.endm

    .text
    PROBE probe_div, div %rdi                 /* #DE with rdi = 0 */
    PROBE probe_int3, int3                    /* #BP, a trap: RIP after */
    PROBE probe_ud2, ud2                      /* #UD (next byte is not "xen") */
    PROBE probe_load, mov (%rdi), %rax        /* #GP or #PF, by address */
    PROBE probe_store, mov %rax, (%rdi)       /* #PF on write */
    PROBE probe_int41, int $0x41              /* no DPL>=1 gate: #GP(0x41<<3|2) */

    .section .note.GNU-stack, "", @progbits
