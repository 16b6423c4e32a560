/* Requests waiting for their answer, by id and in deadline order. */
#include "pending.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

static size_t bucket_of(const struct pending_table *t, const char *id)
{
	/* Ids are random hex: the first 16 digits are a fine hash. */
	uint64_t h = 0;
	for (int i = 0; i < 16; i++)
		h = h * 16 + (uint64_t)(id[i] <= '9' ? id[i] - '0' : id[i] - 'a' + 10);
	return (size_t)(h % t->nbuckets);
}

int pending_table_init(struct pending_table *t, size_t nbuckets)
{
	memset(t, 0, sizeof *t);
	t->buckets = calloc(nbuckets, sizeof *t->buckets);
	if (!t->buckets)
		return -1;
	t->nbuckets = nbuckets;
	return 0;
}

void pending_table_free(struct pending_table *t)
{
	free(t->buckets);
	memset(t, 0, sizeof *t);
}

struct pending *pending_new(struct pending_table *t, struct ingress *ig, const char *id)
{
	struct pending *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->ig = ig;
	memcpy(p->id, id, sizeof p->id);
	p->refs = 1;
	size_t b = bucket_of(t, id);
	p->hnext = t->buckets[b];
	t->buckets[b] = p;
	p->prev = t->tail;
	if (t->tail)
		t->tail->next = p;
	else
		t->head = p;
	t->tail = p;
	t->count++;
	return p;
}

struct pending *pending_find(struct pending_table *t, const char *id)
{
	for (struct pending *p = t->buckets[bucket_of(t, id)]; p; p = p->hnext)
		if (memcmp(p->id, id, GW_ID_HEX) == 0)
			return p;
	return NULL;
}

void pending_finish(struct pending_table *t, struct pending *p)
{
	if (p->answered)
		return;
	p->answered = 1;
	struct pending **pp = &t->buckets[bucket_of(t, p->id)];
	while (*pp && *pp != p)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = p->hnext;
	if (p->prev)
		p->prev->next = p->next;
	else
		t->head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		t->tail = p->prev;
	p->prev = p->next = p->hnext = NULL;
	t->count--;
	for (int i = 0; i < p->nheld; i++)
		rd_kafka_message_destroy(p->held[i]);
	p->nheld = 0;
	pending_unref(p);
}

void pending_unref(struct pending *p)
{
	if (--p->refs == 0)
		free(p);
}
