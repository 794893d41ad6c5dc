/*
 * The test kernels' xenstore client (lib/xenstore.c): requests written into
 * the store ring of start_info (io/xs_wire.h), replies waited for up to 2 s.
 * One request at a time, no watches, no transactions: enough for a kernel
 * to read a key (grants.c reads its domid) or to have the store write into
 * the ring while it does something else (hostile.c).
 */
#ifndef HOSPES_GUEST_XENSTORE_H
#define HOSPES_GUEST_XENSTORE_H

#include "guest.h"

#define XS_READ   2             /* io/xs_wire.h enum xsd_sockmsg_type */
#define XS_WRITE  11
#define XS_ERROR  16

struct xs_ring {
    char req[1024];
    char rsp[1024];
    uint32_t req_cons, req_prod;
    uint32_t rsp_cons, rsp_prod;
};
_Static_assert(__builtin_offsetof(struct xs_ring, req_cons) == 0x800, "xenstore ring layout");

struct xs_msg {
    uint32_t type, req_id, tx_id, len;
};

/* The store ring, mapped through start_info.store_mfn; m2p_init() first. */
volatile struct xs_ring *xs_ring(void);
/* Queue one request of type with payload a then b; no notification. 0, or
 * -1 if the ring has no room for it. */
int xs_queue(uint32_t type, uint32_t req_id, const void *a, uint32_t alen, const void *b, uint32_t blen);
/* Tell the store there are requests (EVTCHNOP_send on start_info.store_evtchn). */
void xs_notify(void);
/* Wait up to 2 s for one reply; copy up to max bytes of its payload to out and
 * its type to *type. The payload's length, or -1 if none came in time. */
long xs_reply(uint32_t *type, void *out, uint32_t max);
/* XS_READ of path: the value's length (up to max bytes copied), or -1 if the
 * store answered otherwise (XS_ERROR) or not at all. */
long xs_read(const char *path, char *out, uint32_t max);

#endif
