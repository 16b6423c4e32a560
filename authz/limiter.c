/* Sliding-window rate limits, concurrency slots and day/month token quotas. */
#include "limiter.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* An entry unused this long (and holding nothing) is dropped; its quota base is loaded
 * again from PostgreSQL if it comes back. */
#define IDLE_DROP_MS (5 * 60 * 1000)

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return h ^ (h >> 31);
}

static size_t pow2_at_least(size_t n)
{
	size_t c = 64;
	while (c < n && c < ((size_t)1 << 30))
		c <<= 1;
	return c;
}

static int table_init(struct lim_table *t, size_t max)
{
	t->max = max;
	t->count = 0;
	t->nbuckets = pow2_at_least(max / 2 + 1);
	t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
	return t->buckets ? 0 : -1;
}

static void entry_free(struct lim_entry *e)
{
	free(e->name);
	free(e->groups);
	free(e);
}

static void table_free(struct lim_table *t)
{
	for (size_t i = 0; t->buckets && i < t->nbuckets; i++)
		for (struct lim_entry *e = t->buckets[i], *n; e; e = n) {
			n = e->next;
			entry_free(e);
		}
	free(t->buckets);
	t->buckets = NULL;
}

static struct lim_entry *table_get(struct lim_table *t, const char *name, int create)
{
	size_t b = hash_str(name) & (t->nbuckets - 1);
	for (struct lim_entry *e = t->buckets[b]; e; e = e->next)
		if (strcmp(e->name, name) == 0)
			return e;
	if (!create || t->count >= t->max)
		return NULL;
	struct lim_entry *e = calloc(1, sizeof *e);
	if (!e || !(e->name = strdup(name))) {
		free(e);
		return NULL;
	}
	e->next = t->buckets[b];
	t->buckets[b] = e;
	t->count++;
	return e;
}

int limiter_init(struct limiter *l, size_t max_principals, size_t max_slots)
{
	memset(l, 0, sizeof *l);
	l->max_slots = max_slots;
	l->nslots_buckets = pow2_at_least(max_slots / 2 + 1);
	l->slots = calloc(l->nslots_buckets, sizeof *l->slots);
	if (!l->slots || table_init(&l->principals, max_principals) != 0 ||
	    table_init(&l->groups, max_principals) != 0 ||
	    table_init(&l->quota_groups, max_principals) != 0) {
		limiter_free(l);
		return -1;
	}
	return 0;
}

void limiter_free(struct limiter *l)
{
	for (size_t i = 0; l->slots && i < l->nslots_buckets; i++)
		for (struct lim_slot *s = l->slots[i], *n; s; s = n) {
			n = s->next;
			free(s);
		}
	free(l->slots);
	l->slots = NULL;
	table_free(&l->principals);
	table_free(&l->groups);
	table_free(&l->quota_groups);
}

/* ---- windows ---- */

static void window_advance(struct window *w, int64_t now_s)
{
	if (now_s <= w->base_s)
		return;
	int64_t gap = now_s - w->base_s;
	if (gap >= LIMITS_WINDOW_S) {
		memset(w->counts, 0, sizeof w->counts);
	} else {
		for (int64_t s = w->base_s + 1; s <= now_s; s++)
			w->counts[s % LIMITS_WINDOW_S] = 0;
	}
	w->base_s = now_s;
}

void window_add(struct window *w, int64_t now_s, int64_t n)
{
	window_advance(w, now_s);
	/* A clock step backwards counts into the newest second rather than the past. */
	w->counts[w->base_s % LIMITS_WINDOW_S] += n;
}

int64_t window_sum(struct window *w, int64_t now_s)
{
	window_advance(w, now_s);
	int64_t sum = 0;
	for (int i = 0; i < LIMITS_WINDOW_S; i++)
		sum += w->counts[i];
	return sum;
}

