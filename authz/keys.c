/* The in-memory key store: open addressing with linear probing over the 64-bit key id.
 * Keys are never deleted here (a revoked key stays, marked), so no tombstones. */
#include "keys.h"

#include <stdlib.h>
#include <string.h>

#define KEYS_MIN_CAP 1024

/* Key ids are random, but mix anyway so sequential ids inserted by hand still spread. */
static uint64_t id_hash(const char *id)
{
	uint64_t x = 0;
	for (int i = 0; i < APIKEY_ID_HEX && id[i]; i++) {
		char ch = id[i];
		x = x << 4 | (uint64_t)(ch <= '9' ? ch - '0' : ch - 'a' + 10);
	}
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

static int id_valid(const char *id)
{
	if (!id)
		return 0;
	for (int i = 0; i < APIKEY_ID_HEX; i++)
		if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
			return 0;
	return id[APIKEY_ID_HEX] == 0;
}

int keys_init(struct key_cache *c, size_t max)
{
	memset(c, 0, sizeof *c);
	c->max = max;
	c->cap = KEYS_MIN_CAP;
	c->slots = calloc(c->cap, sizeof *c->slots);
	return c->slots ? 0 : -1;
}

static struct key_entry *find_slot(struct key_entry *slots, size_t cap, const char *id)
{
	size_t i = (size_t)id_hash(id) & (cap - 1);
	while (slots[i].id[0] && strcmp(slots[i].id, id) != 0)
		i = (i + 1) & (cap - 1);
	return &slots[i];
}

const struct key_entry *keys_get(const struct key_cache *c, const char *id)
{
	if (!id_valid(id))
		return NULL;
	const struct key_entry *e = find_slot(c->slots, c->cap, id);
	return e->id[0] ? e : NULL;
}

static int grow(struct key_cache *c)
{
	size_t ncap = c->cap * 2;
	struct key_entry *ns = calloc(ncap, sizeof *ns);
	if (!ns)
		return -1;
	for (size_t i = 0; i < c->cap; i++)
		if (c->slots[i].id[0])
			*find_slot(ns, ncap, c->slots[i].id) = c->slots[i];
	free(c->slots);
	c->slots = ns;
	c->cap = ncap;
	return 0;
}

/* Lays principal, groups and models out in one block so an entry frees in one call. */
static char *pack_strings(const struct key_row *r, const char **principal, const char **groups,
			  const char **models)
{
	size_t n = strlen(r->principal) + 1 + 1;
	for (int i = 0; i < r->ngroups; i++)
		n += strlen(r->groups[i]) + 1;
	for (int i = 0; i < r->nmodels; i++)
		n += strlen(r->models[i]) + 1;
	char *s = malloc(n), *p = s;
	if (!s)
		return NULL;
	size_t l = strlen(r->principal) + 1;
	memcpy(p, r->principal, l);
	*principal = p;
	p += l;
	*groups = p;
	for (int i = 0; i < r->ngroups; i++) {
		if (i)
			*p++ = ',';
		l = strlen(r->groups[i]);
		memcpy(p, r->groups[i], l);
		p += l;
	}
	*p++ = 0;
	*models = p;
	for (int i = 0; i < r->nmodels; i++) {
		l = strlen(r->models[i]) + 1;
		memcpy(p, r->models[i], l);
		p += l;
	}
	return s;
}

int keys_put(struct key_cache *c, const struct key_row *r)
{
	if (!id_valid(r->id) || !r->principal || !r->principal[0] || r->ngroups < 0 ||
	    r->nmodels < 0)
		return -1;
	for (int i = 0; i < r->ngroups; i++)
		if (!r->groups[i] || strchr(r->groups[i], ','))
			return -1;
	for (int i = 0; i < r->nmodels; i++)
		if (!r->models[i])
			return -1;
	struct key_entry *e = find_slot(c->slots, c->cap, r->id);
	int fresh = !e->id[0];
	if (fresh) {
		if (c->count >= c->max)
			return -1;
		/* Keep the load factor at most 1/2 so probes stay short. */
		if ((c->count + 1) * 2 > c->cap) {
			if (grow(c) != 0)
				return -1;
			e = find_slot(c->slots, c->cap, r->id);
		}
	}
	const char *principal, *groups, *models;
	char *strings = pack_strings(r, &principal, &groups, &models);
	if (!strings)
		return -1;
	free(e->strings);
	memcpy(e->id, r->id, sizeof e->id);
	memcpy(e->hash, r->hash, sizeof e->hash);
	e->expires_ms = r->expires_ms;
	e->revoked = r->revoked;
	e->principal = principal;
	e->groups = groups;
	e->models = models;
	e->nmodels = r->nmodels;
	e->strings = strings;
	if (fresh)
		c->count++;
	return 0;
}

int keys_model_allowed(const struct key_entry *e, const char *model)
{
	if (e->nmodels == 0)
		return 1;
	const char *p = e->models;
	for (int i = 0; i < e->nmodels; i++) {
		if (strcmp(p, model) == 0)
			return 1;
		p += strlen(p) + 1;
	}
	return 0;
}

void keys_free(struct key_cache *c)
{
	if (c->slots)
		for (size_t i = 0; i < c->cap; i++)
			free(c->slots[i].strings);
	free(c->slots);
	memset(c, 0, sizeof *c);
}
