/* The authz service: the key cache refreshed from PostgreSQL, request decisions, and
 * usage counting written behind to authz.usage. Everything runs on the loop thread;
 * PostgreSQL is reached only through the non-blocking pgconn, so a dead database never
 * stalls decisions (they are served from the cache). */
#include "serve.h"
#include "audit.h"
#include "config.h"
#include "db.h"
#include "decide.h"
#include "kafka.h"
#include "keys.h"
#include "log.h"
#include "metrics.h"
#include "openai.h"
#include "pg.h"
#include "pgconn.h"
#include "runtime.h"
#include "seal.h"
#include "usage.h"
#include "wire.h"

#include <event2/event_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JANITOR_MS        100
/* A flush starts early once this many usage messages wait, well below the consumer's
 * per-partition in-flight bound, so gw.usage only pauses while PostgreSQL is down. */
#define USAGE_EARLY_FLUSH 1024
#define REQ_FIELDS        (GW_F_ID | GW_F_DEADLINE | GW_F_REPLY | GW_F_ROUTE | GW_F_MODEL)

struct authz;

/* One gw.requests message in flight: malloc'd on arrival, freed by req_release once
 * every output (reply or authorized message, audit event) is acknowledged. Linked in
 * authz.reqs so shutdown can free what the broker never acknowledged. */
struct req_work {
	struct kafka_work w;
	struct authz *a;
	struct req_work *prev, *next;
};

/* One gw.usage message counted in memory: malloc'd on arrival, released (and freed)
 * once the flush that covers its tokens has committed. */
struct usage_work {
	struct kafka_work w;
	struct authz *a;
	struct usage_work *next;
};

struct authz_config {
	long long max_keys, refresh_ms, flush_ms, usage_max, db_timeout_ms, stop_timeout_ms;
	long long fetch_wait_ms;
	const char *group;
};

/* The service; one per process, heap-allocated by serve_main, owns everything here. */
struct authz {
	struct runtime rt;
	struct authz_config cfg;
	struct kafka_producer prod;
	struct kafka_consumer cons;
	int prod_up, cons_up;
	struct pgconn db;
	struct key_cache keys;
	struct db_cursor cursor;
	struct usage_table usage;
	unsigned char seal_key[SEAL_KEY_LEN];
	struct event janitor;
	int janitor_added;
	int loaded;     /* the key cache was loaded once */
	int db_up;      /* last known: the database answered */
	int refreshing; /* a refresh pass has more pages */
	int64_t next_refresh_ms, next_flush_ms;
	int32_t today;
	struct req_work *reqs;
	long nreqs;
	struct usage_work *usage_wait, *usage_flushing; /* not yet flushed / in the flush */
	long usage_wait_n, usage_flushing_n;
	int usage_full_logged;
	int stopping;
	int stop_flush_started;
	int64_t stop_deadline_ms;
	int exit_code;
	struct metric *m_allowed, *m_denied, *m_expired, *m_error, *m_db_up, *m_tokens;
	/* Scratch for the message being handled (large: kept off the stack). */
	struct gw_meta in, out;
};

static void db_schedule(struct authz *a);

/* ---- small helpers ---- */

static void sha256_hex(const void *data, size_t len, char out[65])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[32];
	unsigned int n = 0;
	if (EVP_Digest(data ? data : "", len, md, &n, EVP_sha256(), NULL) != 1 || n != 32) {
		out[0] = 0;
		return;
	}
	for (int i = 0; i < 32; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[64] = 0;
}

static void meta_clear(struct gw_meta *m)
{
	memset(m, 0, offsetof(struct gw_meta, cred));
	m->cred_len = 0;
	m->reply_partition = -1;
}

static void db_state(struct authz *a, int up, const char *error)
{
	if (up == a->db_up)
		return;
	a->db_up = up;
	metric_set(a->m_db_up, up);
	/* Once per outage, not once per tick. */
	if (up)
		log_info("database reachable again");
	else
		log_error("database unreachable: serving API keys from the cache, keeping usage "
			  "in memory",
			  LS("error", error ? error : ""));
}

/* Out of memory on arrival: the message cannot be tracked, so stop cleanly (offsets of
 * what came before are kept; this and later messages are redelivered to the next owner). */
