/* Rate limits, concurrency slots and token quotas per principal and per group. Exact
 * because one principal's requests and usage meet in one authz copy (gw.requests and
 * gw.usage are keyed by the principal hint and co-partitioned). Windows are sliding over
 * 60 one-second buckets; quotas add the totals loaded from authz.usage to what this
 * copy counted since. Group day/month quotas are shared by copies (a group's members
 * spread over partitions), so their totals are re-read from authz.group_usage every sync
 * interval. Pure state, no I/O: serve.c feeds it and loads the quotas. */
#ifndef GW_AUTHZ_LIMITER_H
#define GW_AUTHZ_LIMITER_H

#include "policy.h"
#include "usage.h"

#include <stddef.h>
#include <stdint.h>

#define LIMITS_WINDOW_S   60
#define LIMITS_MAX_GROUPS 16 /* groups with limits tracked per request */

/* A sliding one-minute window of per-second counts. */
struct window {
	int64_t base_s; /* the second counts[base_s % 60] belongs to, newest */
	int64_t counts[LIMITS_WINDOW_S];
};

enum quota_state { QUOTA_UNKNOWN = 0, QUOTA_QUEUED, QUOTA_LOADING, QUOTA_LOADED };

/* One principal or group. Owned by its table; name is malloc'd. */
struct lim_entry {
	char *name;
	struct lim_entry *next; /* hash chain */
	struct window req, tok;
	int64_t inflight;
	int64_t last_ms; /* last use, for eviction */
	char *groups;    /* principals: the groups of the last decision (malloc'd) */
	enum quota_state quota;
	int64_t day_adj, month_adj;  /* PostgreSQL total minus what this copy had committed */
	int32_t quota_day;           /* the day the load was for */
	struct lim_entry *load_next; /* queue of loads to start */
	/* Group quotas: the sync under way (sync_gen), this copy's committed share of the
	 * group's tokens today when it was sent, and the totals its answer brought. */
	uint32_t sync_gen;
	int64_t sync_committed, sync_db_day, sync_db_month;
};

/* One allowed request holding a concurrency slot until its usage arrives or its
 * deadline passes. Owned by the limiter. */
struct lim_slot {
	char id[33];
	struct lim_slot *next; /* hash chain */
	struct lim_entry *who;
	struct lim_entry *groups[LIMITS_MAX_GROUPS];
	int ngroups;
	int64_t deadline_ms;
};

struct lim_table {
	struct lim_entry **buckets;
	size_t nbuckets, count, max;
};

/* Owns the tables, every slot and the load queue links. quota_groups holds one entry
 * per policy group with a day or month quota (never evicted; rebuilt by
 * limiter_quota_groups on every policy load). */
struct limiter {
	struct lim_table principals, groups, quota_groups;
	struct lim_slot **slots;
	size_t nslots_buckets, nslots, max_slots;
	struct lim_entry *load_head, *load_tail;
	/* This copy's tokens per (group, UTC day), owned by the caller; NULL = none. */
	const struct usage_table *group_usage;
	uint32_t sync_gen;
};

/* What refused a request: limit names the limit ("requests_per_minute", ...), scope is
 * "principal" or "group:<name>". */
struct lim_refusal {
	char limit[32];
	char scope[300];
	int64_t retry_after_s;
	int64_t value, max;
};

int limiter_init(struct limiter *l, size_t max_principals, size_t max_slots);
void limiter_free(struct limiter *l);

/* day_tokens/month_tokens: the principal's usage counted in memory for today (the
 * usage table); the limiter adds the loaded PostgreSQL base when known. On success
 * (0) the request is counted and holds a slot under id. On refusal returns 1 and
 * fills r. Returns -1 when the tables are full (nothing counted). A principal seen for
 * the first time is queued for a quota load (limiter_next_load). */
int limiter_admit(struct limiter *l, const struct policy *p, const struct identity *id,
		  const char *request_id, int64_t deadline_ms, int64_t now_ms, int64_t day_tokens,
		  struct lim_refusal *r);

/* Usage reported for a request: frees its slot (if any) and adds tokens to the minute
 * windows of the principal and its groups. */
void limiter_usage(struct limiter *l, const char *request_id, const char *principal, int64_t tokens,
		   int64_t now_ms);

/* The next principal whose quota must be loaded (state becomes LOADING), or NULL. */
struct lim_entry *limiter_next_load(struct limiter *l);
/* The load answered: db totals, and what this copy had committed for that principal
 * and day when the query was sent. ok = 0 puts it back to UNKNOWN (retried later). */
void limiter_loaded(struct limiter *l, struct lim_entry *e, int ok, int64_t db_day,
		    int64_t db_month, int64_t committed);

/* Makes quota_groups the policy's groups with tokens_per_day or tokens_per_month: keeps
 * the entries (and their loaded totals) of groups still there, adds the new ones
 * (unknown until the next sync), drops the others. Returns how many, -1 out of memory
 * (then the table may lack some new groups: they are decided from memory). */
int limiter_quota_groups(struct limiter *l, const struct policy *p);
/* Starts a sync of every quota group for `day`: records this copy's committed share
 * (from group_usage) and returns in *json (malloc'd) a JSON array of the group names.
 * Returns the number of groups, 0 when there are none, -1 out of memory. */
int limiter_group_sync_begin(struct limiter *l, int32_t day, char **json);
/* One row of the sync's answer: the group's PostgreSQL totals for the day and month. */
void limiter_group_synced(struct limiter *l, const char *group, int64_t db_day, int64_t db_month);
/* Ends the sync: ok = 1 applies the totals (a group without a row has none) to the
 * groups of this sync, ok = 0 keeps the previous ones. */
void limiter_group_sync_end(struct limiter *l, int ok, int32_t day);
/* The quota groups a gw.usage message is charged to: the groups the request was admitted
 * with (its slot), else the principal's groups at its last decision. Writes up to max
 * distinct names (valid until the next limiter_quota_groups) and returns how many.
 * Call before limiter_usage, which frees the slot. */
int limiter_quota_groups_of(struct limiter *l, const char *request_id, const char *principal,
			    const char **out, int max);

/* Janitor: frees slots past their deadline (returns how many), drops idle entries, and
 * on a new day forgets loaded quotas (they are loaded again). */
size_t limiter_tick(struct limiter *l, int64_t now_ms, int day_changed);

/* Seconds from now to the next UTC midnight / first of the next month. */
int64_t limits_to_midnight_s(int64_t now_ms);
int64_t limits_to_month_end_s(int64_t now_ms);

/* Window helpers (exposed for tests). */
void window_add(struct window *w, int64_t now_s, int64_t n);
int64_t window_sum(struct window *w, int64_t now_s);
/* Seconds until the sum drops to at most max - need. */
int64_t window_retry_s(struct window *w, int64_t now_s, int64_t max, int64_t need);

#endif
