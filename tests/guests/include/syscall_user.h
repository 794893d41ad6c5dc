/* Shared by syscall_user.c and syscall_user.S. */
#define USER_CODE_VA    0x400000        /* user text (RO, user) */
#define USER_HOLE_VA    0x401000        /* unmapped: user-mode #PF target */
#define USER_STACK_VA   0x402000        /* user stack page (RW, user) */
#define USER_STACK_TOP  0x403000
#define USER_NR_HELLO   0x1001          /* first syscall: "hello" */
#define USER_NR_DONE    0x1002          /* second syscall: "done" */
#define USER_MAGIC      0x0123456789abcdef
#define USER_NR_24      24              /* vcpu_op's number: a user one is still the kernel's */
#define USER_NR_24_ARG  0x7fffffff      /* an id no domain has */
#define KDATA_VA        0xffff828000000000  /* Hospes' kernel-data slot (261), vCPU 0's page */
