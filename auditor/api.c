/* Compliance queries over HTTP. Queries run synchronously on the loop thread (libpq is
 * blocking), so each is bounded: statement_timeout GW_AUDIT_API_TIMEOUT_MS (2 s) and a
 * LIMIT (events: 1000 at most). While one runs, ingest waits; Kafka holds the events,
 * so a slow query delays the log but loses nothing. */
#include "api.h"
#include "config.h"
#include "log.h"
#include "pg.h"
#include "report.h"
#include "timearg.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EVENTS_LIMIT_DEFAULT 100
#define EVENTS_LIMIT_MAX     1000

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void reply(struct evhttp_request *req, int code, const char *type, const char *body)
{
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	evbuffer_add(b, body, strlen(body));
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
	evhttp_send_reply(req, code, NULL, b);
	evbuffer_free(b);
}

static void reply_error(struct evhttp_request *req, int code, const char *msg)
{
	char body[256];
	snprintf(body, sizeof body, "{\"error\":\"%s\"}\n", msg);
	reply(req, code, "application/json", body);
}

/* The key is compared as SHA-256 digests with CRYPTO_memcmp: constant time, and the
 * same length whatever was sent. */
static int authorized(struct api *a, struct evhttp_request *req)
{
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (!h || strncmp(h, "Bearer ", 7) != 0)
		return 0;
	unsigned char d[32];
	unsigned int n = 0;
	if (EVP_Digest(h + 7, strlen(h + 7), d, &n, EVP_sha256(), NULL) != 1 || n != 32)
		return 0;
	return CRYPTO_memcmp(d, a->key_sha, 32) == 0;
}

static PGconn *conn(struct api *a)
{
	if (a->conn && PQstatus(a->conn) == CONNECTION_OK)
		return a->conn;
	if (a->conn)
		PQfinish(a->conn);
	a->conn = pg_connect(a->url, "auditor-api");
	if (!a->conn)
		return NULL;
	char sql[96];
	snprintf(sql, sizeof sql,
		 "SET statement_timeout = %lld; SET default_transaction_read_only = on",
		 a->timeout_ms);
	PGresult *r = PQexec(a->conn, sql);
	int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
	PQclear(r);
	if (!ok) {
		log_error("cannot set up the API's database session",
			  LS("error", PQerrorMessage(a->conn)));
		PQfinish(a->conn);
		a->conn = NULL;
	}
	return a->conn;
}

/* Runs sql; on failure answers the request (503 or 504) and returns NULL. */
static PGresult *run(struct api *a, struct evhttp_request *req, const char *sql, int n,
		     const char *const *params)
{
	PGconn *c = conn(a);
	if (!c) {
		reply_error(req, 503, "database unavailable");
		return NULL;
	}
	PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) == PGRES_TUPLES_OK)
		return r;
	const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	int timeout = st && strcmp(st, "57014") == 0;
	log_warn("compliance API query failed", LS("sqlstate", st ? st : ""),
		 LS("error", PQresultErrorMessage(r)));
	PQclear(r);
	if (PQstatus(c) != CONNECTION_OK) {
		PQfinish(a->conn);
		a->conn = NULL;
	}
	reply_error(req, timeout ? 504 : 503,
		    timeout ? "query exceeded GW_AUDIT_API_TIMEOUT_MS: narrow the filters"
			    : "query failed");
	return NULL;
}

static int time_param(struct evkeyvalq *q, const char *name, int64_t def, int64_t *out)
{
	const char *v = evhttp_find_header(q, name);
	*out = def;
	return v ? timearg_parse(v, now_us(), out) : 0;
}

/* Common start: GET, the key, the query string. Returns 0 when the handler may go on. */
static int begin(struct api *a, struct evhttp_request *req, struct evkeyvalq *q)
{
	q->tqh_first = NULL; /* TAILQ_INIT, which libevent does not export */
	q->tqh_last = &q->tqh_first;
	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		reply_error(req, 405, "GET only");
		return -1;
	}
	if (!authorized(a, req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
				  "Bearer realm=\"audit\"");
		reply_error(req, 401, "missing or wrong API key");
		return -1;
	}
	const char *qs = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	if (qs && evhttp_parse_query_str(qs, q) != 0) {
		reply_error(req, 400, "malformed query string");
		return -1;
	}
	return 0;
}

