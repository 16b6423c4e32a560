/* Token usage per principal and UTC day, counted from gw.usage: the running total the
 * later token limits read, plus the deltas not yet written to authz.usage. Bounded by
 * GW_AUTHZ_USAGE_MAX entries; one flush to PostgreSQL at a time. */
#ifndef GW_AUTHZ_USAGE_H
#define GW_AUTHZ_USAGE_H

#include <stddef.h>
#include <stdint.h>

/* Owned by its table; principal is malloc'd, NULL marks a free slot. */
struct usage_entry {
	char *principal;
	int32_t day;      /* days since 1970-01-01, UTC */
	int64_t tokens;   /* counted by this process for that day */
	int64_t delta;    /* not yet in PostgreSQL; includes `flushing` */
	int64_t flushing; /* the part of delta in the flush under way */
};

/* Owns slots and their entries. */
struct usage_table {
	struct usage_entry *slots;
	size_t cap, count, max;
	int flushing; /* a flush is under way */
};

int usage_init(struct usage_table *t, size_t max);
/* Adds tokens; -1 when the table is full (after dropping settled days) or out of memory. */
int usage_add(struct usage_table *t, const char *principal, int32_t day, int64_t tokens);
/* Tokens counted for (principal, day), 0 when unknown. */
int64_t usage_tokens(const struct usage_table *t, const char *principal, int32_t day);
/* Of those, the tokens already written to PostgreSQL. */
int64_t usage_committed(const struct usage_table *t, const char *principal, int32_t day);
/* Drops entries of days before `today` that have nothing left to write. */
void usage_gc(struct usage_table *t, int32_t today);
/* Starts a flush: marks every pending delta and returns in *json (malloc'd, caller frees)
 * a JSON array [{"principal","day":"YYYY-MM-DD","tokens"}]. Returns 1 when a flush
 * started, 0 when there is nothing to write (or one is already under way), -1 when out
 * of memory (nothing marked). */
int usage_flush_begin(struct usage_table *t, char **json, size_t *rows);
/* Ends the flush: committed deltas are subtracted; on failure they stay for the next. */
void usage_flush_end(struct usage_table *t, int committed);
/* Sum of deltas not yet written. */
int64_t usage_pending(const struct usage_table *t);
void usage_free(struct usage_table *t);

/* The UTC day of a unix time in ms. */
int32_t usage_day(int64_t unix_ms);
/* A day as YYYY-MM-DD (cap >= 11). */
void usage_day_str(int32_t day, char *out, size_t cap);

#endif
