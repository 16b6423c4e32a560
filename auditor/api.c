/* Compliance queries over HTTP, asynchronous: each request takes one of
 * GW_AUDIT_API_MAX_QUERIES slots, each with its own connection, and its statement goes
 * out with PQsendQueryParams; the loop watches PQsocket and reads the result with
 * PQconsumeInput/PQisBusy, so ingest and /health never wait for a query. All slots busy:
 * 503 with Retry-After at once. Each query is still bounded (statement_timeout
 * GW_AUDIT_API_TIMEOUT_MS, set at connect; events LIMIT 1000) because a query whose
 * client left is not cancelled: it runs out and its result is dropped. */
#include "api.h"
#include "config.h"
#include "filter.h"
#include "log.h"
#include "report.h"
#include "timearg.h"

#include <event2/buffer.h>
#include <event2/event.h>
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
#define CONNECT_MS           3000
/* A query gets statement_timeout plus this before the server is presumed gone. */
#define QUERY_GRACE_MS       3000

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

/* ---- slots: one connection, one query at a time ---- */

static void slot_io(evutil_socket_t fd, short what, void *arg);

static void slot_unwatch(struct api_slot *s)
{
	if (s->ev_assigned)
		event_del(&s->ev);
}

/* Waits for what on the connection's socket, until s->deadline_us unless idle (an idle
 * connection is watched only to notice the server closing it). -1 (logged) when the
 * event cannot be armed. */
static int slot_watch(struct api_slot *s, short what, int idle)
{
	int fd = PQsocket(s->conn);
	slot_unwatch(s);
	if (fd < 0) {
		log_warn("compliance API: the database connection has no socket");
		return -1;
	}
	int64_t left = s->deadline_us - now_us();
	if (left < 0)
		left = 0;
	struct timeval tv = {(time_t)(left / 1000000), (suseconds_t)(left % 1000000)};
	if (event_assign(&s->ev, s->a->rt->base, fd, what, slot_io, s) != 0) {
		log_error("compliance API: cannot set up the database socket event");
		return -1;
	}
	s->ev_assigned = 1;
	if (event_add(&s->ev, idle ? NULL : &tv) != 0) {
		log_error("compliance API: cannot watch the database socket");
		return -1;
	}
	return 0;
}

static void slot_close(struct api_slot *s)
{
	slot_unwatch(s);
	if (s->conn)
		PQfinish(s->conn);
	s->conn = NULL;
	s->state = API_SLOT_CLOSED;
}

/* The client left: evhttp is freeing its connection with the request unanswered. */
static void on_client_close(struct evhttp_connection *evcon, void *arg)
{
	struct api_slot *s = arg;
	struct evhttp_request *req = s->req;
	s->req = NULL;
	/* A request evhttp detached from its failed connection is ours to free. */
	if (req && !evhttp_request_get_connection(req))
		evhttp_request_free(req);
}

/* Takes the request out of the slot for answering; NULL when the client left. */
static struct evhttp_request *slot_take_req(struct api_slot *s)
{
	struct evhttp_request *req = s->req;
	s->req = NULL;
	struct evhttp_connection *evcon = req ? evhttp_request_get_connection(req) : NULL;
	if (evcon)
		evhttp_connection_set_closecb(evcon, NULL, NULL);
	return req;
}

/* Ends the query in s: frees what it staged, returns the slot to the pool (keeping a
 * healthy connection) and updates the gauge. */
static void slot_release(struct api_slot *s)
{
	struct api *a = s->a;
	slot_unwatch(s);
	PQclear(s->res);
	s->res = NULL;
	free(s->pbuf);
	s->pbuf = NULL;
	s->nparams = 0;
	if (s->conn && PQstatus(s->conn) == CONNECTION_OK &&
	    PQtransactionStatus(s->conn) == PQTRANS_IDLE && slot_watch(s, EV_READ, 1) == 0)
		s->state = API_SLOT_IDLE;
	else
		slot_close(s);
	metric_add(a->m_running, -1);
}

/* Answers the slot's request with an error (when the client is still there) and ends
 * the query; close: drop the connection too. */
static void slot_fail(struct api_slot *s, int code, const char *msg, int close)
{
	struct evhttp_request *req = slot_take_req(s);
	if (req)
		reply_error(req, code, msg);
	metric_add(s->a->m_failed, 1);
	if (close)
		slot_close(s);
	slot_release(s);
}

