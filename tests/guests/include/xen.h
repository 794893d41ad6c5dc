/*
 * Xen PV64 guest ABI: the numbers and structure layouts the Hospes test
 * kernels use. Values are carried over from the Xen public headers
 * (xen/include/public/{xen.h, arch-x86/xen.h, arch-x86/xen-x86_64.h,
 * elfnote.h, version.h, features.h, memory.h, sched.h, vcpu.h, callback.h,
 * event_channel.h, io/console.h}); the names mirror theirs so a reader can
 * move between the two. Layouts are pinned with _Static_assert below and
 * match the offsets in docs/pv-abi.md (shared/design/pv-abi.md).
 *
 * Usable from C and from assembly (only the #defines are seen by .S files).
 */
#ifndef HOSPES_GUEST_XEN_H
#define HOSPES_GUEST_XEN_H

/* ---- ELF notes (elfnote.h) ------------------------------------------- */
#define XEN_ELFNOTE_ENTRY           1
#define XEN_ELFNOTE_HYPERCALL_PAGE  2
#define XEN_ELFNOTE_VIRT_BASE       3
#define XEN_ELFNOTE_PADDR_OFFSET    4
#define XEN_ELFNOTE_XEN_VERSION     5
#define XEN_ELFNOTE_GUEST_OS        6
#define XEN_ELFNOTE_LOADER          8
#define XEN_ELFNOTE_FEATURES        10

/* Where the test kernels live (see lib/guest.ld). */
#define GUEST_VIRT_BASE   0xffffffff80000000
#define GUEST_LOAD_PADDR  0x100000

/* ---- Hypercall numbers (xen.h) --------------------------------------- */
#define __HYPERVISOR_set_trap_table    0
#define __HYPERVISOR_mmu_update        1
#define __HYPERVISOR_stack_switch      3
#define __HYPERVISOR_set_debugreg      8
#define __HYPERVISOR_get_debugreg      9
#define __HYPERVISOR_set_timer_op      15
#define __HYPERVISOR_memory_op         12
#define __HYPERVISOR_multicall         13
#define __HYPERVISOR_update_va_mapping 14
#define __HYPERVISOR_xen_version       17
#define __HYPERVISOR_console_io        18
#define __HYPERVISOR_iret              23
#define __HYPERVISOR_vcpu_op           24
#define __HYPERVISOR_mmuext_op         26
#define __HYPERVISOR_sched_op          29
#define __HYPERVISOR_callback_op       30
#define __HYPERVISOR_event_channel_op  32

/* ---- Selectors (arch-x86/xen-x86_64.h) -------------------------------- */
#define FLAT_KERNEL_CS   0xe033   /* == FLAT_RING3_CS64 == FLAT_USER_CS64 */
#define FLAT_KERNEL_SS   0xe02b   /* == FLAT_RING3_SS64 == FLAT_USER_SS64 */
#define FLAT_USER_CS64   0xe033
#define FLAT_USER_SS64   0xe02b
#define VGCF_in_syscall  (1 << 8) /* iret flags word */

/* ---- Errno values (public/errno.h) ------------------------------------ */
#define XEN_EPERM   1
#define XEN_ENOENT  2
#define XEN_EFAULT  14
#define XEN_EEXIST  17
#define XEN_EINVAL  22
#define XEN_ENOSYS  38
#define XEN_ETIME   62

/* ---- Hypercall sub-operations ------------------------------------------ */
#define CONSOLEIO_write            0

#define XENVER_version             0
#define XENVER_extraversion        1
#define XENVER_capabilities        3
#define XENVER_get_features        6
#define XENVER_pagesize            7

#define XENFEAT_writable_page_tables       0
#define XENFEAT_auto_translated_physmap    2
#define XENFEAT_supervisor_mode_kernel     3
#define XENFEAT_mmu_pt_update_preserve_ad  5
#define XENFEAT_gnttab_map_avail_bits      7
#define XENFEAT_hvm_callback_vector        8

#define XENMEM_machphys_mapping    12

#define SCHEDOP_yield              0
#define SCHEDOP_block              1
#define SCHEDOP_shutdown           2
#define SHUTDOWN_poweroff          0
#define SHUTDOWN_crash             3

#define VCPUOP_set_periodic_timer     6
#define VCPUOP_stop_periodic_timer    7
#define VCPUOP_set_singleshot_timer   8
#define VCPUOP_stop_singleshot_timer  9
#define VCPUOP_register_vcpu_time_memory_area 13
#define VCPU_SSHOTTMR_future          (1 << 0)

#define CALLBACKOP_register        0
#define CALLBACKTYPE_event         0
#define CALLBACKTYPE_failsafe      1
#define CALLBACKTYPE_syscall       2
#define CALLBACKF_mask_events      (1 << 0)

