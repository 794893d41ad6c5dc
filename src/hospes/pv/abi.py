"""Numbers of the Xen PV64 ABI that Hospes speaks (xen/include/public/*.h).

Names mirror Xen's headers so a reader can move between the two.
"""

from enum import IntEnum


class Hypercall(IntEnum):
    """Hypercall numbers (xen.h, __HYPERVISOR_*)."""

    set_trap_table = 0
    mmu_update = 1
    set_gdt = 2
    stack_switch = 3
    set_callbacks = 4
    fpu_taskswitch = 5
    sched_op_compat = 6
    platform_op = 7
    set_debugreg = 8
    get_debugreg = 9
    update_descriptor = 10
    memory_op = 12
    multicall = 13
    update_va_mapping = 14
    set_timer_op = 15
    event_channel_op_compat = 16
    xen_version = 17
    console_io = 18
    physdev_op_compat = 19
    grant_table_op = 20
    vm_assist = 21
    update_va_mapping_otherdomain = 22
    iret = 23
    vcpu_op = 24
    set_segment_base = 25
    mmuext_op = 26
    xsm_op = 27
    nmi_op = 28
    sched_op = 29
    callback_op = 30
    xenoprof_op = 31
    event_channel_op = 32
    physdev_op = 33
    hvm_op = 34
    sysctl = 35
    domctl = 36
    kexec_op = 37
    tmem_op = 38
    argo_op = 39
    xenpmu_op = 40
    dm_op = 41
    hypfs_op = 42


# Xen version we claim to be (4.17: new enough for every Linux 6.1 path).
XEN_MAJOR = 4
XEN_MINOR = 17
XEN_EXTRAVERSION = ".0"
XEN_CAPABILITIES = "xen-3.0-x86_64 "

DOMID_SELF = 0x7FF0
XEN_LEGACY_MAX_VCPUS = 32  # vcpu_info slots in shared_info (xen.h)

# Selectors (arch-x86/xen-x86_64.h, desc.h).
FLAT_RING3_CS32 = 0xE023
FLAT_RING3_DS = 0xE02B
FLAT_RING3_CS64 = 0xE033
FLAT_KERNEL_CS = FLAT_RING3_CS64
FLAT_KERNEL_SS = FLAT_RING3_DS
FLAT_USER_CS = FLAT_RING3_CS64
FLAT_USER_SS = FLAT_RING3_DS
HYPERVISOR_CS = 0xE008
HYPERVISOR_DS = 0xE010
TSS_SELECTOR = 0xE040
FIRST_RESERVED_GDT_PAGE = 14
FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_PAGE * 512
GDT_LIMIT = 15 * 4096 - 1

# start_info flags.
SIF_MOD_START_PFN = 1 << 3

# Page-table entry bits.
PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PSE = 1 << 7
PTE_G = 1 << 8
PTE_NX = 1 << 63
PTE_ADDR_MASK = 0x000F_FFFF_FFFF_F000

# Virtual address space constants the guest sees (xen-x86_64.h).
HYPERVISOR_VIRT_START = 0xFFFF_8000_0000_0000
# Where xen-x86_64.h puts the read-only M2P (slot 256, 256 GiB); Hospes answers loads
# there by emulation (pv/m2p.py), since slot 256 cannot be mapped on this KVM.
MACH2PHYS_VIRT_START = 0xFFFF_8000_0000_0000
MACH2PHYS_VIRT_END = 0xFFFF_8040_0000_0000
HYPERVISOR_VIRT_END = 0xFFFF_8800_0000_0000
ROOT_PAGETABLE_FIRST_XEN_SLOT = 256
ROOT_PAGETABLE_LAST_XEN_SLOT = 271

# XENFEAT_* bits (features.h) advertised in submap 0.
XENFEAT_writable_page_tables = 0
XENFEAT_auto_translated_physmap = 2
XENFEAT_pae_pgdir_above_4gb = 4
XENFEAT_mmu_pt_update_preserve_ad = 5
XENFEAT_highmem_assist = 6
XENFEAT_gnttab_map_avail_bits = 7
XENFEAT_memory_op_vnode_supported = 13
XENFEAT_direct_mapped = 17

FEATURES_SUBMAP0 = (
    (1 << XENFEAT_pae_pgdir_above_4gb)
    | (1 << XENFEAT_mmu_pt_update_preserve_ad)
    | (1 << XENFEAT_highmem_assist)
    | (1 << XENFEAT_gnttab_map_avail_bits)
)

# Trap vectors that push an error code.
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})

# VGCF flags / iret.
VGCF_in_syscall = 1 << 8

# Callback types (callback.h).
CALLBACKTYPE_event = 0
CALLBACKTYPE_failsafe = 1
CALLBACKTYPE_syscall = 2
CALLBACKTYPE_sysenter_deprecated = 3
CALLBACKTYPE_nmi = 4
CALLBACKTYPE_sysenter = 5
CALLBACKTYPE_syscall32 = 7
CALLBACKF_mask_events = 1

# VIRQs.
VIRQ_TIMER = 0
VIRQ_DEBUG = 1

# Shutdown reasons (sched.h).
SHUTDOWN_poweroff = 0
SHUTDOWN_reboot = 1
SHUTDOWN_suspend = 2
SHUTDOWN_crash = 3
SHUTDOWN_watchdog = 4
SHUTDOWN_soft_reset = 5