int64_t window_retry_s(struct window *w, int64_t now_s, int64_t max, int64_t need)
{
	int64_t sum = window_sum(w, now_s);
	int64_t excess = sum + need - max;
	if (excess <= 0)
		return 0;
	/* Oldest second first: it leaves the window LIMITS_WINDOW_S seconds after it began. */
	for (int64_t s = w->base_s - LIMITS_WINDOW_S + 1; s <= w->base_s; s++) {
		excess -= w->counts[((s % LIMITS_WINDOW_S) + LIMITS_WINDOW_S) % LIMITS_WINDOW_S];
		if (excess <= 0)
			return s + LIMITS_WINDOW_S - now_s;
	}
	return LIMITS_WINDOW_S;
}

/* ---- calendar ---- */

int64_t limits_to_midnight_s(int64_t now_ms)
{
	int64_t s = now_ms / 1000;
	return 86400 - (s % 86400);
}

int64_t limits_to_month_end_s(int64_t now_ms)
{
	time_t t = (time_t)(now_ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	tm.tm_mday = 1;
	tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
	tm.tm_mon += 1;
	time_t next = timegm(&tm);
	return (int64_t)(next - t);
}

/* ---- slots ---- */

static struct lim_slot **slot_find(struct limiter *l, const char *id)
{
	struct lim_slot **pp = &l->slots[hash_str(id) & (l->nslots_buckets - 1)];
	while (*pp && strcmp((*pp)->id, id) != 0)
		pp = &(*pp)->next;
	return pp;
}

static void slot_drop(struct limiter *l, struct lim_slot **pp)
{
	struct lim_slot *s = *pp;
	*pp = s->next;
	if (s->who && s->who->inflight > 0)
		s->who->inflight--;
	for (int i = 0; i < s->ngroups; i++)
		if (s->groups[i]->inflight > 0)
			s->groups[i]->inflight--;
	l->nslots--;
	free(s);
}

/* ---- checks ---- */

static int refuse(struct lim_refusal *r, const char *limit, const char *scope, int64_t value,
		  int64_t max, int64_t retry)
{
	memset(r, 0, sizeof *r);
	snprintf(r->limit, sizeof r->limit, "%s", limit);
	snprintf(r->scope, sizeof r->scope, "%s", scope);
	r->value = value;
	r->max = max;
	r->retry_after_s = retry < 1 ? 1 : retry;
	return 1;
}

/* Rate and concurrency checks shared by principals and groups. */
static int check_entry(struct lim_entry *e, const struct limits *lim, const char *scope,
		       int64_t now_s, struct lim_refusal *r)
{
	if (lim->rpm) {
		int64_t n = window_sum(&e->req, now_s);
		if (n + 1 > lim->rpm)
			return refuse(r, "requests_per_minute", scope, n, lim->rpm,
				      window_retry_s(&e->req, now_s, lim->rpm, 1));
	}
	if (lim->concurrent && e->inflight + 1 > lim->concurrent)
		/* A slot frees when a request ends: retry soon. */
		return refuse(r, "concurrent", scope, e->inflight, lim->concurrent, 1);
	if (lim->tpm) {
		int64_t n = window_sum(&e->tok, now_s);
		if (n >= lim->tpm)
			return refuse(r, "tokens_per_minute", scope, n, lim->tpm,
				      window_retry_s(&e->tok, now_s, lim->tpm, 1));
	}
	return 0;
}

static int limits_any(const struct limits *x)
{
	return x->rpm || x->tpm || x->concurrent || x->tokens_day || x->tokens_month;
}

static void set_groups(struct lim_entry *e, const char *groups)
{
	if (e->groups && strcmp(e->groups, groups) == 0)
		return;
	char *g = strdup(groups);
	if (!g)
		return; /* keeps the previous list: group token windows may lag */
	free(e->groups);
	e->groups = g;
}

/* A group's day/month quota: this copy's tokens today plus what PostgreSQL had from the
 * other copies (and earlier days of the month) at the last sync of today. */
static int check_group_quota(struct limiter *l, const struct limits *gl, const char *name,
			     const char *scope, int64_t now_ms, struct lim_refusal *r)
{
	if (!gl->tokens_day && !gl->tokens_month)
		return 0;
	int32_t today = usage_day(now_ms);
	struct lim_entry *q = table_get(&l->quota_groups, name, 0);
	int loaded = q && q->quota == QUOTA_LOADED && q->quota_day == today;
	int64_t local = l->group_usage ? usage_tokens(l->group_usage, name, today) : 0;
	int64_t day = local + (loaded ? q->day_adj : 0);
	int64_t month = local + (loaded ? q->month_adj : 0);
	if (gl->tokens_day && day >= gl->tokens_day)
		return refuse(r, "tokens_per_day", scope, day, gl->tokens_day,
			      limits_to_midnight_s(now_ms));
	if (gl->tokens_month && month >= gl->tokens_month)
		return refuse(r, "tokens_per_month", scope, month, gl->tokens_month,
			      limits_to_month_end_s(now_ms));
	return 0;
}

int limiter_admit(struct limiter *l, const struct policy *p, const struct identity *id,
		  const char *request_id, int64_t deadline_ms, int64_t now_ms, int64_t day_tokens,
		  struct lim_refusal *r)
{
	int64_t now_s = now_ms / 1000;
	struct limits pl = policy_principal_limits(p, id->principal);
	struct lim_entry *pe = table_get(&l->principals, id->principal, 1);
	if (!pe)
		return -1;
	pe->last_ms = now_ms;
	set_groups(pe, id->groups);
	if (pe->quota == QUOTA_UNKNOWN) {
		/* First sight: load the day and month totals; decide from memory meanwhile. */
		pe->quota = QUOTA_QUEUED;
		pe->load_next = NULL;
		if (l->load_tail)
			l->load_tail->load_next = pe;
		else
			l->load_head = pe;
		l->load_tail = pe;
	}
	if (check_entry(pe, &pl, "principal", now_s, r))
		return 1;
	int loaded = pe->quota == QUOTA_LOADED && pe->quota_day == (int32_t)(now_ms / 86400000);
	int64_t day = day_tokens + (loaded ? pe->day_adj : 0);
	int64_t month = day_tokens + (loaded ? pe->month_adj : 0);
	if (pl.tokens_day && day >= pl.tokens_day)
		return refuse(r, "tokens_per_day", "principal", day, pl.tokens_day,
			      limits_to_midnight_s(now_ms));
	if (pl.tokens_month && month >= pl.tokens_month)
		return refuse(r, "tokens_per_month", "principal", month, pl.tokens_month,
			      limits_to_month_end_s(now_ms));

	struct lim_entry *ge[LIMITS_MAX_GROUPS];
	int ng = 0;
	char name[256];
	for (const char *s = id->groups; *s && ng < LIMITS_MAX_GROUPS;) {
		const char *e = strchr(s, ',');
		size_t n = e ? (size_t)(e - s) : strlen(s);
		if (n && n < sizeof name) {
			memcpy(name, s, n);
			name[n] = 0;
			const struct limits *gl = policy_group_limits(p, name);
			if (gl && limits_any(gl)) {
				struct lim_entry *g = table_get(&l->groups, name, 1);
				if (!g)
					return -1;
				g->last_ms = now_ms;
				char scope[300];
				snprintf(scope, sizeof scope, "group:%s", name);
				if (check_entry(g, gl, scope, now_s, r) ||
				    check_group_quota(l, gl, name, scope, now_ms, r))
					return 1;
				ge[ng++] = g;
			}
		}
		if (!e)
			break;
		s = e + 1;
	}

	struct lim_slot **pp = slot_find(l, request_id);
	if (!*pp) {
		if (l->nslots >= l->max_slots)
			return -1;
		struct lim_slot *s = calloc(1, sizeof *s);
		if (!s)
			return -1;
		snprintf(s->id, sizeof s->id, "%s", request_id);
		s->who = pe;
		memcpy(s->groups, ge, (size_t)ng * sizeof ge[0]);
		s->ngroups = ng;
		s->deadline_ms = deadline_ms;
		*pp = s;
		l->nslots++;
		pe->inflight++;
		for (int i = 0; i < ng; i++)
			ge[i]->inflight++;
	}
	/* Otherwise a redelivered request: it already holds its slot. */
	window_add(&pe->req, now_s, 1);
	for (int i = 0; i < ng; i++)
		window_add(&ge[i]->req, now_s, 1);
	return 0;
}

void limiter_usage(struct limiter *l, const char *request_id, const char *principal, int64_t tokens,
		   int64_t now_ms)
{
	int64_t now_s = now_ms / 1000;
	if (request_id) {
		struct lim_slot **pp = slot_find(l, request_id);
		if (*pp)
			slot_drop(l, pp);
	}
	struct lim_entry *pe = table_get(&l->principals, principal, 0);
	if (!pe || tokens <= 0)
		return;
	window_add(&pe->tok, now_s, tokens);
	char name[256];
	for (const char *s = pe->groups ? pe->groups : ""; *s;) {
		const char *e = strchr(s, ',');
		size_t n = e ? (size_t)(e - s) : strlen(s);
		if (n && n < sizeof name) {
			memcpy(name, s, n);
			name[n] = 0;
			struct lim_entry *g = table_get(&l->groups, name, 0);
			if (g)
				window_add(&g->tok, now_s, tokens);
		}
		if (!e)
			break;
		s = e + 1;
	}
}

struct lim_entry *limiter_next_load(struct limiter *l)
{
	struct lim_entry *e = l->load_head;
	if (!e)
		return NULL;
	l->load_head = e->load_next;
	if (!l->load_head)
		l->load_tail = NULL;
	e->load_next = NULL;
	e->quota = QUOTA_LOADING;
	return e;
}

void limiter_loaded(struct limiter *l, struct lim_entry *e, int ok, int64_t db_day,
		    int64_t db_month, int64_t committed)
{
	if (!ok) {
		e->quota = QUOTA_UNKNOWN; /* the next request queues it again */
		return;
	}
	e->day_adj = db_day - committed;
	e->month_adj = db_month - committed;
	e->quota = QUOTA_LOADED;
}

static void table_sweep(struct lim_table *t, int64_t now_ms, int day_changed)
{
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct lim_entry **pp = &t->buckets[i];
		while (*pp) {
			struct lim_entry *e = *pp;
			if (day_changed && e->quota == QUOTA_LOADED)
				e->quota = QUOTA_UNKNOWN;
			int busy = e->inflight > 0 || e->quota == QUOTA_QUEUED ||
				   e->quota == QUOTA_LOADING;
			if (!busy && now_ms - e->last_ms > IDLE_DROP_MS) {
				*pp = e->next;
				t->count--;
				entry_free(e);
				continue;
			}
			pp = &e->next;
		}
	}
}