#define EVTCHNOP_bind_virq         1
#define EVTCHNOP_close             3
#define EVTCHNOP_send              4
#define EVTCHNOP_status            5
#define EVTCHNOP_bind_ipi          7
#define EVTCHNOP_unmask            9
#define EVTCHNSTAT_closed          0
#define EVTCHNSTAT_virq            4
#define EVTCHNSTAT_ipi             5
#define VIRQ_TIMER                 0

#define MMU_NORMAL_PT_UPDATE       0
#define MMU_MACHPHYS_UPDATE        1
#define MMU_PT_UPDATE_PRESERVE_AD  2

#define MMUEXT_PIN_L1_TABLE        0
#define MMUEXT_PIN_L4_TABLE        3
#define MMUEXT_UNPIN_TABLE         4
#define MMUEXT_NEW_BASEPTR         5
#define MMUEXT_TLB_FLUSH_LOCAL     6
#define MMUEXT_INVLPG_LOCAL        7
#define MMUEXT_NEW_USER_BASEPTR    15

#define UVMF_NONE                  0
#define UVMF_TLB_FLUSH             1
#define UVMF_INVLPG                2

#define DOMID_SELF                 0x7ff0

/* ---- Page-table entry bits -------------------------------------------- */
#define _PAGE_PRESENT   0x001
#define _PAGE_RW        0x002
#define _PAGE_USER      0x004
#define _PAGE_ACCESSED  0x020
#define _PAGE_DIRTY     0x040
#define PTE_ADDR_MASK   0x000ffffffffff000
#define PAGE_SIZE       4096
/* Kernel data page, and an intermediate table entry, as Linux writes them. */
#define PTE_KERNEL_RW   (_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY)
#define PTE_KERNEL_RO   (_PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_DIRTY)
#define PTE_TABLE       (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)

/* ---- Hypervisor area (xen/arch/x86/include/asm/config.h) -------------- */
#define HYPERVISOR_VIRT_START  0xffff800000000000
#define HYPERVISOR_VIRT_END    0xffff880000000000

/* ---- RFLAGS ----------------------------------------------------------- */
#define X86_EFLAGS_CF   0x0001
#define X86_EFLAGS_PF   0x0004
#define X86_EFLAGS_AF   0x0010
#define X86_EFLAGS_ZF   0x0040
#define X86_EFLAGS_SF   0x0080
#define X86_EFLAGS_IF   0x0200
#define X86_EFLAGS_DF   0x0400
#define X86_EFLAGS_OF   0x0800
#define X86_EFLAGS_IOPL 0x3000
#define X86_EFLAGS_ARITH (X86_EFLAGS_CF | X86_EFLAGS_PF | X86_EFLAGS_AF | \
                          X86_EFLAGS_ZF | X86_EFLAGS_SF | X86_EFLAGS_DF | \
                          X86_EFLAGS_OF)

#ifndef __ASSEMBLER__

typedef unsigned char      uint8_t;
typedef signed char        int8_t;
typedef unsigned short     uint16_t;
typedef unsigned int       uint32_t;
typedef int                int32_t;
typedef unsigned long      uint64_t;
typedef long               int64_t;
typedef unsigned long      uintptr_t;
typedef unsigned long      size_t;
typedef uint32_t           evtchn_port_t;
typedef uint16_t           domid_t;

#define offsetof(t, m) __builtin_offsetof(t, m)
#define XEN_ABI_SIZE(t, n) _Static_assert(sizeof(t) == (n), #t " size")
#define XEN_ABI_OFF(t, m, n) _Static_assert(offsetof(t, m) == (n), #t "." #m)

/* start_info (xen.h): RSI points at it on entry. */
struct start_info {
    char     magic[32];          /* "xen-3.0-x86_64" */
    uint64_t nr_pages;
    uint64_t shared_info;        /* machine address of shared_info */
    uint32_t flags;
    uint64_t store_mfn;
    uint32_t store_evtchn;
    union {
        struct { uint64_t mfn; uint32_t evtchn; } domU;
        struct { uint32_t info_off, info_size; } dom0;
    } console;
    uint64_t pt_base;            /* VA of the bootstrap L4 */
    uint64_t nr_pt_frames;
    uint64_t mfn_list;           /* VA of the p2m array */
    uint64_t mod_start;
    uint64_t mod_len;
    char     cmd_line[1024];
    uint64_t first_p2m_pfn;
    uint64_t nr_p2m_frames;
};
XEN_ABI_SIZE(struct start_info, 1168);
XEN_ABI_OFF(struct start_info, nr_pages, 0x20);
XEN_ABI_OFF(struct start_info, store_mfn, 0x38);
XEN_ABI_OFF(struct start_info, store_evtchn, 0x40);
XEN_ABI_OFF(struct start_info, console.domU.mfn, 0x48);
XEN_ABI_OFF(struct start_info, console.domU.evtchn, 0x50);
XEN_ABI_OFF(struct start_info, pt_base, 0x58);
XEN_ABI_OFF(struct start_info, mfn_list, 0x68);
XEN_ABI_OFF(struct start_info, cmd_line, 0x80);
XEN_ABI_OFF(struct start_info, first_p2m_pfn, 0x480);

