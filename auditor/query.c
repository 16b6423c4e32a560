/* `auditor query`. The SQL is fixed text with placeholders built by filter.c; every
 * user value travels as a parameter (PQexecParams). Results are bounded by --limit, so
 * holding them in one PGresult is fine. Output never passes control characters to a
 * terminal except in JSON, where they are escaped. */
#include "query.h"
#include "filter.h"
#include "log.h"
#include "pg.h"
#include "wire.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIMIT_DEFAULT 1000
#define LIMIT_MAX     100000

enum format { FORMAT_JSONL, FORMAT_TABLE, FORMAT_CSV };

/* Times print as RFC 3339 UTC with microseconds, whatever the session time zone. */
#define UTC_FORMAT "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'"

/* Column order of the SELECT; the CSV header uses the same names. */
static const char *const columns[] = {
    "event_id",        "event_time",    "event_type",        "request_id",   "service",
    "instance",        "client_addr",   "principal",         "idp",          "groups",
    "route",           "model",         "endpoint",          "outcome",      "status",
    "reason",          "prompt_tokens", "completion_tokens", "total_tokens", "latency_us",
    "ttft_us",         "body_sha256",   "body_size",         "resp_sha256",  "resp_size",
    "kafka_partition", "kafka_offset",  "inserted_at",
};
#define NCOLUMNS  ((int)(sizeof columns / sizeof columns[0]))
#define COL_EVENT NCOLUMNS /* event::text follows the typed columns */

static const char select_sql[] =
    "SELECT event_id, to_char(event_time AT TIME ZONE 'UTC', " UTC_FORMAT "), event_type, "
    "request_id, service, instance, client_addr, principal, idp, groups, route, model, "
    "endpoint, outcome, status, reason, prompt_tokens, completion_tokens, total_tokens, "
    "latency_us, ttft_us, body_sha256, body_size, resp_sha256, resp_size, kafka_partition, "
    "kafka_offset, to_char(inserted_at AT TIME ZONE 'UTC', " UTC_FORMAT "), event::text "
    "FROM audit.audit_events";

/* The table shows the AU-3 essentials; CSV and JSON lines carry everything. */
static const int table_cols[] = {1, 2, 3, 7, 13, 14, 11, 4};

static void usage(FILE *f)
{
	fputs("usage: auditor query [--request-id ID] [--principal P] [--since T] [--until T]\n"
	      "                     [--model M] [--endpoint E] [--outcome O] [--event-type T]\n"
	      "                     [--limit N] [--format jsonl|table|csv]\n"
	      "  Prints stored audit events ordered by event time. At least one filter is\n"
	      "  required; filters combine with AND.\n"
	      "  T: RFC 3339 (2024-05-01T12:00:00Z, 2024-05-01) or an age: 30s, 15m, 24h, 7d, 2w.\n"
	      "  --since is inclusive, --until exclusive (and later than --since).\n"
	      "  --limit defaults to 1000 (max 100000).\n"
	      "  jsonl (default) prints each original event as one JSON line.\n"
	      "  Connects with GW_DATABASE_URL (or GW_DATABASE_URL_FILE).\n"
	      "  Exit 0 also when nothing matches, 1 on a database error, 2 on bad flags.\n",
	      f);
}

/* Table cells: one line, no control characters, at most `width` bytes (longer values
 * are cut; CSV and JSON lines carry them whole). */
static void put_cell(const char *s, int width, int pad)
{
	int end = (int)strnlen(s, (size_t)width + 1), n;
	if (end > width) /* cut, but not inside a UTF-8 sequence */
		for (end = width; end > 0 && ((unsigned char)s[end] & 0xc0) == 0x80; end--)
			;
	for (n = 0; n < end; n++) {
		unsigned char c = (unsigned char)s[n];
		putchar(c < 0x20 || c == 0x7f ? '?' : c);
	}
	for (; pad && n < width; n++)
		putchar(' ');
}

static int cell_width(const char *s, int cap)
{
	int n = (int)strlen(s);
	return n > cap ? cap : n;
}

