/* The filters of an audit-event search, shared by `auditor query` (flags) and
 * GET /audit/events (query parameters): checked values in, a parameterised WHERE clause
 * out. Column names come from a fixed table; user text only ever travels as a parameter. */
#ifndef GW_AUDITOR_FILTER_H
#define GW_AUDITOR_FILTER_H

#include <stddef.h>
#include <stdint.h>

/* The equality filters, in the order their parameters are bound. */
enum filter_field {
	FILTER_REQUEST_ID,
	FILTER_PRINCIPAL,
	FILTER_MODEL,
	FILTER_ENDPOINT,
	FILTER_OUTCOME,
	FILTER_EVENT_TYPE,
	FILTER_NFIELDS
};

/* What a search must name before it runs. */
enum filter_need {
	FILTER_NEED_ANY,   /* a filter or either time bound */
	FILTER_NEED_START, /* a filter or since: no scan back to the first event (the API) */
};

/* Plain value type. The strings are borrowed from the caller (argv, a parsed query
 * string) and must outlive the filter_sql built from it. */
struct filter {
	const char *eq[FILTER_NFIELDS]; /* NULL: not filtered on */
	int has_since, has_until;
	int64_t since_us, until_us; /* since inclusive, until exclusive */
	long long limit, limit_max;
	enum filter_need need;
};

#define FILTER_SQL_MAX    2048
#define FILTER_PARAMS_MAX (FILTER_NFIELDS + 3)

/* A statement and its parameters. Plain value type, but params point into num[] and
 * into the filter's strings: use it where filter_build wrote it, never a copy. */
struct filter_sql {
	char sql[FILTER_SQL_MAX];
	const char *params[FILTER_PARAMS_MAX];
	int nparams;
	char num[3][24]; /* since, until, limit as decimal text */
};

/* The names filter_set takes, NULL-terminated: the equality filters, then since,
 * until and limit (the API's query parameters; the CLI's flags with '-' for '_'). */
extern const char *const filter_names[];

void filter_init(struct filter *f, long long limit_default, long long limit_max,
		 enum filter_need need);

/* Sets the filter called name from its text. Times: RFC 3339 or an age before now_us
 * (timearg.h). request_id: 32 lowercase hex digits. limit: 1..limit_max. Returns 0, or
 * -1 with a fixed message in why (never the value: it may be echoed to a client) and f
 * unchanged. */
int filter_set(struct filter *f, const char *name, const char *value, int64_t now_us, char *why,
	       size_t whycap);

/* Writes select (fixed text: "SELECT ... FROM audit.audit_events") followed by the
 * WHERE clause, "ORDER BY event_time, event_id" and a LIMIT, with every value bound as
 * a parameter. Returns 0, or -1 with why when f names too little (see need) or an empty
 * time range. */
int filter_build(const struct filter *f, const char *select, struct filter_sql *out, char *why,
		 size_t whycap);

#endif