static void on_events(struct evhttp_request *req, void *arg)
{
	struct api *a = arg;
	struct evkeyvalq q;
	if (begin(a, req, &q) != 0)
		return;
	static const char *const filters[][2] = {
	    {"principal", "principal"}, {"request_id", "request_id"}, {"model", "model"},
	    {"endpoint", "endpoint"},   {"outcome", "outcome"},       {"event_type", "event_type"},
	};
	char sql[1024], since_s[24], until_s[24], limit_s[24];
	const char *params[10];
	int np = 0, nfilters = 0;
	size_t len = (size_t)snprintf(sql, sizeof sql,
				      "SELECT event::text FROM audit.audit_events WHERE true");
	for (size_t i = 0; i < sizeof filters / sizeof filters[0]; i++) {
		const char *v = evhttp_find_header(&q, filters[i][0]);
		if (!v)
			continue;
		params[np++] = v;
		nfilters++;
		len += (size_t)snprintf(sql + len, sizeof sql - len, " AND %s = $%d", filters[i][1],
					np);
	}
	int64_t since, until;
	const char *lim = evhttp_find_header(&q, "limit");
	char *end = NULL;
	long long limit = lim ? strtoll(lim, &end, 10) : EVENTS_LIMIT_DEFAULT;
	if (time_param(&q, "since", INT64_MIN, &since) != 0 ||
	    time_param(&q, "until", INT64_MIN, &until) != 0) {
		reply_error(req, 400, "since/until: RFC 3339 or an age such as 24h");
		goto out;
	}
	if ((lim && (*end || limit < 1 || limit > EVENTS_LIMIT_MAX))) {
		reply_error(req, 400, "limit must be 1..1000");
		goto out;
	}
	/* A filter or a time bound is required: no unbounded scans from the API. */
	if (!nfilters && since == INT64_MIN) {
		reply_error(req, 400, "give since or a filter (principal, request_id, ...)");
		goto out;
	}
	if (since != INT64_MIN) {
		snprintf(since_s, sizeof since_s, "%lld", (long long)since);
		params[np++] = since_s;
		len += (size_t)snprintf(sql + len, sizeof sql - len,
					" AND event_time >= timestamptz 'epoch' + $%d::bigint * "
					"interval '1 microsecond'",
					np);
	}
	if (until != INT64_MIN) {
		snprintf(until_s, sizeof until_s, "%lld", (long long)until);
		params[np++] = until_s;
		len += (size_t)snprintf(sql + len, sizeof sql - len,
					" AND event_time < timestamptz 'epoch' + $%d::bigint * "
					"interval '1 microsecond'",
					np);
	}
	snprintf(limit_s, sizeof limit_s, "%lld", limit);
	params[np++] = limit_s;
	snprintf(sql + len, sizeof sql - len, " ORDER BY event_time, event_id LIMIT $%d::bigint",
		 np);
	PGresult *r = run(a, req, sql, np, params);
	if (!r)
		goto out;
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		PQclear(r);
		evhttp_send_error(req, 500, NULL);
		goto out;
	}
	for (int i = 0; i < PQntuples(r); i++) {
		evbuffer_add(b, PQgetvalue(r, i, 0), (size_t)PQgetlength(r, i, 0));
		evbuffer_add(b, "\n", 1);
	}
	PQclear(r);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/x-ndjson");
	evhttp_send_reply(req, 200, NULL, b);
	evbuffer_free(b);
out:
	evhttp_clear_headers(&q);
}