static void stop_on_oom(struct authz *a, const rd_kafka_message_t *msg)
{
	log_error("out of memory handling a message: shutting down so it is redelivered",
		  LS("topic", rd_kafka_topic_name(msg->rkt)), LI("partition", msg->partition),
		  LI("offset", msg->offset));
	a->exit_code = 1;
	if (!a->rt.stopping) {
		a->rt.stopping = 1;
		a->rt.on_stop(a);
	}
}

/* ---- gw.requests ---- */

static void req_release(struct kafka_work *w)
{
	struct req_work *rw = (struct req_work *)w;
	struct authz *a = rw->a;
	if (rw->prev)
		rw->prev->next = rw->next;
	else
		a->reqs = rw->next;
	if (rw->next)
		rw->next->prev = rw->prev;
	a->nreqs--;
	free(rw);
}

static void send_denial(struct authz *a, struct req_work *rw, const struct decision *d)
{
	const struct gw_meta *in = &a->in;
	char *body = openai_error_json(d->message, d->type, d->code, in->id);
	if (!body) {
		log_error("cannot build the denial body", LS("request_id", in->id));
		rw->w.failed = 1;
		return;
	}
	struct gw_meta *o = &a->out;
	meta_clear(o);
	memcpy(o->id, in->id, sizeof o->id);
	o->status = d->status;
	o->seq = 0;
	o->final = 1;
	snprintf(o->ctype, sizeof o->ctype, "application/json");
	rd_kafka_headers_t *h = rd_kafka_headers_new(8);
	if (wire_encode(o, GW_F_ID | GW_F_STATUS | GW_F_SEQ | GW_F_FINAL | GW_F_CTYPE, h) != 0) {
		log_error("cannot encode reply headers", LS("request_id", in->id));
		rd_kafka_headers_destroy(h);
		rw->w.failed = 1;
	} else if (kafka_produce(&a->prod, GW_TOPIC_REPLIES, in->reply_partition, in->id, GW_ID_HEX,
				 body, strlen(body), h, &rw->w, NULL) != 0) {
		/* Logged by kafka_produce; the unacknowledged output keeps the offset. */
		rw->w.failed = 1;
	}
	free(body);
}

/* Returns 0, or -1 when the identity does not fit the headers (the caller answers 500). */
static int send_authorized(struct authz *a, struct req_work *rw, const rd_kafka_message_t *msg,
			   const struct decision *d)
{
	const struct gw_meta *in = &a->in;
	struct gw_meta *o = &a->out;
	meta_clear(o);
	memcpy(o->id, in->id, sizeof o->id);
	o->deadline_ms = in->deadline_ms;
	o->reply_partition = in->reply_partition;
	memcpy(o->route, in->route, sizeof o->route);
	memcpy(o->model, in->model, sizeof o->model);
	o->stream = in->stream;
	memcpy(o->client, in->client, sizeof o->client);
	unsigned f = REQ_FIELDS | GW_F_STREAM | GW_F_PRINCIPAL | GW_F_GROUPS | GW_F_RULE |
		     (in->present & GW_F_CLIENT);
	size_t pl = strlen(d->key->principal), gl = strlen(d->key->groups);
	if (pl >= sizeof o->principal || gl >= sizeof o->groups) {
		log_error("principal or groups too long for the gw.authorized headers",
			  LS("request_id", in->id), LS("key_id", d->key->id));
		return -1;
	}
	memcpy(o->principal, d->key->principal, pl + 1);
	memcpy(o->groups, d->key->groups, gl + 1);
	snprintf(o->rule, sizeof o->rule, "%s", d->rule);
	/* gw-hint: the gw.requests key, so the dispatcher keys gw.usage the same way. */
	if (msg->key_len > 0 && msg->key_len < sizeof o->hint) {
		memcpy(o->hint, msg->key, msg->key_len);
		o->hint[msg->key_len] = 0;
		if (strlen(o->hint) == msg->key_len)
			f |= GW_F_HINT;
	}
	if (!(f & GW_F_HINT))
		log_warn("request has no usable principal hint key: gw-hint omitted",
			 LS("request_id", in->id), LI("partition", msg->partition),
			 LI("offset", msg->offset));
	rd_kafka_headers_t *h = rd_kafka_headers_new(16);
	if (wire_encode(o, f, h) != 0) {
		log_error("cannot encode gw.authorized headers", LS("request_id", in->id));
		rd_kafka_headers_destroy(h);
		return -1;
	}
	/* The body travels untouched; never a gw-cred header here. */
	if (kafka_produce(&a->prod, GW_TOPIC_AUTHORIZED, RD_KAFKA_PARTITION_UA, in->id, GW_ID_HEX,
			  msg->payload, msg->len, h, &rw->w, NULL) != 0)
		rw->w.failed = 1; /* logged by kafka_produce */
	return 0;
}