/* vcpu_time_info: the pvclock record. */
struct vcpu_time_info {
    uint32_t version;            /* odd while being updated */
    uint32_t pad0;
    uint64_t tsc_timestamp;
    uint64_t system_time;        /* ns */
    uint32_t tsc_to_system_mul;
    int8_t   tsc_shift;
    uint8_t  flags;
    uint8_t  pad1[2];
};
XEN_ABI_SIZE(struct vcpu_time_info, 32);
#define PVCLOCK_TSC_STABLE_BIT 1     /* flags: one TSC line for every vCPU */

struct vcpu_info {
    uint8_t  evtchn_upcall_pending;
    uint8_t  evtchn_upcall_mask;     /* 1 = events disabled (virtual IF) */
    uint8_t  pad[6];
    uint64_t evtchn_pending_sel;
    uint64_t cr2;                    /* arch.cr2: written before a #PF bounce */
    uint64_t arch_pad;
    struct vcpu_time_info time;
};
XEN_ABI_SIZE(struct vcpu_info, 64);
XEN_ABI_OFF(struct vcpu_info, cr2, 0x10);
XEN_ABI_OFF(struct vcpu_info, time, 0x20);

struct shared_info {
    struct vcpu_info vcpu_info[32];
    uint64_t evtchn_pending[64];
    uint64_t evtchn_mask[64];
    uint32_t wc_version;
    uint32_t wc_sec;
    uint32_t wc_nsec;
    uint32_t wc_sec_hi;
    uint64_t arch_max_pfn;
    uint64_t arch_pfn_to_mfn_frame_list_list;
    uint64_t arch_nmi_reason;
};
XEN_ABI_OFF(struct shared_info, evtchn_pending, 0x800);
XEN_ABI_OFF(struct shared_info, evtchn_mask, 0xa00);
XEN_ABI_OFF(struct shared_info, wc_version, 0xc00);
XEN_ABI_OFF(struct shared_info, wc_sec, 0xc04);

struct trap_info {
    uint8_t  vector;
    uint8_t  flags;      /* bits 0-1: DPL; bit 2: mask events on delivery */
    uint16_t cs;
    uint64_t address;    /* 0 terminates the table */
};
XEN_ABI_SIZE(struct trap_info, 16);

/* Frame read by HYPERVISOR_iret (xen-x86_64.h struct iret_context). */
struct iret_context {
    uint64_t rax, r11, rcx, flags, rip, cs, rflags, rsp, ss;
};
XEN_ABI_SIZE(struct iret_context, 72);

struct mmu_update { uint64_t ptr, val; };
XEN_ABI_SIZE(struct mmu_update, 16);

struct mmuext_op {
    uint32_t cmd;
    uint32_t pad;
    union { uint64_t mfn; uint64_t linear_addr; } arg1;
    union { uint32_t nr_ents; uint64_t vcpumask; uint64_t src_mfn; } arg2;
};
XEN_ABI_SIZE(struct mmuext_op, 24);

struct multicall_entry {
    uint64_t op;
    uint64_t result;
    uint64_t args[6];
};
XEN_ABI_SIZE(struct multicall_entry, 64);

struct xen_feature_info { uint32_t submap_idx; uint32_t submap; };

struct xen_machphys_mapping { uint64_t v_start, v_end, max_mfn; };

struct sched_shutdown { uint32_t reason; };

struct vcpu_set_periodic_timer { uint64_t period_ns; };
struct vcpu_set_singleshot_timer { uint64_t timeout_abs_ns; uint32_t flags; };
XEN_ABI_SIZE(struct vcpu_set_singleshot_timer, 16);

struct callback_register {
    uint16_t type;
    uint16_t flags;
    uint32_t pad;
    uint64_t address;
};
XEN_ABI_SIZE(struct callback_register, 16);

struct evtchn_bind_virq { uint32_t virq; uint32_t vcpu; evtchn_port_t port; };
struct evtchn_bind_ipi  { uint32_t vcpu; evtchn_port_t port; };
struct evtchn_port_arg  { evtchn_port_t port; };   /* close, send, unmask */
struct evtchn_status {
    domid_t       dom;
    evtchn_port_t port;
    uint32_t      status;
    uint32_t      vcpu;
    union {
        struct { domid_t dom; } unbound;
        struct { domid_t dom; evtchn_port_t port; } interdomain;
        uint32_t pirq;
        uint32_t virq;
    } u;
};
XEN_ABI_SIZE(struct evtchn_status, 24);
XEN_ABI_OFF(struct evtchn_status, status, 8);
XEN_ABI_OFF(struct evtchn_status, u, 16);

/* io/console.h */
struct xencons_interface {
    char in[1024];
    char out[2048];
    uint32_t in_cons, in_prod;
    uint32_t out_cons, out_prod;
};
XEN_ABI_OFF(struct xencons_interface, out_prod, 0xc0c);

#endif /* !__ASSEMBLER__ */
#endif