static void answer_events(struct api_slot *s, struct evhttp_request *req)
{
	PGresult *r = s->res;
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		log_error("compliance API: out of memory answering /audit/events");
		evhttp_send_error(req, 500, NULL);
		return;
	}
	for (int i = 0; i < PQntuples(r); i++) {
		if (evbuffer_add(b, PQgetvalue(r, i, 0), (size_t)PQgetlength(r, i, 0)) != 0 ||
		    evbuffer_add(b, "\n", 1) != 0) {
			log_error("compliance API: out of memory answering /audit/events");
			evbuffer_free(b);
			evhttp_send_error(req, 500, NULL);
			return;
		}
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/x-ndjson");
	evhttp_send_reply(req, 200, NULL, b);
	evbuffer_free(b);
}

static void answer_report(struct api_slot *s, struct evhttp_request *req)
{
	PGresult *r = s->res;
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
	json_t *doc = arr ? json_pack("{s:s, s:o}", "by", s->by, "rows", arr) : NULL;
	char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	if (body) {
		reply(req, 200, "application/json", body);
	} else {
		log_error("out of memory formatting a report");
		evhttp_send_error(req, 500, NULL);
	}
	free(body);
	json_decref(doc);
}

/* Every result of the statement has been read. */
static void slot_done(struct api_slot *s)
{
	PGresult *r = s->res;
	if (!r || PQresultStatus(r) != PGRES_TUPLES_OK) {
		const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
		int timeout = st && strcmp(st, "57014") == 0;
		log_warn("compliance API query failed", LS("sqlstate", st ? st : ""),
			 LS("error", r ? PQresultErrorMessage(r) : PQerrorMessage(s->conn)));
		slot_fail(s, timeout ? 504 : 503,
			  timeout ? "query exceeded GW_AUDIT_API_TIMEOUT_MS: narrow the filters"
				  : "query failed",
			  0);
		return;
	}
	struct evhttp_request *req = slot_take_req(s);
	if (req) {
		if (s->kind == API_EVENTS)
			answer_events(s, req);
		else
			answer_report(s, req);
	}
	metric_add(s->a->m_ok, 1);
	slot_release(s);
}

/* Reads what has arrived; answers once the last result is in. */
static void slot_read(struct api_slot *s)
{
	if (!PQconsumeInput(s->conn)) {
		log_warn("compliance API: lost the database connection",
			 LS("error", PQerrorMessage(s->conn)));
		slot_fail(s, 503, "query failed", 1);
		return;
	}
	while (!PQisBusy(s->conn)) {
		PGresult *r = PQgetResult(s->conn);
		if (!r) {
			slot_done(s);
			return;
		}
		/* One statement: the first result, unless an error follows it. */
		if (!s->res || (PQresultStatus(s->res) == PGRES_TUPLES_OK &&
				PQresultStatus(r) != PGRES_TUPLES_OK)) {
			PQclear(s->res);
			s->res = r;
		} else {
			PQclear(r);
		}
	}
	if (slot_watch(s, EV_READ, 0) != 0)
		slot_fail(s, 503, "query failed", 1);
}

static void slot_connect(struct api_slot *s);

static void slot_send(struct api_slot *s)
{
	s->deadline_us = now_us() + (s->a->timeout_ms + QUERY_GRACE_MS) * 1000;
	if (!PQsendQueryParams(s->conn, s->sql, s->nparams, NULL, s->params, NULL, NULL, 0)) {
		log_warn("compliance API: cannot send the query",
			 LS("error", PQerrorMessage(s->conn)));
		if (s->reused) {
			/* A kept connection the server has since closed: one fresh try. */
			slot_close(s);
			slot_connect(s);
			return;
		}
		slot_fail(s, 503, "database unavailable", 1);
		return;
	}
	s->state = API_SLOT_BUSY;
	int f = PQflush(s->conn);
	if (f < 0 || slot_watch(s, f ? EV_READ | EV_WRITE : EV_READ, 0) != 0) {
		log_warn("compliance API: cannot send the query",
			 LS("error", PQerrorMessage(s->conn)));
		slot_fail(s, 503, "database unavailable", 1);
	}
}