static void audit_decision(struct authz *a, struct req_work *rw, const rd_kafka_message_t *msg,
			   const char *outcome, int status, const char *reason,
			   const struct decision *d)
{
	const struct gw_meta *in = &a->in;
	char body_sha[65];
	sha256_hex(msg->payload, msg->len, body_sha);
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "authz.decision";
	ev.request_id = in->id;
	ev.outcome = outcome;
	ev.status = status;
	ev.reason = reason;
	if (d && d->key) {
		ev.principal = d->key->principal;
		ev.groups = d->key->groups;
	}
	ev.client = (in->present & GW_F_CLIENT) ? in->client : NULL;
	ev.route = in->route;
	ev.model = in->model;
	ev.body_sha256 = body_sha[0] ? body_sha : NULL;
	ev.body_size = (long long)msg->len;
	json_t *extra = NULL;
	if (d && d->rule[0])
		extra = json_pack("{s:s, s:s}", "rule", d->rule, "key_id", d->key->id);
	ev.extra = extra;
	if (audit_emit(&a->prod, &ev, &rw->w, NULL) != 0)
		rw->w.failed = 1;
	json_decref(extra);
}

static void handle_request(struct authz *a, rd_kafka_message_t *msg)
{
	struct req_work *rw = calloc(1, sizeof *rw);
	if (!rw) {
		stop_on_oom(a, msg);
		rd_kafka_message_destroy(msg);
		return;
	}
	rw->a = a;
	if (kafka_work_begin(&a->cons, &rw->w, msg, req_release) != 0) {
		free(rw);
		rd_kafka_message_destroy(msg);
		return;
	}
	rw->next = a->reqs;
	if (a->reqs)
		a->reqs->prev = rw;
	a->reqs = rw;
	a->nreqs++;

	struct gw_meta *in = &a->in;
	const char *why = NULL;
	if (wire_decode(msg, REQ_FIELDS, in, &why) != 0) {
		/* The dead letter keeps everything but the sealed credential. */
		rd_kafka_headers_t *hdrs = NULL;
		if (rd_kafka_message_headers(msg, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR && hdrs)
			rd_kafka_header_remove(hdrs, GW_H_CRED);
		if (wire_deadletter(&a->prod, msg, why, &rw->w) != 0)
			rw->w.failed = 1;
		goto done;
	}
	int64_t now = wire_now_ms();
	if (in->deadline_ms <= now) {
		/* Ingress already answered 504: audit only. */
		audit_decision(a, rw, msg, "expired", 0, "deadline passed", NULL);
		metric_add(a->m_expired, 1);
		goto done;
	}

	struct decision d;
	unsigned char plain[GW_CRED_MAX];
	size_t plen = 0;
	if (!(in->present & GW_F_CRED))
		decide(&a->keys, NULL, 0, in->model, now, &d);
	else if (seal_decrypt(a->seal_key, in->cred, in->cred_len, in->id, plain, sizeof plain,
			      &plen) != 0)
		decide_deny_credential(&d, "credential cannot be unsealed");
	else
		decide(&a->keys, plain, plen, in->model, now, &d);
	OPENSSL_cleanse(plain, plen);
	OPENSSL_cleanse(in->cred, in->cred_len);

	if (d.allowed) {
		if (send_authorized(a, rw, msg, &d) == 0) {
			audit_decision(a, rw, msg, "allowed", 0, d.reason, &d);
			metric_add(a->m_allowed, 1);
			goto done;
		}
		/* The identity cannot be carried downstream: answer 500, audit an error. */
		struct decision e = d;
		e.allowed = 0;
		e.status = 500;
		e.type = "server_error";
		e.code = NULL;
		e.reason = "identity does not fit the gw.authorized headers";
		snprintf(e.message, sizeof e.message, "internal error in authorization");
		send_denial(a, rw, &e);
		audit_decision(a, rw, msg, "error", e.status, e.reason, &e);
		metric_add(a->m_error, 1);
		goto done;
	}
	send_denial(a, rw, &d);
	audit_decision(a, rw, msg, "denied", d.status, d.reason, &d);
	metric_add(a->m_denied, 1);
done:
	kafka_work_release(&rw->w); /* may free rw */
	rd_kafka_message_destroy(msg);
}

/* ---- gw.usage ---- */

static void usage_release(struct kafka_work *w)
{
	free((struct usage_work *)w);
}

/* Principal and total_tokens of a gw.usage value; -1 when malformed. */
static int usage_parse(const rd_kafka_message_t *msg, char *principal, size_t cap, int64_t *tokens)
{
	json_t *root = json_loadb(msg->payload ? msg->payload : "", msg->len, 0, NULL);
	const char *p = root ? json_string_value(json_object_get(root, "principal")) : NULL;
	json_t *t = root ? json_object_get(root, "total_tokens") : NULL;
	int rc = -1;
	if (p && *p && strlen(p) < cap && json_is_integer(t) && json_integer_value(t) >= 0 &&
	    json_integer_value(t) <= 1000000000000LL) {
		rc = 0;
		for (const unsigned char *c = (const unsigned char *)p; *c; c++)
			if (*c < 0x20 || *c == 0x7f)
				rc = -1;
		snprintf(principal, cap, "%s", p);
		*tokens = json_integer_value(t);
	}
	json_decref(root);
	return rc;
}

static void handle_usage(struct authz *a, rd_kafka_message_t *msg)
{
	struct usage_work *uw = calloc(1, sizeof *uw);
	if (!uw) {
		stop_on_oom(a, msg);
		rd_kafka_message_destroy(msg);
		return;
	}
	uw->a = a;
	if (kafka_work_begin(&a->cons, &uw->w, msg, usage_release) != 0) {
		free(uw);
		rd_kafka_message_destroy(msg);
		return;
	}
	const char *why = NULL;
	char principal[256];
	int64_t tokens = 0;
	if (wire_decode(msg, GW_F_ID, &a->in, &why) == 0 &&
	    usage_parse(msg, principal, sizeof principal, &tokens) != 0)
		why = "invalid usage JSON";
	if (why) {
		if (wire_deadletter(&a->prod, msg, why, &uw->w) != 0)
			uw->w.failed = 1;
		kafka_work_release(&uw->w);
		rd_kafka_message_destroy(msg);
		return;
	}
	if (usage_add(&a->usage, principal, usage_day(wire_now_ms()), tokens) != 0) {
		if (!a->usage_full_logged)
			log_error("usage table full (GW_AUTHZ_USAGE_MAX) or out of memory: usage "
				  "offsets stay uncommitted until a restart redoes them",
				  LS("topic", GW_TOPIC_USAGE), LI("partition", msg->partition),
				  LI("offset", msg->offset), LI("max", a->cfg.usage_max));
		a->usage_full_logged = 1;
		uw->w.failed = 1;
		kafka_work_release(&uw->w);
		rd_kafka_message_destroy(msg);
		return;
	}
	a->usage_full_logged = 0;
	metric_add(a->m_tokens, (double)tokens);
	/* The arrival hold stays until the flush that covers these tokens commits. */
	uw->next = a->usage_wait;
	a->usage_wait = uw;
	a->usage_wait_n++;
	rd_kafka_message_destroy(msg);
	if (a->usage_wait_n >= USAGE_EARLY_FLUSH)
		db_schedule(a);
}

static void release_list(struct usage_work *uw)
{
	while (uw) {
		struct usage_work *next = uw->next;
		kafka_work_release(&uw->w); /* frees uw */
		uw = next;
	}
}

static void on_message(void *arg, rd_kafka_message_t *msg)
{
	struct authz *a = arg;
	/* Stopping: not begun, so not stored; the next owner of the partition reads it. */
	if (a->stopping) {
		rd_kafka_message_destroy(msg);
		return;
	}
	const char *topic = rd_kafka_topic_name(msg->rkt);
	if (strcmp(topic, GW_TOPIC_REQUESTS) == 0) {
		handle_request(a, msg);
	} else if (strcmp(topic, GW_TOPIC_USAGE) == 0) {
		handle_usage(a, msg);
	} else {
		log_warn("message from a topic authz does not read", LS("topic", topic),
			 LI("partition", msg->partition), LI("offset", msg->offset));
		rd_kafka_message_destroy(msg);
	}
}

/* ---- PostgreSQL: key refresh and usage flush, one query at a time ---- */

static void on_refresh_page(void *arg, PGresult *res, const char *error)
{
	struct authz *a = arg;
	int64_t now = wire_now_ms();
	if (!res) {
		db_state(a, 0, error);
		a->refreshing = 0;
		a->next_refresh_ms = now + a->cfg.refresh_ms;
		return;
	}
	int refused;
	int n = db_keys_apply(res, &a->keys, &a->cursor, &refused);
	if (n < 0) {
		log_error("unexpected result from the key query");
		a->refreshing = 0;
	} else {
		db_state(a, 1, NULL);
		a->refreshing = n == DB_KEYS_PAGE;
		if (n > 0)
			log_debug("keys refreshed", LI("rows", n), LI("cached", a->keys.count));
	}
	if (!a->refreshing)
		a->next_refresh_ms = now + a->cfg.refresh_ms;
	db_schedule(a);
}

static void on_flush(void *arg, PGresult *res, const char *error)
{
	struct authz *a = arg;
	usage_flush_end(&a->usage, res != NULL);
	struct usage_work *done = a->usage_flushing;
	a->usage_flushing = NULL;
	if (res) {
		db_state(a, 1, NULL);
		log_debug("usage flushed", LI("messages", a->usage_flushing_n));
		a->usage_flushing_n = 0;
		release_list(done);
	} else {
		db_state(a, 0, error);
		/* Keep the messages waiting: their deltas stay in the table for the next try. */
		while (done) {
			struct usage_work *next = done->next;
			done->next = a->usage_wait;
			a->usage_wait = done;
			a->usage_wait_n++;
			done = next;
		}
		a->usage_flushing_n = 0;
	}
	a->next_flush_ms = wire_now_ms() + a->cfg.flush_ms;
	/* The final flush is done, or failed: either way shutdown moves on. A regular flush
	 * that was under way when the stop began is followed by the final one. */
	if (a->stopping && a->stop_flush_started == 1)
		a->stop_flush_started = res ? 2 : 3;
	db_schedule(a);
}

/* Returns 1 when a flush query was started. */
static int start_flush(struct authz *a)
{
	char *json = NULL;
	size_t rows = 0;
	int rc = usage_flush_begin(&a->usage, &json, &rows);
	if (rc < 0) {
		log_error("out of memory building the usage flush");
		return 0;
	}
	if (rc == 0) {
		/* Nothing left to write: what waits is already committed (or zero tokens). */
		struct usage_work *w = a->usage_wait;
		a->usage_wait = NULL;
		a->usage_wait_n = 0;
		release_list(w);
		return 0;
	}
	a->usage_flushing = a->usage_wait;
	a->usage_flushing_n = a->usage_wait_n;
	a->usage_wait = NULL;
	a->usage_wait_n = 0;
	const char *params[] = {json};
	if (pgconn_query(&a->db, DB_SQL_USAGE_UPSERT, 1, params, on_flush, a) != 0) {
		log_error("cannot queue the usage flush", LI("rows", (long long)rows));
		usage_flush_end(&a->usage, 0);
		a->usage_wait = a->usage_flushing;
		a->usage_wait_n = a->usage_flushing_n;
		a->usage_flushing = NULL;
		a->usage_flushing_n = 0;
		free(json);
		return 0;
	}
	free(json);
	return 1;
}

static void start_refresh_page(struct authz *a)
{
	struct db_page_params p;
	db_page_params(&a->cursor, &p);
	if (pgconn_query(&a->db, DB_SQL_KEYS_PAGE, 3, p.values, on_refresh_page, a) != 0) {
		log_error("cannot queue the key refresh");
		a->refreshing = 0;
		a->next_refresh_ms = wire_now_ms() + a->cfg.refresh_ms;
	}
}

/* Starts the next due database job when the connection is free. */
static void db_schedule(struct authz *a)
{
	if (a->db.busy)
		return;
	int64_t now = wire_now_ms();
	int flush_due = (a->usage_wait || a->usage.count) &&
			(now >= a->next_flush_ms || a->usage_wait_n >= USAGE_EARLY_FLUSH);
	if (a->stopping) {
		if (a->stop_flush_started == 0) {
			a->stop_flush_started = 1;
			if (!start_flush(a))
				a->stop_flush_started = 2;
		}
		return;
	}
	if (a->refreshing) {
		start_refresh_page(a);
		return;
	}
	if (flush_due && start_flush(a))
		return;
	if (now >= a->next_refresh_ms) {
		db_cursor_pass(&a->cursor);
		a->refreshing = 1;
		start_refresh_page(a);
	}
}

/* ---- janitor, readiness, shutdown ---- */

static void finish_stop(struct authz *a)
{
	if (a->janitor_added)
		event_del(&a->janitor);
	a->janitor_added = 0;
	int64_t left = a->stop_deadline_ms - wire_now_ms();
	/* The producer goes first: its delivery reports release work that points into the
	 * consumer's partition trackers, which kafka_consumer_close frees. */
	if (a->prod_up) {
		kafka_producer_close(&a->prod, left > 1000 ? (int)left : 1000);
		a->prod_up = 0;
	}
	if (a->usage_wait_n || a->usage_flushing_n)
		log_warn("usage not written to PostgreSQL at shutdown: its offsets stay "
			 "uncommitted, so the next owner counts it again",
			 LI("messages", a->usage_wait_n + a->usage_flushing_n),
			 LI("tokens", usage_pending(&a->usage)));
	if (a->cons_up) {
		kafka_consumer_close(&a->cons);
		a->cons_up = 0;
	}
	/* What the broker never acknowledged is freed without storing an offset. */
	while (a->reqs) {
		struct req_work *rw = a->reqs;
		a->reqs = rw->next;
		free(rw);
	}
	a->nreqs = 0;
	struct usage_work *lists[] = {a->usage_wait, a->usage_flushing};
	for (int i = 0; i < 2; i++)
		while (lists[i]) {
			struct usage_work *uw = lists[i];
			lists[i] = uw->next;
			free(uw);
		}
	a->usage_wait = a->usage_flushing = NULL;
	a->usage_wait_n = a->usage_flushing_n = 0;
	pgconn_close(&a->db);
	log_info("stopped", LI("exit_code", a->exit_code));
	runtime_exit(&a->rt);
}

static void stop_tick(struct authz *a, int64_t now)
{
	int timed_out = now >= a->stop_deadline_ms;
	/* 1: outputs of handled requests acknowledged; 2: usage flushed (or given up). */
	if (a->nreqs > 0 && !timed_out)
		return;
	if (a->nreqs > 0)
		log_warn("stop timeout: requests whose outputs were not acknowledged are left "
			 "for the next owner",
			 LI("requests", a->nreqs));
	db_schedule(a);
	if ((a->stop_flush_started == 1 || a->db.busy) && !timed_out)
		return;
	finish_stop(a);
}

static void on_janitor(evutil_socket_t fd, short what, void *arg)
{
	struct authz *a = arg;
	int64_t now = wire_now_ms();
	pgconn_tick(&a->db, now);
	int32_t day = usage_day(now);
	if (day != a->today) {
		a->today = day;
		usage_gc(&a->usage, day);
	}
	if (a->stopping) {
		stop_tick(a, now);
		return;
	}
	db_schedule(a);
}

static void on_stop(void *arg)
{
	struct authz *a = arg;
	if (a->stopping)
		return;
	a->stopping = 1;
	a->stop_deadline_ms = wire_now_ms() + a->cfg.stop_timeout_ms;
	/* Stop fetching; whatever is already queued is dropped unbegun in on_message. */
	rd_kafka_topic_partition_list_t *parts = NULL;
	if (a->cons_up && rd_kafka_assignment(a->cons.rk, &parts) == RD_KAFKA_RESP_ERR_NO_ERROR &&
	    parts) {
		if (parts->cnt > 0)
			rd_kafka_pause_partitions(a->cons.rk, parts);
		rd_kafka_topic_partition_list_destroy(parts);
	}
	log_info("stopping: waiting for outputs to be acknowledged and usage to be written",
		 LI("requests", a->nreqs),
		 LI("usage_messages", a->usage_wait_n + a->usage_flushing_n),
		 LI("timeout_ms", a->cfg.stop_timeout_ms));
}

/* Ready once the key cache has been loaded and the consumer has joined its group (it may
 * legitimately hold no partition when there are more copies than partitions). */
static int ready(void *arg, char *why, size_t cap)
{
	struct authz *a = arg;
	if (!a->loaded) {
		snprintf(why, cap, "key cache not loaded");
		return 0;
	}
	if (a->prod.fatal) {
		snprintf(why, cap, "Kafka producer in a fatal state");
		return 0;
	}
	rd_kafka_topic_partition_list_t *parts = NULL;
	int assigned = 0;
	if (rd_kafka_assignment(a->cons.rk, &parts) == RD_KAFKA_RESP_ERR_NO_ERROR && parts) {
		assigned = parts->cnt > 0;
		rd_kafka_topic_partition_list_destroy(parts);
	}
	if (!assigned) {
		char *member = rd_kafka_memberid(a->cons.rk);
		int joined = member && *member;
		if (member)
			rd_kafka_mem_free(a->cons.rk, member);
		if (!joined) {
			snprintf(why, cap, "consumer has not joined group %s yet", a->cfg.group);
			return 0;
		}
	}
	return 1;
}

static double keys_cached(void *arg)
{
	return (double)((struct authz *)arg)->keys.count;
}

/* ---- start-up ---- */

static int read_config(struct authz_config *cfg)
{
	cfg->group = config_str("GW_AUTHZ_GROUP", "authz");
	if (config_int("GW_AUTHZ_MAX_KEYS", 1000000, 1, 100000000, &cfg->max_keys) ||
	    config_int("GW_AUTHZ_REFRESH_MS", 1000, 100, 3600000, &cfg->refresh_ms) ||
	    config_int("GW_AUTHZ_USAGE_FLUSH_MS", 5000, 100, 3600000, &cfg->flush_ms) ||
	    config_int("GW_AUTHZ_USAGE_MAX", 100000, 1, 100000000, &cfg->usage_max) ||
	    config_int("GW_AUTHZ_DB_TIMEOUT_MS", 5000, 100, 600000, &cfg->db_timeout_ms) ||
	    config_int("GW_AUTHZ_STOP_TIMEOUT_MS", 10000, 0, 600000, &cfg->stop_timeout_ms) ||
	    config_int("GW_KAFKA_FETCH_WAIT_MS", 2, 0, 10000, &cfg->fetch_wait_ms))
		return -1;
	return 0;
}

static int setup_metrics(struct authz *a)
{
	a->m_allowed = metric_get(METRIC_COUNTER, "gw_authz_decisions_total", "outcome=\"allowed\"",
				  "Authorization decisions by outcome");
	a->m_denied = metric_get(METRIC_COUNTER, "gw_authz_decisions_total", "outcome=\"denied\"",
				 "Authorization decisions by outcome");
	a->m_expired = metric_get(METRIC_COUNTER, "gw_authz_decisions_total", "outcome=\"expired\"",
				  "Authorization decisions by outcome");
	a->m_error = metric_get(METRIC_COUNTER, "gw_authz_decisions_total", "outcome=\"error\"",
				"Authorization decisions by outcome");
	a->m_db_up = metric_get(METRIC_GAUGE, "gw_authz_db_up", NULL,
				"1 when the last PostgreSQL query of authz succeeded");
	a->m_tokens = metric_get(METRIC_COUNTER, "gw_authz_usage_tokens_total", NULL,
				 "Tokens counted from gw.usage");
	struct metric *k = metric_gauge_fn("gw_authz_keys_cached", NULL,
					   "API keys held in the authz cache", keys_cached, a);
	if (!a->m_allowed || !a->m_denied || !a->m_expired || !a->m_error || !a->m_db_up ||
	    !a->m_tokens || !k)
		return -1;
	return 0;
}

/* Blocking load: the cache must be complete before the first decision. */
static int load_keys(struct authz *a)
{
	char *url = NULL;
	if (config_secret("GW_DATABASE_URL", &url, NULL) != 0)
		return -1;
	if (!url) {
		log_error("GW_DATABASE_URL (or GW_DATABASE_URL_FILE) is not set: authz loads API "
			  "keys from PostgreSQL as role gw_authz");
		return -1;
	}
	int rc = -1;
	PGconn *conn = pg_connect(url, "authz");
	if (!conn)
		goto out;
	int64_t t0 = wire_now_ms();
	long n = db_keys_load(conn, &a->keys, &a->cursor);
	if (n < 0) {
		log_error("cannot load API keys at start: has `authz migrate` run, and does the "
			  "role have SELECT on authz.api_keys?");
		PQfinish(conn);
		goto out;
	}
	log_info("API keys loaded", LI("rows", n), LI("cached", a->keys.count),
		 LI("ms", wire_now_ms() - t0));
	if (pgconn_init(&a->db, a->rt.base, url, "authz", (int)a->cfg.db_timeout_ms) != 0) {
		PQfinish(conn);
		goto out;
	}
	if (pgconn_adopt(&a->db, conn) != 0)
		goto out;
	a->loaded = 1;
	a->db_up = 1;
	metric_set(a->m_db_up, 1);
	rc = 0;
out:
	if (url) {
		OPENSSL_cleanse(url, strlen(url));
		free(url);
	}
	return rc;
}

static int start(struct authz *a)
{
	if (read_config(&a->cfg) != 0 || seal_key_load(a->seal_key) != 0 || setup_metrics(a) != 0)
		return -1;
	if (keys_init(&a->keys, (size_t)a->cfg.max_keys) != 0 ||
	    usage_init(&a->usage, (size_t)a->cfg.usage_max) != 0) {
		log_error("out of memory");
		return -1;
	}
	a->today = usage_day(wire_now_ms());
	if (load_keys(a) != 0)
		return -1;
	const char *client = config_instance("authz");
	if (kafka_producer_init(&a->prod, a->rt.base, client) != 0)
		return -1;
	a->prod_up = 1;
	a->cons.on_message = on_message;
	a->cons.arg = a;
	if (kafka_consumer_init(&a->cons, a->rt.base, a->cfg.group, client,
				(int)a->cfg.fetch_wait_ms) != 0)
		return -1;
	a->cons_up = 1;
	/* Both topics in one group: the range assignor gives the same partition numbers of
	 * gw.requests and gw.usage to the same copy, so a principal's usage meets its limits. */
	const char *const topics[] = {GW_TOPIC_REQUESTS, GW_TOPIC_USAGE};
	if (kafka_consumer_subscribe(&a->cons, topics, 2) != 0)
		return -1;
	struct timeval tv = {0, JANITOR_MS * 1000};
	if (event_assign(&a->janitor, a->rt.base, -1, EV_PERSIST, on_janitor, a) != 0 ||
	    event_add(&a->janitor, &tv) != 0) {
		log_error("cannot start the janitor timer");
		return -1;
	}
	a->janitor_added = 1;
	int64_t now = wire_now_ms();
	a->next_refresh_ms = now + a->cfg.refresh_ms;
	a->next_flush_ms = now + a->cfg.flush_ms;
	a->rt.on_stop = on_stop;
	a->rt.ready = ready;
	a->rt.arg = a;
	log_info("authz serving", LS("group", a->cfg.group), LI("max_keys", a->cfg.max_keys),
		 LI("refresh_ms", a->cfg.refresh_ms), LI("usage_flush_ms", a->cfg.flush_ms));
	return 0;
}

static void teardown(struct authz *a)
{
	if (a->janitor_added)
		event_del(&a->janitor);
	if (a->prod_up)
		kafka_producer_close(&a->prod, 1000);
	if (a->cons_up)
		kafka_consumer_close(&a->cons);
	while (a->reqs) {
		struct req_work *rw = a->reqs;
		a->reqs = rw->next;
		free(rw);
	}
	pgconn_close(&a->db);
	keys_free(&a->keys);
	usage_free(&a->usage);
	OPENSSL_cleanse(a->seal_key, sizeof a->seal_key);
	runtime_free(&a->rt);
}

int serve_main(void)
{
	struct authz *a = calloc(1, sizeof *a);
	if (!a) {
		log_error("out of memory");
		return 1;
	}
	int code = 1;
	if (runtime_setup(&a->rt, "authz", "127.0.0.1:9101") == 0 && start(a) == 0 &&
	    runtime_run(&a->rt) == 0)
		code = a->exit_code;
	teardown(a);
	free(a);
	return code;
}