size_t limiter_tick(struct limiter *l, int64_t now_ms, int day_changed)
{
	size_t expired = 0;
	for (size_t i = 0; i < l->nslots_buckets; i++) {
		struct lim_slot **pp = &l->slots[i];
		while (*pp) {
			if ((*pp)->deadline_ms <= now_ms) {
				slot_drop(l, pp);
				expired++;
			} else {
				pp = &(*pp)->next;
			}
		}
	}
	table_sweep(&l->principals, now_ms, day_changed);
	table_sweep(&l->groups, now_ms, day_changed);
	return expired;
}

/* ---- group quotas ---- */

static int has_quota(const struct limits *x)
{
	return x && (x->tokens_day || x->tokens_month);
}

int limiter_quota_groups(struct limiter *l, const struct policy *p)
{
	struct lim_table *t = &l->quota_groups;
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct lim_entry **pp = &t->buckets[i];
		while (*pp) {
			struct lim_entry *e = *pp;
			if (!has_quota(policy_group_limits(p, e->name))) {
				*pp = e->next;
				t->count--;
				entry_free(e);
				continue;
			}
			pp = &e->next;
		}
	}
	int rc = 0;
	for (int i = 0; i < p->ngroups; i++)
		if (has_quota(&p->groups[i].l) && !table_get(t, p->groups[i].name, 1))
			rc = -1;
	return rc ? -1 : (int)t->count;
}

