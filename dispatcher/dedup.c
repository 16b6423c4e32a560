/* Recent-id table: a ring of ids (eviction order) plus chained buckets (lookup). */
#include "dedup.h"

#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static int parse_id(const char *hex, uint8_t out[16])
{
	for (int i = 0; i < 16; i++) {
		int hi = hexval(hex[2 * i]), lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return hex[32] == 0 ? 0 : -1;
}

/* Ids are random, so their leading bytes are already a good hash. */
static uint32_t bucket_of(const struct dedup *d, const uint8_t id[16])
{
	uint32_t h;
	memcpy(&h, id, sizeof h);
	return h & (d->nbuckets - 1);
}

int dedup_init(struct dedup *d, uint32_t cap)
{
	memset(d, 0, sizeof *d);
	if (cap == 0 || cap > (1u << 26))
		return -1;
	uint32_t nb = 1;
	while (nb < cap)
		nb <<= 1;
	d->ids = malloc((size_t)cap * sizeof *d->ids);
	d->next = malloc((size_t)cap * sizeof *d->next);
	d->buckets = malloc((size_t)nb * sizeof *d->buckets);
	if (!d->ids || !d->next || !d->buckets) {
		dedup_free(d);
		return -1;
	}
	for (uint32_t i = 0; i < nb; i++)
		d->buckets[i] = NONE;
	d->cap = cap;
	d->nbuckets = nb;
	return 0;
}

static void unlink_slot(struct dedup *d, uint32_t slot)
{
	uint32_t *pp = &d->buckets[bucket_of(d, d->ids[slot])];
	while (*pp != NONE) {
		if (*pp == slot) {
			*pp = d->next[slot];
			return;
		}
		pp = &d->next[*pp];
	}
}

int dedup_check_add(struct dedup *d, const char *hex)
{
	uint8_t id[16];
	if (!hex || parse_id(hex, id) != 0)
		return -1;
	uint32_t b = bucket_of(d, id);
	for (uint32_t s = d->buckets[b]; s != NONE; s = d->next[s])
		if (memcmp(d->ids[s], id, 16) == 0)
			return 1;
	uint32_t slot;
	if (d->count < d->cap) {
		slot = (d->head + d->count) % d->cap;
		d->count++;
	} else {
		slot = d->head; /* forget the oldest */
		unlink_slot(d, slot);
		d->head = (d->head + 1) % d->cap;
	}
	memcpy(d->ids[slot], id, 16);
	d->next[slot] = d->buckets[b];
	d->buckets[b] = slot;
	return 0;
}

void dedup_free(struct dedup *d)
{
	free(d->ids);
	free(d->next);
	free(d->buckets);
	memset(d, 0, sizeof *d);
}
