/* Unit tests of auditor/filter.c: every filter, combinations, the limit bounds, bad
 * times refused, what a search must name, and that user text never reaches the SQL. */
#include "check.h"
#include "../../auditor/filter.h"

#include <stdio.h>
#include <string.h>

#define NOW   1700000000000000LL /* 2023-11-14T22:13:20Z */
#define SEL   "SELECT event::text FROM audit.audit_events"
#define ORDER " ORDER BY event_time, event_id LIMIT $%d::bigint"
#define RID   "0123456789abcdef0123456789abcdef"

static char why[200];

static int set(struct filter *f, const char *name, const char *v)
{
	why[0] = 0;
	return filter_set(f, name, v, NOW, why, sizeof why);
}

static int build(const struct filter *f, struct filter_sql *q)
{
	why[0] = 0;
	memset(q, 0, sizeof *q);
	return filter_build(f, SEL, q, why, sizeof why);
}

int main(void)
{
	struct filter f;
	struct filter_sql q;
	char want[FILTER_SQL_MAX];

	/* Each equality filter alone: its column, its value as $1, the default limit $2. */
	static const char *const eq[][2] = {
	    {"request_id", RID},   {"principal", "alice@example.org"},
	    {"model", "mock-llm"}, {"endpoint", "ep-1"},
	    {"outcome", "denied"}, {"event_type", "dispatch.result"},
	};
	for (size_t i = 0; i < sizeof eq / sizeof eq[0]; i++) {
		filter_init(&f, 100, 1000, FILTER_NEED_START);
		CHECK_EQ_INT(set(&f, eq[i][0], eq[i][1]), 0);
		CHECK_EQ_INT(build(&f, &q), 0);
		snprintf(want, sizeof want, SEL " WHERE true AND %s = $1" ORDER, eq[i][0], 2);
		CHECK_EQ_STR(q.sql, want);
		CHECK_EQ_INT(q.nparams, 2);
		CHECK_EQ_STR(q.params[0], eq[i][1]);
		CHECK_EQ_STR(q.params[1], "100");
	}

	/* Every filter at once: bound in a fixed order, whatever order they were set in. */
	filter_init(&f, 1000, 100000, FILTER_NEED_ANY);
	CHECK_EQ_INT(set(&f, "event_type", "request.received"), 0);
	CHECK_EQ_INT(set(&f, "until", "2023-11-14T00:00:00Z"), 0);
	CHECK_EQ_INT(set(&f, "principal", "bob"), 0);
	CHECK_EQ_INT(set(&f, "limit", "5"), 0);
	CHECK_EQ_INT(set(&f, "since", "2023-11-13"), 0);
	CHECK_EQ_INT(set(&f, "outcome", "ok"), 0);
	CHECK_EQ_INT(set(&f, "endpoint", "e"), 0);
	CHECK_EQ_INT(set(&f, "model", "m"), 0);
	CHECK_EQ_INT(set(&f, "request_id", RID), 0);
	CHECK_EQ_INT(build(&f, &q), 0);
	CHECK_EQ_STR(q.sql,
		     SEL " WHERE true AND request_id = $1 AND principal = $2 AND model = $3 AND "
			 "endpoint = $4 AND outcome = $5 AND event_type = $6 AND event_time >= "
			 "timestamptz 'epoch' + $7::bigint * interval '1 microsecond' AND "
			 "event_time < timestamptz 'epoch' + $8::bigint * interval '1 microsecond'"
			 " ORDER BY event_time, event_id LIMIT $9::bigint");
	CHECK_EQ_INT(q.nparams, 9);
	const char *const bound[] = {
	    RID, "bob", "m", "e", "ok", "request.received", "1699833600000000", "1699920000000000",
	    "5"};
	for (int i = 0; i < 9; i++)
		CHECK_EQ_STR(q.params[i], bound[i]);

	/* A combination: principal and a relative since. */
	filter_init(&f, 100, 1000, FILTER_NEED_START);
	CHECK_EQ_INT(set(&f, "principal", "p"), 0);
	CHECK_EQ_INT(set(&f, "since", "1h"), 0);
	CHECK_EQ_INT(build(&f, &q), 0);
	CHECK_EQ_INT(q.nparams, 3);
	CHECK_EQ_STR(q.params[1], "1699996400000000");
	CHECK(strstr(q.sql, "principal = $1 AND event_time >= ") != NULL);

	/* User text is only ever a parameter: hostile values leave the SQL unchanged. */
	filter_init(&f, 100, 1000, FILTER_NEED_START);
	CHECK_EQ_INT(set(&f, "principal", "x' OR '1'='1"), 0);
	CHECK_EQ_INT(set(&f, "model", "m; DROP TABLE audit.audit_events; --"), 0);
	CHECK_EQ_INT(build(&f, &q), 0);
	CHECK_EQ_STR(q.sql, SEL " WHERE true AND principal = $1 AND model = $2"
				" ORDER BY "
				"event_time, event_id LIMIT $3::bigint");
	CHECK(strchr(q.sql, '\'') == strstr(q.sql, "'epoch'")); /* no quote at all */
	CHECK_EQ_STR(q.params[0], "x' OR '1'='1");

	/* Limits: default, bounds, refusals (the limit stays as it was). */
	filter_init(&f, 100, 1000, FILTER_NEED_START);
	CHECK_EQ_INT(set(&f, "limit", "1"), 0);
	CHECK_EQ_INT(f.limit, 1);
	CHECK_EQ_INT(set(&f, "limit", "1000"), 0);
	CHECK_EQ_INT(f.limit, 1000);
	const char *bad_limits[] = {"0",   "1001", "-1",  "",    " 5",
				    "5 ",  "+5",   "1e3", "abc", "99999999999999999999999",
				    "0x10"};
	for (size_t i = 0; i < sizeof bad_limits / sizeof bad_limits[0]; i++) {
		CHECK_EQ_INT(set(&f, "limit", bad_limits[i]), -1);
		CHECK_EQ_STR(why, "limit must be 1..1000");
	}
	CHECK_EQ_INT(f.limit, 1000);
	filter_init(&f, 1000, 100000, FILTER_NEED_ANY);
	CHECK_EQ_INT(set(&f, "limit", "100000"), 0);
	CHECK_EQ_INT(set(&f, "limit", "100001"), -1);
	CHECK_EQ_STR(why, "limit must be 1..100000");
	CHECK_EQ_INT(set(&f, "principal", "p"), 0);
	CHECK_EQ_INT(build(&f, &q), 0);
	CHECK_EQ_STR(q.params[q.nparams - 1], "100000");
	filter_init(&f, 1000, 100000, FILTER_NEED_ANY); /* the default is bound when unset */
	CHECK_EQ_INT(set(&f, "principal", "p"), 0);
	CHECK_EQ_INT(build(&f, &q), 0);
	CHECK_EQ_STR(q.params[q.nparams - 1], "1000");

	/* Bad times refused, with a message that does not echo the value. */
	const char *bad_times[] = {
	    "yesterday", "",    "2024-13-01",          "2024-02-30T00:00:00Z",
	    "15",        "-1h", "2024-05-01T12:00:00", "<script>"};
	for (size_t i = 0; i < sizeof bad_times / sizeof bad_times[0]; i++) {
		filter_init(&f, 100, 1000, FILTER_NEED_START);
		CHECK_EQ_INT(set(&f, "since", bad_times[i]), -1);
		CHECK_EQ_STR(why, "since: not RFC 3339 or an age like 15m, 24h, 7d");
		CHECK_EQ_INT(f.has_since, 0);
		CHECK_EQ_INT(set(&f, "until", bad_times[i]), -1);
		CHECK_EQ_INT(f.has_until, 0);
	}
	/* An empty or inverted range is refused rather than run. */
	filter_init(&f, 100, 1000, FILTER_NEED_START);
	CHECK_EQ_INT(set(&f, "since", "2024-05-02"), 0);
	CHECK_EQ_INT(set(&f, "until", "2024-05-01"), 0);
	CHECK_EQ_INT(build(&f, &q), -1);
	CHECK_EQ_STR(why, "since must be before until");
	CHECK_EQ_INT(set(&f, "until", "2024-05-02"), 0);
	CHECK_EQ_INT(build(&f, &q), -1);
	CHECK_EQ_INT(set(&f, "until", "2024-05-02T00:00:00.000001Z"), 0);
	CHECK_EQ_INT(build(&f, &q), 0);

	/* request_id is checked; unknown names are refused. */
	filter_init(&f, 100, 1000, FILTER_NEED_START);
	CHECK_EQ_INT(set(&f, "request_id", "NOT-HEX"), -1);
	CHECK_EQ_STR(why, "request_id must be 32 lowercase hex digits");
	CHECK_EQ_INT(set(&f, "request_id", "0123456789ABCDEF0123456789ABCDEF"), -1);
	CHECK(f.eq[FILTER_REQUEST_ID] == NULL);
	CHECK_EQ_INT(set(&f, "colour", "red"), -1);
	CHECK_EQ_INT(set(&f, "event_time", "x"), -1); /* a column, but not a filter */

	/* What a search must name. The API: a filter or since. */
	filter_init(&f, 100, 1000, FILTER_NEED_START);
	CHECK_EQ_INT(build(&f, &q), -1);
	CHECK_EQ_STR(why, "give since or a filter (principal, request_id, ...)");
	CHECK_EQ_INT(set(&f, "until", "1h"), 0);
	CHECK_EQ_INT(build(&f, &q), -1); /* until alone would scan back to the start */
	CHECK_EQ_INT(set(&f, "limit", "10"), 0);
	CHECK_EQ_INT(build(&f, &q), -1); /* a limit is not a filter */
	CHECK_EQ_INT(set(&f, "since", "2h"), 0);
	CHECK_EQ_INT(build(&f, &q), 0);
	/* The CLI: any filter or time bound. */
	filter_init(&f, 1000, 100000, FILTER_NEED_ANY);
	CHECK_EQ_INT(build(&f, &q), -1);
	CHECK_EQ_INT(set(&f, "until", "1h"), 0);
	CHECK_EQ_INT(build(&f, &q), 0);
	CHECK_EQ_STR(q.sql, SEL " WHERE true AND event_time < timestamptz 'epoch' + $1::bigint * "
				"interval '1 microsecond' ORDER BY event_time, event_id LIMIT "
				"$2::bigint");
	CHECK_EQ_STR(q.params[0], "1699996400000000");

	/* Every name filter_names lists is accepted. */
	int n = 0;
	filter_init(&f, 100, 1000, FILTER_NEED_START);
	for (int i = 0; filter_names[i]; i++, n++) {
		const char *v = strcmp(filter_names[i], "request_id") == 0 ? RID
				: strcmp(filter_names[i], "limit") == 0    ? "7"
				: strcmp(filter_names[i], "since") == 0    ? "2h"
				: strcmp(filter_names[i], "until") == 0    ? "1h"
									   : "v";
		CHECK_EQ_INT(set(&f, filter_names[i], v), 0);
	}
	CHECK_EQ_INT(n, FILTER_NFIELDS + 3);
	CHECK_EQ_INT(build(&f, &q), 0);
	CHECK_EQ_INT(q.nparams, FILTER_PARAMS_MAX);

	/* A SELECT too long for the buffer is refused, not cut. */
	char huge[FILTER_SQL_MAX + 10];
	memset(huge, 'x', sizeof huge - 1);
	huge[sizeof huge - 1] = 0;
	CHECK_EQ_INT(filter_build(&f, huge, &q, why, sizeof why), -1);
	return check_done();
}
