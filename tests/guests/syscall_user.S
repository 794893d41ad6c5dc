/*
 * The user program of the syscall_user kernel. It is copied to a user page
 * at USER_CODE_VA, so it must be position independent. Labels are used by
 * the kernel (as offsets from user_code_start) to check RIPs.
 *
 *  1. syscall USER_NR_HELLO with RDI = USER_MAGIC, RSI = its RFLAGS (as
 *     pushf sees them at CPL 3) and RDX = its RSP: the kernel's syscall
 *     callback compares them with R11 / the frame, and returns a value in
 *     RAX through HYPERVISOR_iret.
 *  2. read the unmapped USER_HOLE_VA: a user-mode #PF, resumed at
 *     user_pf_resume by the kernel.
 *  2a. read, then write the kernel-data slot (KDATA_VA): user space sees a
 *     read-only page of zeros there (the read is kept in R12 for step 4), so
 *     the write is a #PF the kernel skips.
 *  2b. cli, then rdmsr(MSR_SHADOW_GS_BASE): privileged in user mode even
 *     though the kernel may run both (vIOPL 1, and its #GP stub answers
 *     them in the VM): each is a #GP(0) the kernel skips.
 *  3. syscall 24 with an id beyond the domain's vCPUs in RSI: Hospes'
 *     SYSCALL stub answers vcpu_op itself for a guest kernel, but this is a
 *     user-mode system call and must reach the kernel's callback.
 *  4. syscall USER_NR_DONE with RDI = the value step 1 returned, RSI = what
 *     step 2a read.
 */
#include "syscall_user.h"

    .text
    .globl user_code_start, user_code_end
    .globl user_syscall1_ret, user_pf_insn, user_pf_resume, user_cli_insn, user_rdmsr_insn
    .globl user_kdata_store, user_kdata_resume
user_code_start:
    pushfq
    pop     %rsi
    mov     %rsp, %rdx
    mov     $USER_NR_HELLO, %eax
    movabs  $USER_MAGIC, %rdi
    syscall
user_syscall1_ret:
    mov     %rax, %rbx
    mov     $USER_HOLE_VA, %ecx
user_pf_insn:
    mov     (%rcx), %rax
user_pf_resume:
    movabs  $KDATA_VA, %rcx
    mov     (%rcx), %r12
user_kdata_store:
    movq    $0x41, (%rcx)
user_kdata_resume:
    mov     $0xc0000102, %ecx
user_cli_insn:
    cli
user_rdmsr_insn:
    rdmsr
    mov     $USER_NR_24, %eax
    mov     $USER_NR_24_ARG, %esi
    syscall
    mov     %rbx, %rdi
    mov     %r12, %rsi
    mov     $USER_NR_DONE, %eax
    syscall
1:  pause
    jmp     1b
user_code_end:

    .section .note.GNU-stack, "", @progbits
