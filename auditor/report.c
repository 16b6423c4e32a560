/* The report is one GROUP BY over the time range (indexed on event_time); what each
 * figure counts is fixed here and documented in docs/auditor.md. */
#include "report.h"
#include "log.h"
#include "pg.h"
#include "query.h"
#include "timearg.h"
#include "wire.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* requests: distinct request ids seen in the group; denials: authz decisions denied;
 * errors: events with outcome error or expired (authz, dispatch); tokens: total_tokens
 * of dispatch results. */
static const char report_fmt[] =
    "SELECT coalesce(%s, '(none)'), count(DISTINCT request_id), "
    "count(*) FILTER (WHERE event_type = 'authz.decision' AND outcome = 'denied'), "
    "count(*) FILTER (WHERE outcome IN ('error', 'expired')), "
    "coalesce(sum(total_tokens) FILTER (WHERE event_type = 'dispatch.result'), 0) "
    "FROM audit.audit_events WHERE "
    "event_time >= timestamptz 'epoch' + $1::bigint * interval '1 microsecond' AND "
    "event_time < timestamptz 'epoch' + $2::bigint * interval '1 microsecond' "
    "GROUP BY 1 ORDER BY 1";

static const char *const heads[] = {"key", "requests", "denials", "errors", "tokens"};

static void usage(FILE *f)
{
	fputs(
	    "usage: auditor report --since TIME [--until TIME] --by principal|model|endpoint|day\n"
	    "                      [--format table|csv|jsonl]\n"
	    "  Per group over [since, until): requests (distinct request ids), denials (authz\n"
	    "  decisions denied), errors (events with outcome error or expired), tokens\n"
	    "  (total_tokens of dispatch results). TIME: RFC 3339 or an age such as 24h.\n"
	    "  until defaults to now; format to table.\n",
	    f);
}

static const char *group_expr(const char *by)
{
	if (strcmp(by, "principal") == 0)
		return "principal";
	if (strcmp(by, "model") == 0)
		return "model";
	if (strcmp(by, "endpoint") == 0)
		return "endpoint";
	if (strcmp(by, "day") == 0)
		return "to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD')";
	return NULL;
}

int report_sql(const char *by, char *buf, size_t cap)
{
	const char *expr = by ? group_expr(by) : NULL;
	if (!expr)
		return -1;
	int n = snprintf(buf, cap, report_fmt, expr);
	return n > 0 && (size_t)n < cap ? 0 : -1;
}

int report_main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"since", required_argument, NULL, 's'}, {"until", required_argument, NULL, 'u'},
	    {"by", required_argument, NULL, 'b'},    {"format", required_argument, NULL, 'f'},
	    {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
	};
	const char *since = NULL, *until = NULL, *by = NULL, *format = "table";
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's': since = optarg; break;
		case 'u': until = optarg; break;
		case 'b': by = optarg; break;
		case 'f': format = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	int64_t now = wire_now_us(), since_us = 0, until_us = now;
	const char *expr = by ? group_expr(by) : NULL;
	if (optind < argc || !since || !expr ||
	    (strcmp(format, "table") && strcmp(format, "csv") && strcmp(format, "jsonl"))) {
		usage(stderr);
		return 2;
	}
	if (timearg_parse(since, now, &since_us) != 0 ||
	    (until && timearg_parse(until, now, &until_us) != 0)) {
		fprintf(stderr, "auditor report: --since/--until: not a time\n");
		return 2;
	}
	char sql[REPORT_SQL_MAX], a[24], b[24];
	report_sql(by, sql, sizeof sql);
	snprintf(a, sizeof a, "%lld", (long long)since_us);
	snprintf(b, sizeof b, "%lld", (long long)until_us);
	const char *params[] = {a, b};
	PGconn *conn = pg_connect(NULL, "auditor");
	if (!conn)
		return 1;
	PGresult *r = PQexecParams(conn, sql, 2, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		log_error("audit report failed", LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		PQfinish(conn);
		return 1;
	}
	int n = PQntuples(r);
	if (strcmp(format, "jsonl") == 0) {
		for (int i = 0; i < n; i++) {
			json_t *o = json_pack(
			    "{s:s, s:s, s:I, s:I, s:I, s:I}", "by", by, "key", PQgetvalue(r, i, 0),
			    "requests", (json_int_t)strtoll(PQgetvalue(r, i, 1), NULL, 10),
			    "denials", (json_int_t)strtoll(PQgetvalue(r, i, 2), NULL, 10), "errors",
			    (json_int_t)strtoll(PQgetvalue(r, i, 3), NULL, 10), "tokens",
			    (json_int_t)strtoll(PQgetvalue(r, i, 4), NULL, 10));
			char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
			if (s)
				puts(s);
			else
				log_error("cannot format a report row",
					  LS("key", PQgetvalue(r, i, 0)));
			free(s);
			json_decref(o);
		}
	} else if (strcmp(format, "csv") == 0) {
		printf("%s,requests,denials,errors,tokens\n", by);
		for (int i = 0; i < n; i++) {
			query_csv_field(PQgetvalue(r, i, 0));
			printf(",%s,%s,%s,%s\n", PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
			       PQgetvalue(r, i, 3), PQgetvalue(r, i, 4));
		}
	} else {
		int w[5];
		for (int k = 0; k < 5; k++) {
			w[k] = (int)strlen(k ? heads[k] : by);
			for (int i = 0; i < n; i++)
				if ((int)PQgetlength(r, i, k) > w[k])
					w[k] = PQgetlength(r, i, k);
		}
		printf("%-*s  %*s  %*s  %*s  %*s\n", w[0], by, w[1], heads[1], w[2], heads[2], w[3],
		       heads[3], w[4], heads[4]);
		for (int i = 0; i < n; i++)
			printf("%-*s  %*s  %*s  %*s  %*s\n", w[0], PQgetvalue(r, i, 0), w[1],
			       PQgetvalue(r, i, 1), w[2], PQgetvalue(r, i, 2), w[3],
			       PQgetvalue(r, i, 3), w[4], PQgetvalue(r, i, 4));
	}
	PQclear(r);
	PQfinish(conn);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		log_error("cannot write the report");
		return 1;
	}
	return 0;
}