int limiter_group_sync_begin(struct limiter *l, int32_t day, char **json)
{
	*json = NULL;
	struct lim_table *t = &l->quota_groups;
	if (t->count == 0)
		return 0;
	json_t *arr = json_array();
	if (!arr)
		return -1;
	for (size_t i = 0; i < t->nbuckets; i++)
		for (struct lim_entry *e = t->buckets[i]; e; e = e->next)
			if (json_array_append_new(arr, json_string(e->name)) != 0) {
				json_decref(arr);
				return -1;
			}
	char *s = json_dumps(arr, JSON_COMPACT);
	json_decref(arr);
	if (!s)
		return -1;
	l->sync_gen++;
	for (size_t i = 0; i < t->nbuckets; i++)
		for (struct lim_entry *e = t->buckets[i]; e; e = e->next) {
			/* One query at a time on the connection: what this copy has committed
			 * now is exactly its share of what the sync reads. */
			e->sync_gen = l->sync_gen;
			e->sync_committed =
			    l->group_usage ? usage_committed(l->group_usage, e->name, day) : 0;
			e->sync_db_day = e->sync_db_month = 0;
		}
	*json = s;
	return (int)t->count;
}

void limiter_group_synced(struct limiter *l, const char *group, int64_t db_day, int64_t db_month)
{
	struct lim_entry *e = table_get(&l->quota_groups, group, 0);
	/* A group added by a policy reload while the query ran waits for the next sync. */
	if (!e || e->sync_gen != l->sync_gen)
		return;
	e->sync_db_day = db_day;
	e->sync_db_month = db_month;
}