static void slot_connect_step(struct api_slot *s)
{
	switch (PQconnectPoll(s->conn)) {
	case PGRES_POLLING_OK:
		if (PQsetnonblocking(s->conn, 1) != 0) {
			log_warn("compliance API: cannot make the connection non-blocking",
				 LS("error", PQerrorMessage(s->conn)));
			slot_fail(s, 503, "database unavailable", 1);
			return;
		}
		s->reused = 0;
		slot_send(s);
		return;
	case PGRES_POLLING_READING:
		if (slot_watch(s, EV_READ, 0) != 0)
			slot_fail(s, 503, "database unavailable", 1);
		return;
	case PGRES_POLLING_WRITING:
		if (slot_watch(s, EV_WRITE, 0) != 0)
			slot_fail(s, 503, "database unavailable", 1);
		return;
	default:
		log_warn("compliance API: cannot connect to PostgreSQL",
			 LS("error", PQerrorMessage(s->conn)));
		slot_fail(s, 503, "database unavailable", 1);
		return;
	}
}

/* Starts a connection without blocking. The session is fixed in the startup packet:
 * read-only, statement_timeout; options after the URL override the URL's own. */
static void slot_connect(struct api_slot *s)
{
	char opts[128];
	snprintf(opts, sizeof opts, "-c statement_timeout=%lld -c default_transaction_read_only=on",
		 s->a->timeout_ms);
	const char *keys[] = {"application_name", "connect_timeout", "dbname", "options", NULL};
	const char *vals[] = {"auditor-api", "3", s->a->url, opts, NULL};
	s->conn = PQconnectStartParams(keys, vals, 1);
	s->state = API_SLOT_CONNECTING;
	s->deadline_us = now_us() + CONNECT_MS * 1000LL;
	if (!s->conn || PQstatus(s->conn) == CONNECTION_BAD) {
		log_warn("compliance API: cannot connect to PostgreSQL",
			 LS("error", s->conn ? PQerrorMessage(s->conn) : "out of memory"));
		slot_fail(s, 503, "database unavailable", 1);
		return;
	}
	if (slot_watch(s, EV_WRITE, 0) != 0)
		slot_fail(s, 503, "database unavailable", 1);
}

static void slot_io(evutil_socket_t fd, short what, void *arg)
{
	struct api_slot *s = arg;
	if (what & EV_TIMEOUT) {
		int connecting = s->state == API_SLOT_CONNECTING;
		log_warn(
		    connecting ? "compliance API: PostgreSQL did not answer the connection"
			       : "compliance API: PostgreSQL did not answer the query in time",
		    LI("timeout_ms", connecting ? CONNECT_MS : s->a->timeout_ms + QUERY_GRACE_MS));
		slot_fail(s, connecting ? 503 : 504,
			  connecting ? "database unavailable" : "the database did not answer", 1);
		return;
	}
	if (s->state == API_SLOT_CONNECTING) {
		slot_connect_step(s);
		return;
	}
	if (s->state == API_SLOT_IDLE) {
		/* Nothing is expected: the server is closing the connection (restart,
		 * idle timeout) or sent a notice. Closed now, the next query connects
		 * afresh instead of failing on it. */
		if (!PQconsumeInput(s->conn) || PQstatus(s->conn) != CONNECTION_OK) {
			log_info("compliance API: the database closed an idle connection");
			slot_close(s);
		} else if (slot_watch(s, EV_READ, 1) != 0) {
			slot_close(s);
		}
		return;
	}
	if (what & EV_WRITE) {
		int f = PQflush(s->conn);
		if (f < 0) {
			log_warn("compliance API: cannot send the query",
				 LS("error", PQerrorMessage(s->conn)));
			slot_fail(s, 503, "database unavailable", 1);
			return;
		}
		if (f == 1) {
			if (slot_watch(s, EV_READ | EV_WRITE, 0) != 0)
				slot_fail(s, 503, "database unavailable", 1);
			return;
		}
	}
	slot_read(s);
}

/* Hands the statement to a free slot (a connected one first). Answers 503 itself when
 * every slot is busy. The statement and parameters are copied. */
