/*
 * The Hospes test kernels' tiny runtime (the lib/ directory).
 *
 * Every test kernel defines `void guest_main(void)`; the runtime calls it
 * after zeroing .bss and switching to its own boot stack, and calls
 * finish() if it returns. Results go to the console as lines:
 *
 *     PASS <name>
 *     FAIL <name>: <detail>
 *     DONE
 *
 * tests/test_pv_guests.py checks the exact set of PASS names per kernel.
 */
#ifndef HOSPES_GUEST_H
#define HOSPES_GUEST_H

#include "xen.h"
#include "hypercall.h"

#define barrier()   asm volatile("" ::: "memory")
#define noreturn    __attribute__((noreturn))
#define printf_like(a, b) __attribute__((format(printf, a, b)))
#define PAGE_ALIGNED __attribute__((aligned(PAGE_SIZE)))

/* ---- Boot state (lib/runtime.c, lib/entry.S) ------------------------ */
extern struct start_info *xen_start_info;   /* RSI at entry */
extern uint64_t xen_boot_rsp;               /* RSP at entry */
extern char _image_start[], _stext[], _etext[], _end[];
void guest_main(void);

/* ---- Console and reporting (lib/runtime.c) --------------------------- */
int printf(const char *fmt, ...) printf_like(1, 2);
void pass(const char *name);
void fail(const char *name, const char *fmt, ...) printf_like(2, 3);
/* PASS name if cond, else FAIL name with the formatted detail. Returns cond. */
int check(int cond, const char *name, const char *fmt, ...) printf_like(3, 4);
/* PASS name if rc == 0, else FAIL with the return code. */
int check_rc(long rc, const char *name);
/* A precondition, not a test: FAIL name and stop unless rc == 0. */
void require_rc(long rc, const char *name);
noreturn void finish(void);
extern int fail_count;
/* First console_io return code seen (0 = console_io works). */
extern long console_io_rc;

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
const char *strstr_n(const char *hay, size_t n, const char *needle);

/* CR4 as the guest kernel sees it (Hospes emulates the moves). */
static inline uint64_t read_cr4(void)
{
    uint64_t v;
    asm volatile("mov %%cr4, %0" : "=r"(v));
    return v;
}

