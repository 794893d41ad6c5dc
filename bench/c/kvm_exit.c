/*
 * kvm_exit: the floors under every Hospes transition -- each KVM path Hospes
 * uses, driven by a C userspace loop with nothing else in the way.
 *
 * The guest runs in 64-bit long mode at CPL 3 (so that, on this host's PVM
 * flavour of KVM, it executes natively; CPL 0 and real mode are emulated
 * ~1000x slower).  Modes, each one guest loop:
 *
 *   out         `1: out %al,$0x10; jmp 1b`  with IOPL=3: each `out` is one
 *               KVM_EXIT_IO; the host just calls KVM_RUN again (plain exit).
 *   syscall     `1: syscall; jmp 1b` with LSTAR -> `out %al,$0x11`, the shape
 *               of a Hospes hypercall: on the exit the host reads RCX/R11 from
 *               the sync-regs area and writes RIP/RFLAGS back (dirty regs),
 *               as Hospes' return path does.  On PVM `syscall` stays at CPL 3
 *               (platform.md); on VT-x it would enter CPL 0 and the host puts
 *               CS/SS back as well.
 *   sregs       syscall, plus a guest mode switch as PvVcpu._resume makes one:
 *               CS, SS and CR3 written through sync regs (KVM_SYNC_X86_SREGS
 *               dirty), alternating between two user CS/SS pairs and two
 *               page-table roots (KVM drops its cached translations).
 *   trap        `1: int3; jmp 1b` through a DPL-3 IDT gate to a CPL-0 stub
 *               `push $0; push $3; out %al,$0x13; add $16,%rsp; iretq`,
 *               Hospes' exception stub: exception delivery inside KVM, an
 *               exit, and the stub's (emulated) iretq back to CPL 3.
 *   trap_sregs  trap, but the host resumes as Hospes does after bouncing an
 *               exception across a mode switch: RIP/RSP/RFLAGS and CS/SS/CR3
 *               through sync regs (the stub's iretq never runs).
 *   writer      syscall, but the host resumes in a CPL-0 copy of Hospes'
 *               one-store writer (`writer1`: 8 instructions, one store through
 *               a control block, iretq to the frame), CS/SS set to ring 0
 *               through sync regs as PvVcpu._enter_writer's caller does.
 *   cpuid       `1: xor %eax,%eax; cpuid; dec %r8; jnz 1b; out` -- an
 *               instruction KVM handles itself, no exit to userspace (the
 *               in-KVM trap); one exit per round of ITERATIONS.
 *   idt         `1: int3; dec %r8; jnz 1b; out` with the gate's stub a lone
 *               `iretq`: an exception delivered and returned entirely inside
 *               the VM (CPL 3 -> 0 -> 3, one emulated instruction), no exit.
 *
 * Usage: kvm_exit MODE ITERATIONS ROUNDS
 * Prints one line per round:
 *   BENCH floor_<mode> ns_per_op=<float> iters=<n>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE   0x200000UL
#define PML4       0x1000
#define PDPT       0x2000
#define PD         0x3000
#define GDT        0x4000
#define TSS        0x5000
#define PML4_ALT   0x6000               /* a second root over the same tables */
#define IDT        0x7000
#define CODE       0x8000
#define STUB       0x9000               /* LSTAR */
#define TRAP_STUB  0xa000               /* IDT vector 3 in trap modes */
#define IRET_STUB  0xa100               /* IDT vector 3 in idt mode */
#define WRITER     0xb000
#define STORE_AT   0x1b000              /* the writer's one store */
#define WFRAME     0x1c000              /* writer RSP: iretq frame + control block */
#define RING0_TOP  0x1f000              /* TSS.RSP0 */
#define STACK_TOP  0x20000

#define KERNEL_CS  0x08
#define KERNEL_DS  0x10
#define USER_DS2   0x23
#define USER_DS    0x2b
#define USER_CS    0x33
#define USER_CS2   0x3b

#define PORT_OUT     0x10
#define PORT_SYSCALL 0x11
#define PORT_ROUND   0x12
#define PORT_TRAP    0x13

#define USER_RFLAGS 0x3002              /* IOPL=3, IF=0 */

enum mode { M_OUT, M_SYSCALL, M_SREGS, M_TRAP, M_TRAP_SREGS, M_WRITER, M_CPUID, M_IDT };
static const char *const mode_names[] = {
    "out", "syscall", "sregs", "trap", "trap_sregs", "writer", "cpuid", "idt",
};
#define N_MODES (sizeof(mode_names) / sizeof(mode_names[0]))