static void on_report(struct evhttp_request *req, void *arg)
{
	struct api *a = arg;
	struct evkeyvalq q;
	if (begin(a, req, &q) != 0)
		return;
	char sql[REPORT_SQL_MAX], s1[24], s2[24];
	const char *by = evhttp_find_header(&q, "by");
	int64_t since, until;
	if (!by || report_sql(by, sql, sizeof sql) != 0) {
		reply_error(req, 400, "by must be principal, model, endpoint or day");
		goto out;
	}
	if (time_param(&q, "since", INT64_MIN, &since) != 0 ||
	    time_param(&q, "until", now_us(), &until) != 0 || since == INT64_MIN) {
		reply_error(req, 400, "since is required; since/until: RFC 3339 or an age");
		goto out;
	}
	snprintf(s1, sizeof s1, "%lld", (long long)since);
	snprintf(s2, sizeof s2, "%lld", (long long)until);
	const char *params[] = {s1, s2};
	PGresult *r = run(a, req, sql, 2, params);
	if (!r)
		goto out;
	json_t *arr = json_array();
	for (int i = 0; arr && i < PQntuples(r); i++) {
		json_t *o =
		    json_pack("{s:s, s:I, s:I, s:I, s:I}", "key", PQgetvalue(r, i, 0), "requests",
			      (json_int_t)strtoll(PQgetvalue(r, i, 1), NULL, 10), "denials",
			      (json_int_t)strtoll(PQgetvalue(r, i, 2), NULL, 10), "errors",
			      (json_int_t)strtoll(PQgetvalue(r, i, 3), NULL, 10), "tokens",
			      (json_int_t)strtoll(PQgetvalue(r, i, 4), NULL, 10));
		if (!o || json_array_append_new(arr, o) != 0) {
			json_decref(arr);
			arr = NULL;
		}
	}
	PQclear(r);
	json_t *doc = arr ? json_pack("{s:s, s:o}", "by", by, "rows", arr) : NULL;
	char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	if (body) {
		reply(req, 200, "application/json", body);
	} else {
		log_error("out of memory formatting a report");
		evhttp_send_error(req, 500, NULL);
	}
	free(body);
	json_decref(doc);
out:
	evhttp_clear_headers(&q);
}

int api_init(struct api *a, struct runtime *rt)
{
	memset(a, 0, sizeof *a);
	a->rt = rt;
	char *key = NULL;
	size_t keylen = 0;
	if (config_secret("GW_AUDIT_API_KEY", &key, &keylen) != 0 ||
	    config_int("GW_AUDIT_API_TIMEOUT_MS", 2000, 100, 60000, &a->timeout_ms) != 0)
		return -1;
	if (!key) {
		log_info(
		    "GW_AUDIT_API_KEY_FILE is not set: /audit/events and /audit/report are off");
		return 0;
	}
	unsigned int n = 0;
	int ok = keylen >= 16 && EVP_Digest(key, keylen, a->key_sha, &n, EVP_sha256(), NULL) == 1;
	explicit_bzero(key, keylen);
	free(key);
	if (!ok) {
		log_error(
		    "GW_AUDIT_API_KEY must be at least 16 bytes (e.g. `openssl rand -hex 32`)");
		return -1;
	}
	if (config_secret("GW_AUDIT_API_DATABASE_URL", &a->url, NULL) != 0)
		return -1;
	if (!a->url && config_secret("GW_DATABASE_URL", &a->url, NULL) != 0)
		return -1;
	if (!rt->admin) {
		log_error("the compliance API needs the admin listener: GW_ADMIN_LISTEN is off");
		return -1;
	}
	if (evhttp_set_cb(rt->admin, "/audit/events", on_events, a) != 0 ||
	    evhttp_set_cb(rt->admin, "/audit/report", on_report, a) != 0) {
		log_error("cannot add the compliance API routes");
		return -1;
	}
	a->enabled = 1;
	log_info("compliance API on the admin listener", LI("timeout_ms", a->timeout_ms));
	return 0;
}

void api_free(struct api *a)
{
	if (a->conn)
		PQfinish(a->conn);
	if (a->url) {
		explicit_bzero(a->url, strlen(a->url));
		free(a->url);
	}
	memset(a, 0, sizeof *a);
}