static inline void write_cr4(uint64_t v)
{
    asm volatile("mov %0, %%cr4" : : "r"(v) : "memory");
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* ---- Memory (lib/mm.c) ------------------------------------------------ */
/* Frames: on real Xen MFN != PFN; go through the p2m (start_info.mfn_list)
 * and the M2P, never assume identity. */
uint64_t virt_to_pfn(const void *va);
uint64_t virt_to_mfn(const void *va);
uint64_t pfn_to_mfn(uint64_t pfn);
/* XENMEM_machphys_mapping; must succeed before mfn_to_pfn/mfn_to_virt. */
long m2p_init(void);
extern struct xen_machphys_mapping machphys;
uint64_t mfn_to_pfn(uint64_t mfn);
/* VA of a frame inside the bootstrap mapping (pfn < mapped size). */
void *mfn_to_virt(uint64_t mfn);
/* A zeroed, page-aligned page from a pool in .bss (mapped RW, ours). */
void *alloc_page(void);
/* Remap one of our own pages read-only / read-write (update_va_mapping). */
long set_page_ro(void *va);
long set_page_rw(void *va);
/* Map shared_info (update_va_mapping of a spare .bss page, RW). */
long map_shared_info(void);
extern volatile struct shared_info *shared;
#define VCPU0 (&shared->vcpu_info[0])

/* ---- Traps (lib/trap.c, lib/entry.S) --------------------------------- */
/* What the entry stubs save: GPRs, then vector + error code (0 where the
 * bounce frame has none), then the frame Xen wrote (RIP .. SS). RCX and R11
 * hold the interrupted values, popped from the bounce frame like Linux's
 * xen_asm_exc_* stubs do. Handlers may edit any field; the stubs return
 * through HYPERVISOR_iret with what is there. */
struct regs {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error;
    uint64_t rip, cs, rflags, rsp, ss;
};
#define VEC_EVENT    256   /* event upcall (CALLBACKTYPE_event) */
#define VEC_SYSCALL  257   /* user-mode syscall (CALLBACKTYPE_syscall) */
#define NR_VECTORS   258

/* Handler return values. */
#define TRAP_RETURN      0   /* HYPERVISOR_iret with the (edited) frame */
#define TRAP_LEAVE_USER  1   /* abandon user mode: run_user() returns */
typedef int (*trap_handler_t)(struct regs *r);
void trap_set_handler(unsigned vector, trap_handler_t h);
/* set_trap_table with a stub for every exception vector. */
long traps_install(void);
/* RSP at the moment the last bounce frame was entered (points at RCX). */
extern volatile uint64_t trap_entry_rsp;
/* Where the return path jumps with the iret flags word pushed: the lib's own
 * `syscall` stub by default, or a hypercall page's iret stub. */
extern uint64_t xen_iret_target;
void xen_iret_syscall(void);
/* Enter user mode through HYPERVISOR_iret with ctx; returns when a handler
 * answers TRAP_LEAVE_USER. */
void run_user(struct iret_context *ctx);
/* Saved upcall mask in a bounce frame's CS (bits 32-39). */
#define FRAME_SAVED_MASK(cs) (((cs) >> 32) & 0xff)
void dump_regs(const struct regs *r);

/* ---- Events and time (lib/evtchn.c) ---------------------------------- */
/* Register the lib's event upcall and failsafe callbacks (after
 * map_shared_info). The upcall scans the 2-level bitmaps like Linux's
 * xen_evtchn_do_upcall, clears what it handles and counts it here. */
long callbacks_install(void);
#define EVT_TRACKED_PORTS 256
struct evt_state {
    uint64_t upcalls;
    uint64_t port_count[EVT_TRACKED_PORTS];
    uint32_t last_port;
    struct regs frame;           /* frame of the last upcall */
    uint64_t entry_rsp;          /* where that frame was (points at RCX) */
    uint8_t  mask_on_entry;      /* vcpu_info mask when the upcall started */
    uint8_t  pending_on_entry;   /* vcpu_info upcall_pending then */
    uint64_t sel_on_entry;       /* pending_sel then */
    uint64_t pending0_on_entry;  /* evtchn_pending[0] then */
    void (*hook)(unsigned port); /* called for each handled port */
};
extern volatile struct evt_state evt;

void events_enable(void);   /* mask := 0, then poke if something is pending */
void events_disable(void);  /* mask := 1 */
void port_mask(unsigned port);
void port_unmask_local(unsigned port);  /* Linux's evtchn_2l_unmask */
void port_clear_pending(unsigned port);
int port_pending(unsigned port);
int port_masked(unsigned port);
long evtchn_bind_virq(unsigned virq, unsigned vcpu, evtchn_port_t *port);
long evtchn_bind_ipi(unsigned vcpu, evtchn_port_t *port);
long evtchn_op_port(int cmd, evtchn_port_t port);  /* close/send/unmask */
long evtchn_status(evtchn_port_t port, struct evtchn_status *st);

/* pvclock (vcpu_info[0].time) and wallclock. */
uint64_t pvclock_now(void);
void pvclock_snapshot(struct vcpu_time_info *out);
uint64_t pvclock_tsc_khz(const struct vcpu_time_info *t);
/* SCHEDOP_block (with events enabled) until *counter >= target or the
 * pvclock passes deadline; returns 1 if the target was reached. Needs a
 * timer armed or an event coming, or it may block forever. */
int block_until(volatile uint64_t *counter, uint64_t target, uint64_t deadline);
long set_singleshot(uint64_t deadline_ns, uint32_t flags);

#define NSEC_PER_MSEC 1000000UL
#define NSEC_PER_SEC  1000000000UL

#endif