static void print_table(PGresult *r)
{
	enum { NT = sizeof table_cols / sizeof table_cols[0], CAP = 48 };
	int w[NT];
	for (int j = 0; j < NT; j++) {
		w[j] = cell_width(columns[table_cols[j]], CAP);
		for (int i = 0; i < PQntuples(r); i++) {
			int cw = cell_width(PQgetvalue(r, i, table_cols[j]), CAP);
			if (cw > w[j])
				w[j] = cw;
		}
	}
	for (int j = 0; j < NT; j++) {
		put_cell(columns[table_cols[j]], w[j], j + 1 < NT);
		fputs(j + 1 < NT ? "  " : "\n", stdout);
	}
	for (int i = 0; i < PQntuples(r); i++)
		for (int j = 0; j < NT; j++) {
			put_cell(PQgetvalue(r, i, table_cols[j]), w[j], j + 1 < NT);
			fputs(j + 1 < NT ? "  " : "\n", stdout);
		}
}

/* RFC 4180: quote fields holding a separator, quote or line break; double quotes. */
void query_csv_field(const char *s)
{
	if (!strpbrk(s, ",\"\r\n")) {
		fputs(s, stdout);
		return;
	}
	putchar('"');
	for (; *s; s++) {
		if (*s == '"')
			putchar('"');
		putchar(*s);
	}
	putchar('"');
}

static void print_csv(PGresult *r)
{
	for (int j = 0; j < NCOLUMNS; j++) {
		query_csv_field(columns[j]);
		fputs(j + 1 < NCOLUMNS ? "," : "\r\n", stdout);
	}
	for (int i = 0; i < PQntuples(r); i++)
		for (int j = 0; j < NCOLUMNS; j++) {
			query_csv_field(PQgetvalue(r, i, j));
			fputs(j + 1 < NCOLUMNS ? "," : "\r\n", stdout);
		}
}

int query_main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"request-id", required_argument, NULL, 'r'},
	    {"principal", required_argument, NULL, 'p'},
	    {"since", required_argument, NULL, 's'},
	    {"until", required_argument, NULL, 'u'},
	    {"model", required_argument, NULL, 'm'},
	    {"endpoint", required_argument, NULL, 'e'},
	    {"outcome", required_argument, NULL, 'o'},
	    {"event-type", required_argument, NULL, 't'},
	    {"limit", required_argument, NULL, 'l'},
	    {"format", required_argument, NULL, 'f'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct filter f;
	enum format format = FORMAT_JSONL;
	int64_t now = wire_now_us();
	char why[200];
	int c, idx = 0;

	filter_init(&f, LIMIT_DEFAULT, LIMIT_MAX, FILTER_NEED_ANY);
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", opts, &idx)) != -1) {
		switch (c) {
		case 'r':
		case 'p':
		case 'm':
		case 'e':
		case 'o':
		case 't':
		case 's':
		case 'u':
		case 'l': {
			/* The filter's name is the flag's with '_' for '-'. */
			char name[32];
			snprintf(name, sizeof name, "%s", opts[idx].name);
			for (char *d = strchr(name, '-'); d; d = strchr(d, '-'))
				*d = '_';
			if (filter_set(&f, name, optarg, now, why, sizeof why) != 0) {
				/* why starts with the filter's name: say it as the flag. */
				for (char *d = why; *d && *d != ' ' && *d != ':'; d++)
					*d = *d == '_' ? '-' : *d;
				fprintf(stderr, "auditor query: --%s\n", why);
				return 2;
			}
			break;
		}
		case 'f':
			if (strcmp(optarg, "jsonl") == 0)
				format = FORMAT_JSONL;
			else if (strcmp(optarg, "table") == 0)
				format = FORMAT_TABLE;
			else if (strcmp(optarg, "csv") == 0)
				format = FORMAT_CSV;
			else {
				fprintf(stderr,
					"auditor query: --format must be jsonl, table or csv\n");
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	struct filter_sql q;
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	if (filter_build(&f, select_sql, &q, why, sizeof why) != 0) {
		fprintf(stderr, "auditor query: %s\n", why);
		usage(stderr);
		return 2;
	}

	PGconn *conn = pg_connect(NULL, "auditor");
	if (!conn)
		return 1;
	PGresult *r = PQexecParams(conn, q.sql, q.nparams, NULL, q.params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		log_error("audit query failed", LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		PQfinish(conn);
		return 1;
	}
	if (PQntuples(r) == 0) {
		/* Nothing matched: no output at all, not even a header. */
	} else if (format == FORMAT_JSONL) {
		for (int i = 0; i < PQntuples(r); i++) {
			fputs(PQgetvalue(r, i, COL_EVENT), stdout);
			putchar('\n');
		}
	} else if (format == FORMAT_TABLE) {
		print_table(r);
	} else {
		print_csv(r);
	}
	PQclear(r);
	PQfinish(conn);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		log_error("cannot write the query output");
		return 1;
	}
	return 0;
}
