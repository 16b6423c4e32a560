/* Retention: keep the newest GW_BACKUP_KEEP_LAST good snapshots and every snapshot
 * younger than GW_BACKUP_KEEP_DAYS; delete the rest (dump and manifest). */
#ifndef BACKUP_RETENTION_H
#define BACKUP_RETENTION_H

#include <stddef.h>
#include <time.h>

#include "store.h"

/* The time a snapshot id names (its start, UTC); -1 when id is not one. */
int retention_id_time(const char *id, time_t *out);

/* Decides for v (newest first, as store_list gives) which to keep: keep[i] = 1 or 0.
 * Only good (STORE_OK) snapshots count towards keep_last, so broken ones never push a
 * good one out. Returns how many are to be deleted. */
size_t retention_plan(const struct store_entry *v, size_t n, long long keep_last,
		      long long keep_days, time_t now, unsigned char *keep);

/* Lists the directory, deletes what the plan does not keep and calls deleted for each
 * one removed (dump and manifest both gone). Returns the number deleted, -1 when the
 * directory cannot be listed (logged). A deletion that fails is logged and skipped. */
int retention_apply(struct store *st, long long keep_last, long long keep_days, time_t now,
		    void (*deleted)(void *arg, const struct store_entry *e), void *arg);

#endif
