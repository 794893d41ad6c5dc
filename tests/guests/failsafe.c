/*
 * failsafe: HYPERVISOR_iret to kernel mode with a stack selector that has no
 * descriptor. Xen cannot load it and delivers the failsafe callback instead
 * (pv-abi.md §6.6), with a frame of RCX, R11, DS, ES, FS, GS, RIP, CS, RFLAGS,
 * RSP, SS built on the stack the guest was returning to.
 */
#include "guest.h"

#define BAD_SS 0x4b            /* guest GDT entry 9: this kernel loads no GDT */

void failsafe_probe(uint64_t target_rsp);
void failsafe_probe_target(void);
void failsafe_seen(const uint64_t *frame);

/* The iret frame (struct iret_context): rax, r11, rcx, flags, rip, cs,
 * rflags, rsp, ss. CS with RPL 0 means "stay in kernel mode". */
__asm__(
    ".text\n"
    ".globl failsafe_probe\n"
    "failsafe_probe:\n"
    "    push $" "0x4b" "\n"              /* ss (bad) */
    "    push %rdi\n"                       /* rsp */
    "    push $0x202\n"                     /* rflags */
    "    push $0xe030\n"                    /* cs */
    "    lea failsafe_probe_target(%rip), %rax\n"
    "    push %rax\n"                       /* rip */
    "    push $0\n"                         /* flags */
    "    push %rcx\n"
    "    push %r11\n"
    "    push %rax\n"
    "    mov $23, %eax\n"                   /* __HYPERVISOR_iret */
    "    syscall\n"
    ".globl failsafe_probe_target\n"
    "failsafe_probe_target:\n"
    "    ud2\n"                             /* must never run: SS was bad */
    ".globl failsafe_entry\n"
    "failsafe_entry:\n"
    "    mov %rsp, %rdi\n"
    "    and $-16, %rsp\n"
    "    call failsafe_seen\n"
    "1:  jmp 1b\n");

void failsafe_entry(void);
static uint64_t stack[512] __attribute__((aligned(16)));

void failsafe_seen(const uint64_t *f)
{
    /* f: rcx r11 ds es fs gs rip cs rflags rsp ss */
    int ok = f[6] == (uint64_t)failsafe_probe_target && (f[7] & 0xffff) == 0xe030 &&
             f[9] == (uint64_t)&stack[512] && (f[10] & 0xffff) == (BAD_SS | 3);
    check(ok, "failsafe_frame", "rip %#lx cs %#lx rsp %#lx ss %#lx", f[6], f[7], f[9], f[10]);
    finish();
}

void guest_main(void)
{
    struct callback_register fs = {
        .type = CALLBACKTYPE_failsafe,
        .flags = CALLBACKF_mask_events,
        .address = (uint64_t)failsafe_entry,
    };
    long rc = HYPERVISOR_callback_op(CALLBACKOP_register, &fs);
    check(rc == 0, "failsafe_registered", "callback_op returned %ld", rc);
    failsafe_probe((uint64_t)&stack[512]);
    fail("failsafe_frame", "HYPERVISOR_iret returned");
}