void limiter_group_sync_end(struct limiter *l, int ok, int32_t day)
{
	struct lim_table *t = &l->quota_groups;
	for (size_t i = 0; i < t->nbuckets; i++)
		for (struct lim_entry *e = t->buckets[i]; e; e = e->next) {
			if (e->sync_gen != l->sync_gen)
				continue;
			e->sync_gen = 0;
			if (!ok)
				continue;
			e->day_adj = e->sync_db_day - e->sync_committed;
			e->month_adj = e->sync_db_month - e->sync_committed;
			e->quota_day = day;
			e->quota = QUOTA_LOADED;
		}
}

static int add_name(const char **out, int n, int max, const char *name)
{
	for (int i = 0; i < n; i++)
		if (strcmp(out[i], name) == 0)
			return n;
	if (n < max)
		out[n++] = name;
	return n;
}

int limiter_quota_groups_of(struct limiter *l, const char *request_id, const char *principal,
			    const char **out, int max)
{
	int n = 0;
	if (l->quota_groups.count == 0)
		return 0;
	struct lim_slot *s = request_id ? *slot_find(l, request_id) : NULL;
	if (s) {
		for (int i = 0; i < s->ngroups; i++) {
			struct lim_entry *q = table_get(&l->quota_groups, s->groups[i]->name, 0);
			if (q)
				n = add_name(out, n, max, q->name);
		}
		return n;
	}
	struct lim_entry *pe = table_get(&l->principals, principal, 0);
	char name[256];
	for (const char *g = pe && pe->groups ? pe->groups : ""; *g;) {
		const char *e = strchr(g, ',');
		size_t len = e ? (size_t)(e - g) : strlen(g);
		if (len && len < sizeof name) {
			memcpy(name, g, len);
			name[len] = 0;
			struct lim_entry *q = table_get(&l->quota_groups, name, 0);
			if (q)
				n = add_name(out, n, max, q->name);
		}
		if (!e)
			break;
		g = e + 1;
	}
	return n;
}
