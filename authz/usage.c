/* Per-principal, per-day token counters with write-behind deltas. Open addressing;
 * entries are only removed by usage_gc, which rebuilds the table (rare: once a day, or
 * when full). */
#include "usage.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define USAGE_MIN_CAP 256

int32_t usage_day(int64_t unix_ms)
{
	int64_t d = unix_ms / 86400000;
	if (unix_ms < 0 && unix_ms % 86400000)
		d--;
	return (int32_t)d;
}

void usage_day_str(int32_t day, char *out, size_t cap)
{
	time_t secs = (time_t)day * 86400;
	struct tm tm;
	gmtime_r(&secs, &tm);
	snprintf(out, cap, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
}

static uint64_t entry_hash(const char *principal, int32_t day)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (const unsigned char *p = (const unsigned char *)principal; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	h ^= (uint64_t)(uint32_t)day * 0x9e3779b97f4a7c15ULL;
	return h ^ (h >> 29);
}

int usage_init(struct usage_table *t, size_t max)
{
	memset(t, 0, sizeof *t);
	t->max = max;
	t->cap = USAGE_MIN_CAP;
	t->slots = calloc(t->cap, sizeof *t->slots);
	return t->slots ? 0 : -1;
}

static struct usage_entry *find_slot(struct usage_entry *slots, size_t cap, const char *principal,
				     int32_t day)
{
	size_t i = (size_t)entry_hash(principal, day) & (cap - 1);
	while (slots[i].principal &&
	       (slots[i].day != day || strcmp(slots[i].principal, principal) != 0))
		i = (i + 1) & (cap - 1);
	return &slots[i];
}

/* Moves the entries `keep` accepts into a table of ncap slots. */
static int rebuild(struct usage_table *t, size_t ncap, int32_t today)
{
	struct usage_entry *ns = calloc(ncap, sizeof *ns);
	if (!ns)
		return -1;
	size_t n = 0;
	for (size_t i = 0; i < t->cap; i++) {
		struct usage_entry *e = &t->slots[i];
		if (!e->principal)
			continue;
		if (e->day < today && e->delta == 0 && e->flushing == 0) {
			free(e->principal);
			continue;
		}
		*find_slot(ns, ncap, e->principal, e->day) = *e;
		n++;
	}
	free(t->slots);
	t->slots = ns;
	t->cap = ncap;
	t->count = n;
	return 0;
}

void usage_gc(struct usage_table *t, int32_t today)
{
	/* Out of memory here only means the settled entries stay a little longer. */
	(void)rebuild(t, t->cap, today);
}

int usage_add(struct usage_table *t, const char *principal, int32_t day, int64_t tokens)
{
	struct usage_entry *e = find_slot(t->slots, t->cap, principal, day);
	if (!e->principal) {
		if (t->count >= t->max) {
			usage_gc(t, day);
			if (t->count >= t->max)
				return -1;
		}
		if ((t->count + 1) * 2 > t->cap && rebuild(t, t->cap * 2, INT32_MIN) != 0)
			return -1;
		e = find_slot(t->slots, t->cap, principal, day);
		e->principal = strdup(principal);
		if (!e->principal)
			return -1;
		e->day = day;
		e->tokens = e->delta = e->flushing = 0;
		t->count++;
	}
	e->tokens += tokens;
	e->delta += tokens;
	return 0;
}

int64_t usage_tokens(const struct usage_table *t, const char *principal, int32_t day)
{
	const struct usage_entry *e = find_slot(t->slots, t->cap, principal, day);
	return e->principal ? e->tokens : 0;
}

int64_t usage_committed(const struct usage_table *t, const char *principal, int32_t day)
{
	const struct usage_entry *e = find_slot(t->slots, t->cap, principal, day);
	return e->principal ? e->tokens - e->delta : 0;
}

int64_t usage_pending(const struct usage_table *t)
{
	int64_t n = 0;
	for (size_t i = 0; i < t->cap; i++)
		if (t->slots[i].principal)
			n += t->slots[i].delta;
	return n;
}

int usage_flush_begin(struct usage_table *t, char **json, size_t *rows)
{
	*json = NULL;
	*rows = 0;
	if (t->flushing)
		return 0;
	json_t *arr = json_array();
	if (!arr)
		return -1;
	for (size_t i = 0; i < t->cap; i++) {
		struct usage_entry *e = &t->slots[i];
		if (!e->principal || e->delta == 0)
			continue;
		char day[48];
		usage_day_str(e->day, day, sizeof day);
		json_t *o = json_pack("{s:s, s:s, s:I}", "principal", e->principal, "day", day,
				      "tokens", (json_int_t)e->delta);
		if (!o || json_array_append_new(arr, o) != 0) {
			json_decref(arr);
			return -1;
		}
	}
	if (json_array_size(arr) == 0) {
		json_decref(arr);
		return 0;
	}
	char *s = json_dumps(arr, JSON_COMPACT);
	*rows = json_array_size(arr);
	json_decref(arr);
	if (!s) {
		*rows = 0;
		return -1;
	}
	for (size_t i = 0; i < t->cap; i++)
		if (t->slots[i].principal)
			t->slots[i].flushing = t->slots[i].delta;
	t->flushing = 1;
	*json = s;
	return 1;
}

void usage_flush_end(struct usage_table *t, int committed)
{
	for (size_t i = 0; i < t->cap; i++) {
		struct usage_entry *e = &t->slots[i];
		if (!e->principal)
			continue;
		if (committed)
			e->delta -= e->flushing;
		e->flushing = 0;
	}
	t->flushing = 0;
}

void usage_free(struct usage_table *t)
{
	if (t->slots)
		for (size_t i = 0; i < t->cap; i++)
			free(t->slots[i].principal);
	free(t->slots);
	memset(t, 0, sizeof *t);
}
