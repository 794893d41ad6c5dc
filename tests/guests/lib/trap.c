/*
 * Trap table and dispatch.
 *
 * traps_install() hands Xen a trap_info entry for every exception vector
 * we have a stub for (lib/entry.S). Like Linux, #BP and #OF get DPL 3 so
 * `int3`/`into` are allowed; everything else DPL 0. cs is FLAT_KERNEL_CS
 * (the hypervisor fixes the RPL anyway). A vector without a handler
 * registered with trap_set_handler() is reported as FAIL unexpected_trap and
 * stops the kernel: an exception with no trap table entry at all would make
 * Xen kill the domain without a word.
 */
#include "guest.h"

extern const uint64_t trap_entry_table[20];
extern void xen_event_entry(void);

volatile uint64_t trap_entry_rsp;
static trap_handler_t handlers[NR_VECTORS];

void trap_set_handler(unsigned vector, trap_handler_t h)
{
    handlers[vector] = h;
}

long traps_install(void)
{
    static struct trap_info table[21];
    unsigned n = 0;

    for (unsigned v = 0; v < 20; v++) {
        if (!trap_entry_table[v])
            continue;
        table[n].vector = (uint8_t)v;
        table[n].flags = (v == 3 || v == 4) ? 3 : 0;
        table[n].cs = FLAT_KERNEL_CS;
        table[n].address = trap_entry_table[v];
        n++;
    }
    memset(&table[n], 0, sizeof(table[n]));     /* address 0 ends the table */
    return HYPERVISOR_set_trap_table(table);
}

void dump_regs(const struct regs *r)
{
    printf("  vector %lu error %#lx rip %#lx cs %#lx rflags %#lx rsp %#lx ss %#lx\n",
           r->vector, r->error, r->rip, r->cs, r->rflags, r->rsp, r->ss);
    printf("  rax %#lx rbx %#lx rcx %#lx rdx %#lx rsi %#lx rdi %#lx\n",
           r->rax, r->rbx, r->rcx, r->rdx, r->rsi, r->rdi);
}

int trap_dispatch(struct regs *r);
int trap_dispatch(struct regs *r)
{
    trap_handler_t h = r->vector < NR_VECTORS ? handlers[r->vector] : 0;
    if (h)
        return h(r);
    fail("unexpected_trap", "vector %lu error %#lx at rip %#lx cr2 %#lx",
         r->vector, r->error, r->rip, shared ? VCPU0->cr2 : 0);
    dump_regs(r);
    finish();
}

noreturn void failsafe_handler(const uint64_t *frame);
noreturn void failsafe_handler(const uint64_t *frame)
{
    /* RCX, R11, DS, ES, FS, GS, RIP, CS, RFLAGS, RSP, SS */
    fail("failsafe_callback", "rip %#lx cs %#lx ds %#lx es %#lx fs %#lx gs %#lx",
         frame[6], frame[7], frame[2], frame[3], frame[4], frame[5]);
    finish();
}
