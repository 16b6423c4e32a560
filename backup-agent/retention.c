/* Retention by count and age. Age comes from the snapshot id (its UTC start time), so a
 * snapshot whose manifest is damaged still ages out instead of staying forever. */
#include "retention.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

int retention_id_time(const char *id, time_t *out)
{
	if (!store_id_valid(id))
		return -1;
	struct tm tm;
	memset(&tm, 0, sizeof tm);
	if (sscanf(id, "%4d%2d%2dT%2d%2d%2dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
		   &tm.tm_min, &tm.tm_sec) != 6)
		return -1;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	time_t t = timegm(&tm);
	if (t == (time_t)-1)
		return -1;
	*out = t;
	return 0;
}

size_t retention_plan(const struct store_entry *v, size_t n, long long keep_last,
		      long long keep_days, time_t now, unsigned char *keep)
{
	long long good = 0;
	size_t drop = 0;
	for (size_t i = 0; i < n; i++) {
		time_t t;
		int young = retention_id_time(v[i].id, &t) == 0 &&
			    (long long)(now - t) < keep_days * 86400LL;
		int counted = 0;
		if (v[i].status == STORE_OK && good < keep_last) {
			good++;
			counted = 1;
		}
		keep[i] = (unsigned char)(young || counted);
		if (!keep[i])
			drop++;
	}
	return drop;
}

int retention_apply(struct store *st, long long keep_last, long long keep_days, time_t now,
		    void (*deleted)(void *arg, const struct store_entry *e), void *arg)
{
	struct store_entry *v;
	size_t n;
	if (store_list(st, &v, &n) != 0)
		return -1;
	unsigned char *keep = n ? malloc(n) : NULL;
	if (n && !keep) {
		log_error("out of memory planning retention", LS("dir", st->path));
		free(v);
		return -1;
	}
	size_t drop = retention_plan(v, n, keep_last, keep_days, now, keep);
	int done = 0;
	for (size_t i = 0; drop && i < n; i++) {
		if (keep[i])
			continue;
		char dump[STORE_NAME_MAX], json[STORE_NAME_MAX];
		store_dump_name(v[i].id, dump, sizeof dump);
		store_manifest_name(v[i].id, json, sizeof json);
		/* The dump first: a manifest without its dump lists as MISSING, never as a
		 * snapshot that looks whole. */
		if (store_remove(st, dump) != 0 || store_remove(st, json) != 0)
			continue;
		log_info("retention: snapshot deleted", LS("snapshot_id", v[i].id),
			 LS("status", store_status_name(v[i].status)), LI("keep_last", keep_last),
			 LI("keep_days", keep_days));
		done++;
		if (deleted)
			deleted(arg, &v[i]);
	}
	free(keep);
	free(v);
	return done;
}
