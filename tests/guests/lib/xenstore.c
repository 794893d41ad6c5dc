/*
 * A minimal xenstore client for the test kernels (include/xenstore.h): the
 * request and reply framing of io/xs_wire.h over the shared ring, polled
 * with SCHEDOP_yield and a pvclock deadline rather than waiting for the
 * store's event, so it needs no event channel set up.
 */
#include "xenstore.h"

static volatile struct xs_ring *ring;

volatile struct xs_ring *xs_ring(void)
{
    if (!ring)
        ring = mfn_to_virt(xen_start_info->store_mfn);
    return ring;
}

int xs_queue(uint32_t type, uint32_t req_id, const void *a, uint32_t alen, const void *b, uint32_t blen)
{
    volatile struct xs_ring *r = xs_ring();
    struct xs_msg hdr = { .type = type, .req_id = req_id, .len = alen + blen };
    const void *parts[3] = { &hdr, a, b };
    uint32_t lens[3] = { sizeof(hdr), alen, blen };
    uint32_t prod = r->req_prod;
    if (sizeof(hdr) + alen + blen > sizeof(r->req) - (prod - r->req_cons))
        return -1;
    for (int p = 0; p < 3; p++)
        for (uint32_t i = 0; i < lens[p]; i++, prod++)
            r->req[prod & 1023] = ((const char *)parts[p])[i];
    barrier();                  /* the request is in the ring before the store sees it */
    r->req_prod = prod;
    return 0;
}

void xs_notify(void)
{
    struct evtchn_port_arg send = { .port = xen_start_info->store_evtchn };
    HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
}

long xs_reply(uint32_t *type, void *out, uint32_t max)
{
    volatile struct xs_ring *r = xs_ring();
    uint64_t deadline = pvclock_now() + 2 * NSEC_PER_SEC;
    struct xs_msg hdr;
    for (;;) {
        uint32_t cons = r->rsp_cons, avail = r->rsp_prod - cons;
        barrier();              /* rsp_prod before the bytes it covers */
        if (avail >= sizeof(hdr)) {
            for (uint32_t i = 0; i < sizeof(hdr); i++)
                ((char *)&hdr)[i] = r->rsp[(cons + i) & 1023];
            if (avail >= sizeof(hdr) + hdr.len)
                break;
        }
        if (pvclock_now() > deadline)
            return -1;
        HYPERVISOR_sched_op(SCHEDOP_yield, 0);
    }
    uint32_t cons = r->rsp_cons + sizeof(hdr);
    for (uint32_t i = 0; i < hdr.len && i < max; i++)
        ((char *)out)[i] = r->rsp[(cons + i) & 1023];
    barrier();                  /* the bytes are copied before the store may reuse them */
    r->rsp_cons = cons + hdr.len;
    *type = hdr.type;
    return hdr.len;
}

long xs_read(const char *path, char *out, uint32_t max)
{
    uint32_t type = 0;
    if (xs_queue(XS_READ, 1, path, strlen(path) + 1, 0, 0))
        return -1;
    xs_notify();
    long n = xs_reply(&type, out, max);
    return type == XS_READ ? n : -1;
}
