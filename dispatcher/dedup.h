/* Remembers the ids of the most recent requests so a redelivered message (after a
 * crash or rebalance) is not sent to an endpoint twice. Bounded: the oldest id is
 * forgotten when the table is full. */
#ifndef GW_DISPATCHER_DEDUP_H
#define GW_DISPATCHER_DEDUP_H

#include <stdint.h>

/* Owned by the dispatcher; the arrays are malloc'd and freed by dedup_free. */
struct dedup {
	uint8_t (*ids)[16]; /* ring of ids, oldest at head once full */
	uint32_t *next;     /* per ring slot: next slot in the same bucket, or NONE */
	uint32_t *buckets;  /* per bucket: first ring slot, or NONE */
	uint32_t cap, nbuckets, head, count;
};

int dedup_init(struct dedup *d, uint32_t cap);
/* 1 when id (32 hex digits) was seen among the last cap ids; else records it and
 * returns 0. -1 for a malformed id. */
int dedup_check_add(struct dedup *d, const char *id);
void dedup_free(struct dedup *d);

#endif