static void submit(struct api *a, struct evhttp_request *req, enum api_query_kind kind,
		   const char *by, const char *sql, int n, const char *const *params)
{
	struct api_slot *s = NULL;
	for (long long i = 0; i < a->max_queries; i++) {
		struct api_slot *t = &a->slots[i];
		if (t->state == API_SLOT_IDLE) {
			s = t;
			break;
		}
		if (t->state == API_SLOT_CLOSED && !s)
			s = t;
	}
	if (!s) {
		metric_add(a->m_rejected, 1);
		evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
		reply_error(req, 503, "too many audit queries running: retry shortly");
		return;
	}
	size_t total = 0;
	for (int i = 0; i < n; i++)
		total += strlen(params[i]) + 1;
	s->pbuf = malloc(total ? total : 1);
	if (!s->pbuf || (size_t)snprintf(s->sql, sizeof s->sql, "%s", sql) >= sizeof s->sql ||
	    n > FILTER_PARAMS_MAX) {
		log_error("compliance API: cannot stage the query (out of memory or too long)");
		free(s->pbuf);
		s->pbuf = NULL;
		reply_error(req, 500, "internal error");
		return;
	}
	char *p = s->pbuf;
	for (int i = 0; i < n; i++) {
		size_t l = strlen(params[i]) + 1;
		memcpy(p, params[i], l);
		s->params[i] = p;
		p += l;
	}
	s->nparams = n;
	s->kind = kind;
	snprintf(s->by, sizeof s->by, "%s", by ? by : "");
	s->req = req;
	s->res = NULL;
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	if (evcon)
		evhttp_connection_set_closecb(evcon, on_client_close, s);
	metric_add(a->m_running, 1);
	if (s->state == API_SLOT_IDLE) {
		s->reused = 1;
		slot_send(s);
	} else {
		slot_connect(s);
	}
}

static void on_events(struct evhttp_request *req, void *arg)
{
	struct api *a = arg;
	struct evkeyvalq q;
	if (begin(a, req, &q) != 0)
		return;
	struct filter f;
	struct filter_sql fs;
	char why[200];
	int64_t now = now_us();
	filter_init(&f, EVENTS_LIMIT_DEFAULT, EVENTS_LIMIT_MAX, FILTER_NEED_START);
	for (int i = 0; filter_names[i]; i++) {
		const char *v = evhttp_find_header(&q, filter_names[i]);
		if (v && filter_set(&f, filter_names[i], v, now, why, sizeof why) != 0) {
			reply_error(req, 400, why);
			goto out;
		}
	}
	if (filter_build(&f, "SELECT event::text FROM audit.audit_events", &fs, why, sizeof why) !=
	    0) {
		reply_error(req, 400, why);
		goto out;
	}
	submit(a, req, API_EVENTS, NULL, fs.sql, fs.nparams, fs.params);
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
	if (!by || strlen(by) >= API_BY_MAX || report_sql(by, sql, sizeof sql) != 0) {
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
	submit(a, req, API_REPORT, by, sql, 2, params);
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
	    config_int("GW_AUDIT_API_TIMEOUT_MS", 2000, 100, 60000, &a->timeout_ms) != 0 ||
	    config_int("GW_AUDIT_API_MAX_QUERIES", 4, 1, 64, &a->max_queries) != 0)
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
	a->slots = calloc((size_t)a->max_queries, sizeof *a->slots);
	if (!a->slots) {
		log_error("out of memory for the compliance API");
		return -1;
	}
	for (long long i = 0; i < a->max_queries; i++)
		a->slots[i].a = a;
	a->m_running = metric_get(METRIC_GAUGE, "gw_auditor_api_queries_running", NULL,
				  "Compliance API queries in progress");
	a->m_ok = metric_get(METRIC_COUNTER, "gw_auditor_api_queries_total", "result=\"ok\"",
			     "Compliance API queries, by result");
	a->m_failed = metric_get(METRIC_COUNTER, "gw_auditor_api_queries_total",
				 "result=\"failed\"", "Compliance API queries, by result");
	a->m_rejected = metric_get(METRIC_COUNTER, "gw_auditor_api_queries_total",
				   "result=\"rejected_busy\"", "Compliance API queries, by result");
	if (evhttp_set_cb(rt->admin, "/audit/events", on_events, a) != 0 ||
	    evhttp_set_cb(rt->admin, "/audit/report", on_report, a) != 0) {
		log_error("cannot add the compliance API routes");
		return -1;
	}
	a->enabled = 1;
	log_info("compliance API on the admin listener", LI("timeout_ms", a->timeout_ms),
		 LI("max_queries", a->max_queries));
	return 0;
}

void api_free(struct api *a)
{
	for (long long i = 0; a->slots && i < a->max_queries; i++) {
		struct api_slot *s = &a->slots[i];
		/* The loop has stopped: a waiting client is left to evhttp, which frees its
		 * request with the listener; it must not call back into this slot. */
		slot_take_req(s);
		slot_unwatch(s);
		PQclear(s->res);
		free(s->pbuf);
		if (s->conn)
			PQfinish(s->conn);
	}
	free(a->slots);
	if (a->url) {
		explicit_bzero(a->url, strlen(a->url));
		free(a->url);
	}
	memset(a, 0, sizeof *a);
}
