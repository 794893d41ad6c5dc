/*
 * Runtime of the Hospes test kernels: start of day, console output,
 * printf-lite, PASS/FAIL reporting and shutdown.
 *
 * Output goes to the PV console ring (start_info.console.domU, pv-abi.md
 * §11.1), as a domU's must on Xen: there console_io writes go to the
 * hypervisor's own log ("(d1) " lines, and only on debug builds), not to
 * the domain's console. If the ring cannot be found, HYPERVISOR_console_io
 * is the fallback. The hello kernel checks console_io itself.
 */
#include "guest.h"

struct start_info *xen_start_info;
uint64_t xen_boot_rsp;
int fail_count;
long console_io_rc = 1;        /* 1 = not tried yet */

/* ---- string helpers (gcc may emit calls to these) ------------------- */
void *memset(void *d, int c, size_t n)
{
    unsigned char *p = d;
    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* needle in the first n bytes of hay (hay need not be NUL-terminated) */
const char *strstr_n(const char *hay, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(hay + i, needle, m) == 0)
            return hay + i;
    return 0;
}

/* ---- console ------------------------------------------------------- */
static int ring_mode;           /* 0 not chosen yet, 1 ring, 2 console_io, -1 nowhere */
static volatile struct xencons_interface *ring;

static int ring_init(void)
{
    struct start_info *si = xen_start_info;
    if (m2p_init() != 0 || si->console.domU.mfn == 0)
        return 0;
    uint64_t pfn = mfn_to_pfn(si->console.domU.mfn);
    if (pfn >= si->nr_pages)
        return 0;
    ring = mfn_to_virt(si->console.domU.mfn);
    return 1;
}

static void ring_write(const char *s, size_t n)
{
    evtchn_port_t port = xen_start_info->console.domU.evtchn;
    for (size_t i = 0; i < n; i++) {
        int spins = 0;
        while (ring->out_prod - ring->out_cons >= sizeof(ring->out)) {
            evtchn_op_port(EVTCHNOP_send, port);
            HYPERVISOR_sched_op(SCHEDOP_yield, 0);
            if (++spins > 10000)
                return;         /* nobody drains the ring: drop output */
        }
        ring->out[ring->out_prod & (sizeof(ring->out) - 1)] = s[i];
        barrier();              /* data before index (x86 keeps store order) */
        ring->out_prod++;
    }
    evtchn_op_port(EVTCHNOP_send, port);
}

static void console_write(const char *s, size_t n)
{
    if (ring_mode == 0)
        ring_mode = ring_init() ? 1 : 2;
    if (ring_mode == 2) {
        long rc = HYPERVISOR_console_io(CONSOLEIO_write, (int)n, s);
        if (console_io_rc == 1)
            console_io_rc = rc;
        if (rc != 0)
            ring_mode = -1;
    }
    if (ring_mode == 1)
        ring_write(s, n);
}

/* ---- printf-lite: %s %c %d %i %u %x %X %p %%, flags '0' '#', width, l/ll/z */
struct buf { char *p; size_t len, cap; };

static void put(struct buf *b, char c)
{
    if (b->len + 1 < b->cap)
        b->p[b->len++] = c;
}

static void put_num(struct buf *b, uint64_t v, unsigned base, int neg,
                    int width, char pad, const char *prefix)
{
    char tmp[24];
    int n = 0;
    do {
        unsigned d = v % base;
        tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    int len = n + neg + (int)strlen(prefix);
    if (pad == ' ')
        for (; width > len; width--)
            put(b, ' ');
    if (neg)
        put(b, '-');
    for (const char *p = prefix; *p; p++)
        put(b, *p);
    if (pad == '0')
        for (; width > len; width--)
            put(b, '0');
    while (n)
        put(b, tmp[--n]);
}

static void vformat(struct buf *b, const char *fmt, __builtin_va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(b, *fmt);
            continue;
        }
        char pad = ' ';
        int alt = 0, width = 0, lng = 0;
        for (fmt++;; fmt++) {
            if (*fmt == '0')
                pad = '0';
            else if (*fmt == '#')
                alt = 1;
            else
                break;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') {
            lng = 1;
            fmt++;
        }
        switch (*fmt) {
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int len = (int)strlen(s);
            for (; width > len; width--)
                put(b, ' ');
            while (*s)
                put(b, *s++);
            break;
        }
        case 'c':
            put(b, (char)__builtin_va_arg(ap, int));
            break;
        case 'd':
        case 'i': {
            int64_t v = lng ? __builtin_va_arg(ap, long) : __builtin_va_arg(ap, int);
            put_num(b, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, v < 0, width, pad, "");
            break;
        }
        case 'u': {
            uint64_t v = lng ? __builtin_va_arg(ap, unsigned long)
                             : __builtin_va_arg(ap, unsigned int);
            put_num(b, v, 10, 0, width, pad, "");
            break;
        }
        case 'x':
        case 'X': {
            uint64_t v = lng ? __builtin_va_arg(ap, unsigned long)
                             : __builtin_va_arg(ap, unsigned int);
            put_num(b, v, 16, 0, width, pad, alt ? "0x" : "");
            break;
        }
        case 'p':
            put_num(b, (uint64_t)__builtin_va_arg(ap, void *), 16, 0, width, pad, "0x");
            break;
        case '%':
            put(b, '%');
            break;
        case 0:
            return;
        default:
            put(b, '%');
            put(b, *fmt);
        }
    }
}

#define LINE_MAX 512

int printf(const char *fmt, ...)
{
    char line[LINE_MAX];
    struct buf b = { line, 0, sizeof(line) };
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    vformat(&b, fmt, ap);
    __builtin_va_end(ap);
    console_write(line, b.len);
    return (int)b.len;
}

void pass(const char *name)
{
    printf("PASS %s\n", name);
}

static void vfail(const char *name, const char *fmt, __builtin_va_list ap)
{
    char line[LINE_MAX];
    struct buf b = { line, 0, sizeof(line) - 1 };
    fail_count++;
    for (const char *p = "FAIL "; *p; p++)
        put(&b, *p);
    for (const char *p = name; *p; p++)
        put(&b, *p);
    put(&b, ':');
    put(&b, ' ');
    vformat(&b, fmt, ap);
    line[b.len++] = '\n';        /* room kept by cap - 1 */
    console_write(line, b.len);
}

void fail(const char *name, const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    vfail(name, fmt, ap);
    __builtin_va_end(ap);
}

int check(int cond, const char *name, const char *fmt, ...)
{
    if (cond) {
        pass(name);
        return 1;
    }
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    vfail(name, fmt, ap);
    __builtin_va_end(ap);
    return 0;
}

int check_rc(long rc, const char *name)
{
    return check(rc == 0, name, "hypercall returned %ld", rc);
}

void require_rc(long rc, const char *name)
{
    if (rc != 0) {
        fail(name, "hypercall returned %ld; cannot go on", rc);
        finish();
    }
}

/* ---- shutdown ------------------------------------------------------ */
noreturn void finish(void)
{
    struct sched_shutdown sd = { .reason = SHUTDOWN_poweroff };
    printf("DONE\n");
    HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
    for (;;)                    /* shutdown must not return; if it does, idle */
        HYPERVISOR_sched_op(SCHEDOP_block, 0);
}

noreturn void kernel_entry(void);
noreturn void kernel_entry(void)
{
    guest_main();
    finish();
}
