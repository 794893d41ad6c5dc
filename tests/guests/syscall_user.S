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
 *  3. syscall 24 with an id beyond the domain's vCPUs in RSI: Hospes'
 *     SYSCALL stub answers vcpu_op itself for a guest kernel, but this is a
 *     user-mode system call and must reach the kernel's callback.
 *  4. syscall USER_NR_DONE with RDI = the value step 1 returned.
 */
#include "syscall_user.h"

    .text
    .globl user_code_start, user_code_end
    .globl user_syscall1_ret, user_pf_insn, user_pf_resume
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
    mov     $USER_NR_24, %eax
    mov     $USER_NR_24_ARG, %esi
    syscall
    mov     %rbx, %rdi
    mov     $USER_NR_DONE, %eax
    syscall
1:  pause
    jmp     1b
user_code_end:

    .section .note.GNU-stack, "", @progbits
