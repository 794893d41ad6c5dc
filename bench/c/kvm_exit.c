/*
 * kvm_exit: the floor under every Hospes transition -- the round trip of one
 * exit from a KVM guest to a C userspace loop and back.
 *
 * The guest runs in 64-bit long mode at CPL 3 (so that, on this host's PVM
 * flavour of KVM, it executes natively; CPL 0 and real mode are emulated
 * ~1000x slower).  Two guest loops:
 *
 *   out      `1: out %al,$0x10; jmp 1b`  with IOPL=3: each `out` is one
 *            KVM_EXIT_IO; the host just calls KVM_RUN again.
 *   syscall  `1: syscall; jmp 1b` with LSTAR -> `out %al,$0x11`, the shape
 *            of a Hospes hypercall: on the exit the host reads RCX/R11 from
 *            the sync-regs area and writes RIP/RFLAGS back (dirty regs),
 *            as Hospes' return path does.  On PVM `syscall` stays at CPL 3
 *            (platform.md); on VT-x it would enter CPL 0 and the host puts
 *            CS/SS back as well.
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
#define CODE       0x8000
#define STUB       0x9000
#define STACK_TOP  0x20000

#define USER_DS    0x2b
#define USER_CS    0x33

#define PORT_OUT     0x10
#define PORT_SYSCALL 0x11

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

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s out|syscall ITERATIONS ROUNDS\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    int use_syscall = strcmp(mode, "syscall") == 0;
    if (!use_syscall && strcmp(mode, "out") != 0) {
        fprintf(stderr, "kvm_exit: unknown mode %s\n", mode);
        return 2;
    }
    long iters = atol(argv[2]), rounds = atol(argv[3]);

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("open /dev/kvm");
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

    /* Identity map of the first 2 MiB, user-accessible. */
    uint64_t *pml4 = (uint64_t *)(mem + PML4), *pdpt = (uint64_t *)(mem + PDPT);
    uint64_t *pd = (uint64_t *)(mem + PD), *gdt = (uint64_t *)(mem + GDT);
    pml4[0] = PDPT | 0x7;
    pdpt[0] = PD | 0x7;
    pd[0] = 0x0 | 0x87;                      /* 2 MiB page, P|RW|US|PS */
    gdt[1] = gdt_entry(1, 0);                /* 0x08 kernel code */
    gdt[2] = gdt_entry(0, 0);                /* 0x10 kernel data */
    gdt[5] = gdt_entry(0, 3);                /* 0x2b user data */
    gdt[6] = gdt_entry(1, 3);                /* 0x33 user code */
    /* 64-bit TSS descriptor at 0x40 */
    uint64_t tss_base = TSS, tss_limit = 0x67;
    gdt[8] = (tss_limit & 0xffff) | ((tss_base & 0xffffff) << 16) | (0x89ULL << 40) |
             ((tss_base >> 24) << 56);
    gdt[9] = tss_base >> 32;

    static const uint8_t code_out[] = { 0xe6, PORT_OUT, 0xeb, 0xfc };        /* out; jmp -4 */
    static const uint8_t code_sys[] = { 0x0f, 0x05, 0xeb, 0xfc };            /* syscall; jmp -4 */
    static const uint8_t stub[] = { 0xe6, PORT_SYSCALL, 0xf4 };              /* out; hlt */
    memcpy(mem + CODE, use_syscall ? code_sys : code_out, 4);
    memcpy(mem + STUB, stub, sizeof(stub));

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
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
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
    regs.rflags = 0x3002;                    /* IOPL=3, IF=0 */
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");

    if (use_syscall && ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS) <= 0) {
        fprintf(stderr, "kvm_exit: KVM_CAP_SYNC_REGS is missing\n");
        return 2;
    }
    if (use_syscall)
        run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;

    int want_port = use_syscall ? PORT_SYSCALL : PORT_OUT;
    long warmup = iters / 10 + 10;
    for (long r = -1; r < rounds; r++) {
        long n = r < 0 ? warmup : iters;
        double t0 = now_ns();
        for (long i = 0; i < n; i++) {
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
            if (use_syscall) {
                struct kvm_regs *sr = &run->s.regs.regs;
                sr->rip = sr->rcx;
                sr->rflags = sr->r11;
                run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
                if (run->s.regs.sregs.cs.dpl != 3) {  /* VT-x/SVM: syscall entered CPL 0 */
                    run->s.regs.sregs = user_sregs;
                    run->kvm_dirty_regs |= KVM_SYNC_X86_SREGS;
                }
            }
        }
        double t1 = now_ns();
        if (r >= 0)
            printf("BENCH floor_%s ns_per_op=%.1f iters=%ld\n", mode, (t1 - t0) / n, n);
        fflush(stdout);
    }
    return 0;
}
