/* Audit-event search filters: see filter.h. The SQL is assembled only from the fixed
 * column table below and placeholder numbers; values are bound by PQexecParams or
 * PQsendQueryParams. */
#include "filter.h"
#include "timearg.h"
#include "wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Indexed by enum filter_field; each is also the filter's name. */
static const char *const columns[FILTER_NFIELDS] = {
    "request_id", "principal", "model", "endpoint", "outcome", "event_type",
};

const char *const filter_names[] = {
    "request_id", "principal", "model", "endpoint", "outcome",
    "event_type", "since",     "until", "limit",    NULL,
};

/* Microseconds since the epoch keep a bound exact (no float conversion). */
#define TIME_GE "event_time >= timestamptz 'epoch' + $%d::bigint * interval '1 microsecond'"
#define TIME_LT "event_time < timestamptz 'epoch' + $%d::bigint * interval '1 microsecond'"

void filter_init(struct filter *f, long long limit_default, long long limit_max,
		 enum filter_need need)
{
	memset(f, 0, sizeof *f);
	f->limit = limit_default;
	f->limit_max = limit_max;
	f->need = need;
}

static int set_limit(struct filter *f, const char *v, char *why, size_t whycap)
{
	size_t n = strlen(v);
	long long x = 0;
	if (n == 0 || n > 18 || strspn(v, "0123456789") != n) {
		snprintf(why, whycap, "limit must be 1..%lld", f->limit_max);
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		x = x * 10 + (v[i] - '0');
	if (x < 1 || x > f->limit_max) {
		snprintf(why, whycap, "limit must be 1..%lld", f->limit_max);
		return -1;
	}
	f->limit = x;
	return 0;
}

int filter_set(struct filter *f, const char *name, const char *value, int64_t now_us, char *why,
	       size_t whycap)
{
	if (strcmp(name, "since") == 0 || strcmp(name, "until") == 0) {
		int since = name[0] == 's';
		int64_t t;
		if (timearg_parse(value, now_us, &t) != 0) {
			snprintf(why, whycap, "%s: not RFC 3339 or an age like 15m, 24h, 7d", name);
			return -1;
		}
		*(since ? &f->since_us : &f->until_us) = t;
		*(since ? &f->has_since : &f->has_until) = 1;
		return 0;
	}
	if (strcmp(name, "limit") == 0)
		return set_limit(f, value, why, whycap);
	for (int i = 0; i < FILTER_NFIELDS; i++) {
		if (strcmp(name, columns[i]) != 0)
			continue;
		if (i == FILTER_REQUEST_ID && !wire_id_valid(value)) {
			snprintf(why, whycap, "request_id must be 32 lowercase hex digits");
			return -1;
		}
		f->eq[i] = value;
		return 0;
	}
	snprintf(why, whycap, "unknown filter");
	return -1;
}

static int add(char *buf, size_t cap, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Appends printf-formatted text at *len; -1 when it does not fit. */
static int add(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int w = vsnprintf(buf + *len, cap - *len, fmt, ap);
	va_end(ap);
	if (w < 0 || (size_t)w >= cap - *len)
		return -1;
	*len += (size_t)w;
	return 0;
}

int filter_build(const struct filter *f, const char *select, struct filter_sql *out, char *why,
		 size_t whycap)
{
	int neq = 0;
	for (int i = 0; i < FILTER_NFIELDS; i++)
		neq += f->eq[i] != NULL;
	if (!neq && !f->has_since && (f->need == FILTER_NEED_START || !f->has_until)) {
		snprintf(why, whycap, "%s",
			 f->need == FILTER_NEED_START
			     ? "give since or a filter (principal, request_id, ...)"
			     : "give at least one filter or time bound");
		return -1;
	}
	if (f->has_since && f->has_until && f->since_us >= f->until_us) {
		snprintf(why, whycap, "since must be before until");
		return -1;
	}
	if (f->limit < 1 || f->limit > f->limit_max) {
		snprintf(why, whycap, "limit must be 1..%lld", f->limit_max);
		return -1;
	}
	size_t len = 0, cap = sizeof out->sql;
	int np = 0;
	if (add(out->sql, cap, &len, "%s WHERE true", select) != 0)
		goto too_long;
	for (int i = 0; i < FILTER_NFIELDS; i++) {
		if (!f->eq[i])
			continue;
		out->params[np++] = f->eq[i];
		/* columns[i] is one of this file's constants, never user text. */
		if (add(out->sql, cap, &len, " AND %s = $%d", columns[i], np) != 0)
			goto too_long;
	}
	if (f->has_since) {
		snprintf(out->num[0], sizeof out->num[0], "%lld", (long long)f->since_us);
		out->params[np++] = out->num[0];
		if (add(out->sql, cap, &len, " AND " TIME_GE, np) != 0)
			goto too_long;
	}
	if (f->has_until) {
		snprintf(out->num[1], sizeof out->num[1], "%lld", (long long)f->until_us);
		out->params[np++] = out->num[1];
		if (add(out->sql, cap, &len, " AND " TIME_LT, np) != 0)
			goto too_long;
	}
	snprintf(out->num[2], sizeof out->num[2], "%lld", f->limit);
	out->params[np++] = out->num[2];
	if (add(out->sql, cap, &len, " ORDER BY event_time, event_id LIMIT $%d::bigint", np) != 0)
		goto too_long;
	out->nparams = np;
	return 0;
too_long:
	snprintf(why, whycap, "query text too long");
	return -1;
}