static void die(const char *what)
{
    fprintf(stderr, "kvm_exit: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void seg(struct kvm_segment *s, uint16_t sel, int code, int dpl)
{
    memset(s, 0, sizeof(*s));
    s->base = 0;
    s->limit = 0xffffffff;
    s->selector = sel;
    s->type = code ? 0xb : 0x3;
    s->present = 1;
    s->dpl = dpl;
    s->db = code ? 0 : 1;
    s->s = 1;
    s->l = code ? 1 : 0;
    s->g = 1;
}

static uint64_t gdt_entry(int code, int dpl)
{
    /* flat, present, 4 KiB granularity; L for code, D/B for data */
    uint64_t access = 0x90 | ((uint64_t)dpl << 5) | (code ? 0xa : 0x2);
    uint64_t flags = code ? 0xa : 0xc;
    return 0xffffULL | (access << 40) | (0xfULL << 48) | (flags << 52);
}

static void idt_gate(uint8_t *idt, int vec, uint64_t handler, int dpl)
{
    uint64_t lo = (handler & 0xffff) | ((uint64_t)KERNEL_CS << 16) |
                  ((uint64_t)(0x8e | (dpl << 5)) << 40) | ((handler >> 16) << 48);
    uint64_t hi = handler >> 32;
    memcpy(idt + vec * 16, &lo, 8);
    memcpy(idt + vec * 16 + 8, &hi, 8);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* One of two guest "modes" the sregs modes alternate between: the same flat
 * CPL-3 segments under other selectors, and another page-table root. */
struct guest_mode { struct kvm_segment cs, ss; uint64_t cr3; };

static void switch_mode(struct kvm_run *run, const struct guest_mode *m)
{
    run->s.regs.sregs.cs = m->cs;
    run->s.regs.sregs.ss = m->ss;
    run->s.regs.sregs.cr3 = m->cr3;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODE ITERATIONS ROUNDS (MODE:", argv[0]);
        for (unsigned m = 0; m < N_MODES; m++)
            fprintf(stderr, " %s", mode_names[m]);
        fprintf(stderr, ")\n");
        return 2;
    }
    int mode = -1;
    for (unsigned m = 0; m < N_MODES; m++)
        if (strcmp(argv[1], mode_names[m]) == 0)
            mode = (int)m;
    if (mode < 0) {
        fprintf(stderr, "kvm_exit: unknown mode %s\n", argv[1]);
        return 2;
    }
    long iters = atol(argv[2]), rounds = atol(argv[3]);
    if (iters <= 0 || rounds <= 0) {
        fprintf(stderr, "kvm_exit: ITERATIONS and ROUNDS must be positive\n");
        return 2;
    }

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("open /dev/kvm");
    if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS) <= 0) {
        fprintf(stderr, "kvm_exit: KVM_CAP_SYNC_REGS is missing\n");
        return 2;
    }
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE,
        .userspace_addr = (uint64_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");

    /* Identity map of the first 2 MiB, user-accessible, under two roots. */
    uint64_t *pml4 = (uint64_t *)(mem + PML4), *pml4_alt = (uint64_t *)(mem + PML4_ALT);
    uint64_t *pdpt = (uint64_t *)(mem + PDPT), *pd = (uint64_t *)(mem + PD), *gdt = (uint64_t *)(mem + GDT);
    pml4[0] = PDPT | 0x7;
    pml4_alt[0] = PDPT | 0x7;
    pdpt[0] = PD | 0x7;
    pd[0] = 0x0 | 0x87;                      /* 2 MiB page, P|RW|US|PS */
    gdt[1] = gdt_entry(1, 0);                /* 0x08 kernel code */
    gdt[2] = gdt_entry(0, 0);                /* 0x10 kernel data */
    gdt[4] = gdt_entry(0, 3);                /* 0x23 user data (second mode) */
    gdt[5] = gdt_entry(0, 3);                /* 0x2b user data */
    gdt[6] = gdt_entry(1, 3);                /* 0x33 user code */
    gdt[7] = gdt_entry(1, 3);                /* 0x3b user code (second mode) */
    /* 64-bit TSS descriptor at 0x40; RSP0 for exceptions taken at CPL 3 */
    uint64_t tss_base = TSS, tss_limit = 0x67;
    gdt[8] = (tss_limit & 0xffff) | ((tss_base & 0xffffff) << 16) | (0x89ULL << 40) |
             ((tss_base >> 24) << 56);
    gdt[9] = tss_base >> 32;
    uint64_t rsp0 = RING0_TOP;
    memcpy(mem + TSS + 4, &rsp0, 8);

    static const uint8_t code_out[] = { 0xe6, PORT_OUT, 0xeb, 0xfc };        /* out; jmp -4 */
    static const uint8_t code_sys[] = { 0x0f, 0x05, 0xeb, 0xfc };            /* syscall; jmp -4 */
    static const uint8_t code_int3[] = { 0xcc, 0xeb, 0xfd };                 /* int3; jmp -3 */
    static const uint8_t code_cpuid[] = {                                    /* cpuid x r8, out */
        0x31, 0xc0, 0x0f, 0xa2, 0x49, 0xff, 0xc8, 0x75, 0xf7, 0xe6, PORT_ROUND, 0xeb, 0xf3 };
    static const uint8_t code_idt[] = {                                      /* int3 x r8, out */
        0xcc, 0x49, 0xff, 0xc8, 0x75, 0xfa, 0xe6, PORT_ROUND, 0xeb, 0xf6 };
    static const uint8_t stub[] = { 0xe6, PORT_SYSCALL, 0xf4 };              /* out; hlt */
    static const uint8_t trap_stub[] = {                 /* push $0; push $3; out; add $16,%rsp; iretq */
        0x6a, 0x00, 0x6a, 0x03, 0xe6, PORT_TRAP, 0x48, 0x83, 0xc4, 0x10, 0x48, 0xcf };
    static const uint8_t iret_stub[] = { 0x48, 0xcf };                       /* iretq */
    static const uint8_t writer1[] = {   /* Hospes' writer1: one store from the control block, iretq */
        0x50, 0x57, 0x48, 0x8b, 0x7c, 0x24, 0x50, 0x48, 0x8b, 0x44, 0x24, 0x58,
        0x48, 0x89, 0x07, 0x5f, 0x58, 0x48, 0xcf };
    switch (mode) {
    case M_OUT: memcpy(mem + CODE, code_out, sizeof(code_out)); break;
    case M_SYSCALL: case M_SREGS: case M_WRITER: memcpy(mem + CODE, code_sys, sizeof(code_sys)); break;
    case M_TRAP: case M_TRAP_SREGS: memcpy(mem + CODE, code_int3, sizeof(code_int3)); break;
    case M_CPUID: memcpy(mem + CODE, code_cpuid, sizeof(code_cpuid)); break;
    case M_IDT: memcpy(mem + CODE, code_idt, sizeof(code_idt)); break;
    }
    memcpy(mem + STUB, stub, sizeof(stub));
    memcpy(mem + TRAP_STUB, trap_stub, sizeof(trap_stub));
    memcpy(mem + IRET_STUB, iret_stub, sizeof(iret_stub));
    memcpy(mem + WRITER, writer1, sizeof(writer1));
    idt_gate(mem + IDT, 3, mode == M_IDT ? IRET_STUB : TRAP_STUB, 3);

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < 0)
        die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");

    /* CPUID: whatever KVM supports (needed for long mode, SYSCALL). */
    struct { struct kvm_cpuid2 c; struct kvm_cpuid_entry2 e[256]; } cpuid = { .c.nent = 256 };
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0)
        die("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0)
        die("KVM_SET_CPUID2");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    sregs.cr0 = 0x80050033;                  /* PG WP NE ET MP PE, AM */
    sregs.cr3 = PML4;
    sregs.cr4 = 0x620;                       /* PAE OSFXSR OSXMMEXCPT */
    sregs.efer = 0xd01;                      /* LME LMA SCE NXE */
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 16 * 8 - 1;
    sregs.idt.base = IDT;
    sregs.idt.limit = 16 * 16 - 1;
    seg(&sregs.cs, USER_CS, 1, 3);
    seg(&sregs.ss, USER_DS, 0, 3);
    seg(&sregs.ds, USER_DS, 0, 3);
    seg(&sregs.es, USER_DS, 0, 3);
    seg(&sregs.fs, USER_DS, 0, 3);
    seg(&sregs.gs, USER_DS, 0, 3);
    memset(&sregs.tr, 0, sizeof(sregs.tr));
    sregs.tr.base = TSS;
    sregs.tr.limit = 0x67;
    sregs.tr.selector = 0x40;
    sregs.tr.type = 0xb;
    sregs.tr.present = 1;
    memset(&sregs.ldt, 0, sizeof(sregs.ldt));
    sregs.ldt.unusable = 1;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    struct kvm_sregs user_sregs = sregs;
    struct guest_mode modes[2];
    modes[0].cs = sregs.cs;
    modes[0].ss = sregs.ss;
    modes[0].cr3 = PML4;
    seg(&modes[1].cs, USER_CS2, 1, 3);
    seg(&modes[1].ss, USER_DS2, 0, 3);
    modes[1].cr3 = PML4_ALT;
    struct kvm_segment ring0_cs, ring0_ss;
    seg(&ring0_cs, KERNEL_CS, 1, 0);
    seg(&ring0_ss, KERNEL_DS, 0, 0);

    struct { struct kvm_msrs m; struct kvm_msr_entry e[4]; } msrs = { .m.nmsrs = 4 };
    msrs.e[0].index = 0xc0000081; msrs.e[0].data = (0x23ULL << 48) | (0x08ULL << 32); /* STAR */
    msrs.e[1].index = 0xc0000082; msrs.e[1].data = STUB;                            /* LSTAR */
    msrs.e[2].index = 0xc0000083; msrs.e[2].data = STUB;                            /* CSTAR */
    msrs.e[3].index = 0xc0000084; msrs.e[3].data = 0;                               /* SFMASK */
    if (ioctl(vcpu, KVM_SET_MSRS, &msrs) != 4)
        die("KVM_SET_MSRS");

    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = CODE;
    regs.rsp = STACK_TOP;
    regs.rflags = USER_RFLAGS;
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");

    /* Hospes keeps regs and sregs valid on every exit; so do all modes. */
    run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;

    int in_kvm = mode == M_CPUID || mode == M_IDT;      /* one exit per round */
    int want_port = mode == M_OUT ? PORT_OUT : in_kvm ? PORT_ROUND :
                    (mode == M_TRAP || mode == M_TRAP_SREGS) ? PORT_TRAP : PORT_SYSCALL;
    long warmup = iters / 10 + 10;
    unsigned flip = 0;
    uint64_t stored = 0;
    for (long r = -1; r < rounds; r++) {
        long n = r < 0 ? warmup : iters;
        long runs = in_kvm ? 1 : n;
        if (in_kvm) {     /* the round's count in R8 (the sync area is empty before the first run) */
            if (ioctl(vcpu, KVM_GET_REGS, &regs) < 0)
                die("KVM_GET_REGS");
            regs.r8 = (uint64_t)n;
            if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
                die("KVM_SET_REGS");
            run->kvm_dirty_regs = 0;
        }
        double t0 = now_ns();
        for (long i = 0; i < runs; i++) {
            if (ioctl(vcpu, KVM_RUN, 0) < 0) {
                if (errno == EINTR) { i--; continue; }
                die("KVM_RUN");
            }
            if (run->exit_reason != KVM_EXIT_IO || run->io.port != want_port) {
                fprintf(stderr, "kvm_exit: unexpected exit %u (port %#x) at iteration %ld, rip %#llx\n",
                        run->exit_reason, run->exit_reason == KVM_EXIT_IO ? run->io.port : 0, i,
                        (unsigned long long)run->s.regs.regs.rip);
                return 3;
            }
            struct kvm_regs *sr = &run->s.regs.regs;
            switch (mode) {
            case M_SYSCALL:
                sr->rip = sr->rcx;
                sr->rflags = sr->r11;
                run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
                if (run->s.regs.sregs.cs.dpl != 3) {  /* VT-x/SVM: syscall entered CPL 0 */
                    run->s.regs.sregs = user_sregs;
                    run->kvm_dirty_regs |= KVM_SYNC_X86_SREGS;
                }
                break;
            case M_SREGS:
                sr->rip = sr->rcx;
                sr->rflags = sr->r11;
                flip ^= 1;
                switch_mode(run, &modes[flip]);
                run->kvm_dirty_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
                break;
            case M_TRAP_SREGS:
                sr->rip = CODE;
                sr->rsp = STACK_TOP;
                sr->rflags = USER_RFLAGS;
                flip ^= 1;
                switch_mode(run, &modes[flip]);
                run->kvm_dirty_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
                break;
            case M_WRITER: {
                /* iretq frame, then cr3, invlpg, count, then (target, value) */
                uint64_t frame[10] = { sr->rcx, USER_CS, sr->r11, sr->rsp, USER_DS, 0, 0, 1,
                                       STORE_AT, ++stored };
                memcpy(mem + WFRAME, frame, sizeof(frame));
                sr->rip = WRITER;
                sr->rsp = WFRAME;
                run->s.regs.sregs.cs = ring0_cs;
                run->s.regs.sregs.ss = ring0_ss;
                run->kvm_dirty_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
                break;
            }
            default:                              /* out, trap: resume where it stopped */
                break;
            }
        }
        double t1 = now_ns();
        if (mode == M_WRITER && stored > 1) {
            uint64_t seen;
            memcpy(&seen, mem + STORE_AT, 8);
            if (seen != stored - 1) {             /* the last store is done on the next KVM_RUN */
                fprintf(stderr, "kvm_exit: writer stored %llu, want %llu\n",
                        (unsigned long long)seen, (unsigned long long)(stored - 1));
                return 3;
            }
        }
        if (r >= 0)
            printf("BENCH floor_%s ns_per_op=%.1f iters=%ld\n", mode_names[mode], (t1 - t0) / n, n);
        fflush(stdout);
    }
    return 0;
}
