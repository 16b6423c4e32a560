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
#include "fetch.h"
#include "introspect.h"
#include "jwt.h"
#include "keys.h"
#include "limiter.h"
#include "log.h"
#include "metrics.h"
#include "openai.h"
#include "pg.h"
#include "pgconn.h"
#include "policy.h"
#include "runtime.h"
#include "seal.h"
#include "usage.h"
#include "wire.h"

#include <event2/event_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#define JANITOR_MS        100
/* A flush starts early once this many usage messages wait, well below the consumer's
 * per-partition in-flight bound, so gw.usage only pauses while PostgreSQL is down. */
#define USAGE_EARLY_FLUSH 1024
#define GW_H_RETRY_AFTER  "gw-retry-after" /* seconds; ingress turns it into Retry-After */
#define GW_ROUTE_WHOAMI   "/resource_server/whoami"
/* gw-model is required too, except on the routes without a model. */
#define REQ_FIELDS        (GW_F_ID | GW_F_DEADLINE | GW_F_REPLY | GW_F_ROUTE)

struct authz;

/* One gw.requests message in flight: malloc'd on arrival, freed by req_release once
 * every output (reply or authorized message, audit event) is acknowledged. Linked in
 * authz.reqs so shutdown can free what the broker never acknowledged. */
struct req_work {
	struct kafka_work w;
	struct authz *a;
	struct req_work *prev, *next;
};

/* A request parked until its token's introspection answers, or until the JWKS refetch
 * its unknown key id started ends: owns msg and a copy of its metadata (without the
 * sealed credential). Freed when it resumes, or at shutdown. */
struct held_req {
	struct req_work *rw;
	rd_kafka_message_t *msg;
	struct gw_meta meta;
	int64_t since_ms;
	struct held_req *prev, *next;
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
	long long fetch_wait_ms, max_principals, max_slots, leeway_s;
	const char *group;
	const char *policy_file, *jwks_file, *jwks_url, *intro_url, *intro_client_id;
	const char *ca_file; /* GW_AUTHZ_CA_FILE: trust for https JWKS/introspection URLs */
	long long jwks_refresh_s, jwks_max_held, jwks_kid_refetch_s, quota_sync_ms;
	long long intro_timeout_ms, intro_max;
	const char *jwt_issuer, *jwt_audience, *jwt_principal_claim, *jwt_groups_claim,
	    *jwt_idp_claim, *jwt_policies_claim;
};

/* The outcome of one request's checks. Plain value type. */
struct verdict {
	int status;         /* 0 = allowed */
	const char *reason; /* for the audit event (static or reason_buf) */
	const char *type, *code;
	char message[384];
	char rule[128];
	int64_t retry_after_s; /* 429 only */
	char limit[32];
	char reason_buf[256];
};

/* A watched configuration file: reloaded on SIGHUP and when its mtime or size changes. */
struct watched_file {
	const char *path; /* from the environment; NULL = not configured */
	time_t mtime;
	long mtime_ns;
	off_t size;
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
	struct usage_table gusage; /* tokens per (group with a quota, day) counted here */
	int gusage_dirty;          /* gusage has deltas not yet in a flush */
	int gusage_full_logged;
	struct limiter lim;
	struct policy *policy; /* never NULL while serving; replaced whole on reload */
	struct watched_file policy_watch, jwks_watch;
	struct jwks jwks;
	struct jwt_config jwt;
	char *hs256_secret;
	size_t hs256_len;
	int jwt_enabled;
	struct introspect *intro;   /* NULL unless GW_INTROSPECTION_URL is set */
	struct fetcher *jwks_fetch; /* NULL unless GW_JWKS_URL is set */
	int jwks_loaded;
	int64_t jwks_kid_fetch_ms, jwks_next_fetch_ms; /* last unknown-kid refetch, next refresh */
	struct held_req *held;
	long nheld;
	struct held_req *kid_held; /* waiting for the JWKS refetch (newest first) */
	long nkid_held;
	struct lim_entry *quota_loading; /* the principal whose quota query is under way */
	int64_t quota_committed;
	char quota_principal[256], quota_day_str[16];
	int64_t next_watch_ms;
	unsigned char seal_key[SEAL_KEY_LEN];
	struct event janitor;
	int janitor_added;
	int loaded;     /* the key cache was loaded once */
	int db_up;      /* last known: the database answered */
	int refreshing; /* a refresh pass has more pages */
	int64_t next_refresh_ms, next_flush_ms;
	int64_t next_gflush_ms, next_gsync_ms; /* group quotas: flush deltas, re-read totals */
	int32_t gsync_day;                     /* the day of the group sync under way */
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
	struct metric *m_limited, *m_slots_expired, *m_reload_ok, *m_reload_bad;
	/* Scratch for the message being handled (large: kept off the stack). */
	struct gw_meta in, out;
	struct identity id;
	char models[2048];
	const char *intro_tok; /* into the unsealed credential, during handle_request only */
	size_t intro_len;
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

/* Produces one non-streamed answer (a denial or the whoami answer) on gw.replies. */
static void send_reply(struct authz *a, struct req_work *rw, int status, const char *body,
		       int64_t retry_after_s)
{
	const struct gw_meta *in = &a->in;
	struct gw_meta *o = &a->out;
	meta_clear(o);
	memcpy(o->id, in->id, sizeof o->id);
	o->status = status;
	o->seq = 0;
	o->final = 1;
	snprintf(o->ctype, sizeof o->ctype, "application/json");
	rd_kafka_headers_t *h = rd_kafka_headers_new(8);
	char ra[24];
	int n = snprintf(ra, sizeof ra, "%lld", (long long)retry_after_s);
	if (wire_encode(o, GW_F_ID | GW_F_STATUS | GW_F_SEQ | GW_F_FINAL | GW_F_CTYPE, h) != 0 ||
	    (retry_after_s > 0 && rd_kafka_header_add(h, GW_H_RETRY_AFTER, -1, ra, n) != 0)) {
		log_error("cannot encode reply headers", LS("request_id", in->id));
		rd_kafka_headers_destroy(h);
		rw->w.failed = 1;
	} else if (kafka_produce(&a->prod, GW_TOPIC_REPLIES, in->reply_partition, in->id, GW_ID_HEX,
				 body, strlen(body), h, &rw->w, NULL) != 0) {
		/* Logged by kafka_produce; the unacknowledged output keeps the offset. */
		rw->w.failed = 1;
	}
}

static void send_denial(struct authz *a, struct req_work *rw, const struct verdict *v)
{
	const struct gw_meta *in = &a->in;
	char *body = openai_error_json(v->message, v->type, v->code, in->id);
	if (body && v->retry_after_s > 0) {
		/* Clients that cannot see headers still learn when to come back. */
		json_t *root = json_loads(body, 0, NULL);
		json_t *err = root ? json_object_get(root, "error") : NULL;
		char *with = NULL;
		if (err &&
		    json_object_set_new(err, "retry_after_s", json_integer(v->retry_after_s)) == 0)
			with = json_dumps(root, JSON_COMPACT);
		json_decref(root);
		if (with) {
			free(body);
			body = with;
		}
	}
	if (!body) {
		log_error("cannot build the denial body", LS("request_id", in->id));
		rw->w.failed = 1;
		return;
	}
	send_reply(a, rw, v->status, body, v->retry_after_s);
	free(body);
}

static void deny(struct verdict *v, int status, const char *reason, const char *code,
		 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void deny(struct verdict *v, int status, const char *reason, const char *code,
		 const char *fmt, ...)
{
	v->status = status;
	v->reason = reason;
	v->type = openai_error_type(status);
	v->code = code;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(v->message, sizeof v->message, fmt, ap);
	va_end(ap);
}

/* Returns 0, or -1 when the identity does not fit the headers (the caller answers 500). */
static int send_authorized(struct authz *a, struct req_work *rw, const rd_kafka_message_t *msg,
			   const struct verdict *v)
{
	const struct gw_meta *in = &a->in;
	const struct identity *id = &a->id;
	struct gw_meta *o = &a->out;
	meta_clear(o);
	memcpy(o->id, in->id, sizeof o->id);
	o->deadline_ms = in->deadline_ms;
	o->reply_partition = in->reply_partition;
	memcpy(o->route, in->route, sizeof o->route);
	memcpy(o->model, in->model, sizeof o->model);
	o->stream = in->stream;
	memcpy(o->client, in->client, sizeof o->client);
	memcpy(o->cluster, in->cluster, sizeof o->cluster);
	memcpy(o->framework, in->framework, sizeof o->framework);
	unsigned f = REQ_FIELDS | GW_F_STREAM | GW_F_PRINCIPAL | GW_F_GROUPS | GW_F_RULE |
		     GW_F_MODELS |
		     (in->present & (GW_F_MODEL | GW_F_CLIENT | GW_F_CLUSTER | GW_F_FRAMEWORK));
	size_t pl = strlen(id->principal), gl = strlen(id->groups), ml = strlen(a->models);
	if (pl >= sizeof o->principal || gl >= sizeof o->groups || ml >= sizeof o->models) {
		log_error("principal, groups or models too long for the gw.authorized headers",
			  LS("request_id", in->id), LS("cred_id", id->cred_id));
		return -1;
	}
	memcpy(o->principal, id->principal, pl + 1);
	memcpy(o->groups, id->groups, gl + 1);
	memcpy(o->models, a->models, ml + 1);
	snprintf(o->rule, sizeof o->rule, "%.127s", v->rule);
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
	rd_kafka_headers_t *h = rd_kafka_headers_new(20);
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

static const char *cred_type_name(enum cred_type t)
{
	return t == CRED_JWT ? "jwt" : t == CRED_INTROSPECTION ? "introspection" : "api_key";
}

static void audit_decision(struct authz *a, struct req_work *rw, const rd_kafka_message_t *msg,
			   const char *outcome, const struct verdict *v, int authenticated)
{
	const struct gw_meta *in = &a->in;
	const struct identity *id = &a->id;
	char body_sha[65];
	sha256_hex(msg->payload, msg->len, body_sha);
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "authz.decision";
	ev.request_id = in->id;
	ev.outcome = outcome;
	ev.status = v ? v->status : 0;
	ev.reason = v ? v->reason : "deadline passed";
	if (authenticated) {
		ev.principal = id->principal;
		ev.groups = id->groups;
		ev.idp = id->idp[0] ? id->idp : NULL;
	}
	ev.client = (in->present & GW_F_CLIENT) ? in->client : NULL;
	ev.route = in->route;
	ev.model = in->model[0] ? in->model : NULL;
	ev.body_sha256 = body_sha[0] ? body_sha : NULL;
	ev.body_size = (long long)msg->len;
	json_t *extra = json_object();
	if (extra && v && v->rule[0])
		json_object_set_new(extra, "rule", json_string(v->rule));
	if (extra && authenticated) {
		json_object_set_new(extra, "credential", json_string(cred_type_name(id->type)));
		if (id->cred_id[0])
			json_object_set_new(extra, id->type == CRED_API_KEY ? "key_id" : "cred_id",
					    json_string(id->cred_id));
	}
	if (extra && v && v->limit[0]) {
		json_object_set_new(extra, "limit", json_string(v->limit));
		json_object_set_new(extra, "retry_after_s", json_integer(v->retry_after_s));
	}
	ev.extra = extra && json_object_size(extra) ? extra : NULL;
	if (audit_emit(&a->prod, &ev, &rw->w, NULL) != 0)
		rw->w.failed = 1;
	json_decref(extra);
}

/* Routes answered from the catalogue, not a model: no model check (docs/CONTRACT.md). */
static int route_without_model(const char *route)
{
	return strcmp(route, "/v1/models") == 0 ||
	       strcmp(route, "/resource_server/list-endpoints") == 0 ||
	       strcmp(route, "/resource_server/jobs") == 0 || strcmp(route, GW_ROUTE_WHOAMI) == 0;
}

/* A held request waits at most this long for its JWKS refetch (which times out after
 * JWKS_FETCH_TIMEOUT_MS); the janitor decides it with the keys in force after that. */
#define JWKS_FETCH_TIMEOUT_MS 10000
#define JWKS_HOLD_MAX_MS      (JWKS_FETCH_TIMEOUT_MS + 2000)

static void kid_held_resume(struct authz *a);

static void jwks_fetch_start(struct authz *a, int64_t now, const char *why)
{
	a->jwks_next_fetch_ms = now + a->cfg.jwks_refresh_s * 1000;
	if (fetch_start(a->jwks_fetch) == 0)
		log_info("fetching the JWKS", LS("url", a->cfg.jwks_url), LS("why", why));
}

static void on_jwks_fetched(void *arg, int status, const char *body, size_t len, const char *error)
{
	struct authz *a = arg;
	char err[256];
	struct jwks k;
	int skipped = 0;
	if (status != 200) {
		log_error("JWKS fetch failed: keeping the keys in force",
			  LS("url", a->cfg.jwks_url), LI("status", status),
			  LS("error", error ? error : ""));
		metric_add(a->m_reload_bad, 1);
		/* Retry sooner than the regular refresh while no keys were ever loaded. */
		if (!a->jwks_loaded)
			a->jwks_next_fetch_ms = wire_now_ms() + 5000;
		kid_held_resume(a);
		return;
	}
	if (jwks_parse(body, len, &k, &skipped, err, sizeof err) != 0) {
		log_error("fetched JWKS rejected: keeping the keys in force",
			  LS("url", a->cfg.jwks_url), LS("error", err));
		metric_add(a->m_reload_bad, 1);
		kid_held_resume(a);
		return;
	}
	jwks_free(&a->jwks);
	a->jwks = k;
	a->jwks_loaded = 1;
	metric_add(a->m_reload_ok, 1);
	log_info("JWKS loaded", LS("url", a->cfg.jwks_url), LI("keys", a->jwks.n),
		 LI("skipped", skipped));
	kid_held_resume(a);
}

/* An unknown kid with GW_JWKS_URL: 1 when the request should wait for a refetch (one is
 * under way, or this starts one within the rate limit), 0 to decide with the keys in
 * force, -1 when the waiting room is full (v: 503). */
static int jwks_wait_for_kid(struct authz *a, int64_t now, struct verdict *v)
{
	int busy = fetch_busy(a->jwks_fetch);
	if (!busy && now - a->jwks_kid_fetch_ms >= a->cfg.jwks_kid_refetch_s * 1000) {
		a->jwks_kid_fetch_ms = now;
		jwks_fetch_start(a, now, "a token names an unknown key id");
		busy = fetch_busy(a->jwks_fetch);
	}
	if (!busy || a->cfg.jwks_max_held == 0)
		return 0;
	if (a->nkid_held < a->cfg.jwks_max_held)
		return 1;
	deny(v, 503, "JWKS refetch: too many requests waiting", "jwks_refreshing",
	     "the token's signing key is being fetched; retry shortly");
	v->retry_after_s = 1;
	return -1;
}

/* Who the credential belongs to. Returns 0 with a->id filled, -1 with v a 401, -2 for
 * an opaque token (introspection), -3 when the request must wait for the JWKS refetch
 * (only when may_hold). */
static int authenticate(struct authz *a, const unsigned char *cred, size_t len, int64_t now,
			int may_hold, struct verdict *v)
{
	memset(&a->id, 0, sizeof a->id);
	if (!cred || len == 0) {
		deny(v, 401, "no credential", "missing_api_key",
		     "missing credential: send Authorization: Bearer <API key or token>");
		return -1;
	}
	const char *k = (const char *)cred;
	if (len > 7 && strncasecmp(k, "Bearer ", 7) == 0) {
		k += 7;
		len -= 7;
	}
	if (jwt_looks_like(k, len)) {
		if (!a->jwt_enabled) {
			deny(v, 401, "JWT not configured", "invalid_token",
			     "bearer tokens (JWT) are not accepted by this gateway");
			return -1;
		}
		char msg[256], kid[128];
		enum jwt_result r =
		    jwt_verify(&a->jwt, &a->jwks, k, len, now, &a->id, msg, sizeof msg, kid);
		if (r == JWT_UNKNOWN_KID && a->jwks_fetch && may_hold) {
			int w = jwks_wait_for_kid(a, now, v);
			if (w != 0)
				return w > 0 ? -3 : -1;
		}
		if (r != JWT_OK) {
			snprintf(v->reason_buf, sizeof v->reason_buf, "JWT: %.240s", msg);
			deny(v, 401, v->reason_buf, "invalid_token", "invalid token: %s", msg);
			return -1;
		}
		snprintf(v->rule, sizeof v->rule, "jwt:%.100s",
			 a->jwt.issuer ? a->jwt.issuer : "*");
		return 0;
	}
	char kid[APIKEY_ID_HEX + 1];
	if (a->intro && apikey_parse_n(k, len, kid) != 0) {
		/* An opaque token: the caller asks the introspection endpoint. */
		a->intro_tok = k;
		a->intro_len = len;
		return -2;
	}
	struct decision d;
	decide(&a->keys, k, len, NULL, now, &d);
	if (!d.allowed) {
		deny(v, d.status, d.reason, d.code, "%s", d.message);
		if (d.key) /* possession proven: the audit may say whose key it was */
			decide_identity(d.key, &a->id);
		return -1;
	}
	decide_identity(d.key, &a->id);
	snprintf(v->rule, sizeof v->rule, "%s", d.rule);
	return 0;
}

/* The whoami answer (docs/CONTRACT.md): who the caller is, never the credential. */
static char *whoami_json(const struct identity *id, const char *models)
{
	json_t *groups = json_array(), *ml = json_array();
	for (int pass = 0; pass < 2; pass++) {
		const char *s = pass ? models : id->groups;
		json_t *arr = pass ? ml : groups;
		while (s && *s) {
			const char *e = strchr(s, ',');
			size_t n = e ? (size_t)(e - s) : strlen(s);
			json_array_append_new(arr, json_stringn(s, n));
			if (!e)
				break;
			s = e + 1;
		}
	}
	json_t *exp = json_null();
	if (id->expires_ms > 0) {
		char ts[32];
		time_t t = (time_t)(id->expires_ms / 1000);
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
		exp = json_string(ts);
	}
	json_t *root =
	    json_pack("{s:s, s:o, s:s?, s:{s:s, s:s, s:o}, s:o}", "principal", id->principal,
		      "groups", groups, "idp", id->idp[0] ? id->idp : NULL, "credential", "type",
		      cred_type_name(id->type), "id", id->cred_id, "expires_at", exp, "models", ml);
	char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
	json_decref(root);
	return s;
}

/* Policy, models and limits for an authenticated identity. Returns 0 when allowed. */
static int authorize(struct authz *a, int64_t now, struct verdict *v)
{
	const struct gw_meta *in = &a->in;
	const struct identity *id = &a->id;
	char rule[64];
	if (policy_admit(a->policy, id, rule, sizeof rule, v->message, sizeof v->message) != 0) {
		snprintf(v->reason_buf, sizeof v->reason_buf, "policy: %s", rule);
		char msg[sizeof v->message];
		snprintf(msg, sizeof msg, "%s", v->message);
		snprintf(v->rule, sizeof v->rule, "policy:%s", rule);
		deny(v, 403, v->reason_buf, "policy_denied", "%s (rule policy:%s)", msg, rule);
		return -1;
	}
	if (policy_models_for(a->policy, id, a->models, sizeof a->models) != 0) {
		deny(v, 500, "allowed models do not fit the header", NULL,
		     "internal error in authorization");
		return -1;
	}
	if (!route_without_model(in->route) && !policy_list_has(a->models, in->model)) {
		deny(v, 403, "model not allowed", "model_not_allowed",
		     "model '%.200s' is not allowed for principal '%.100s' (rule %s)", in->model,
		     id->principal,
		     id->models[0] && strcmp(id->models, "*") ? v->rule : "policy:models_by_group");
		return -1;
	}
	if (strcmp(in->route, GW_ROUTE_WHOAMI) == 0)
		return 0; /* answered here; not counted against the limits */
	struct lim_refusal r;
	int64_t day_tokens = usage_tokens(&a->usage, id->principal, usage_day(now));
	int rc =
	    limiter_admit(&a->lim, a->policy, id, in->id, in->deadline_ms, now, day_tokens, &r);
	if (rc < 0) {
		deny(v, 503, "limit tables full", NULL,
		     "authorization is overloaded, retry shortly");
		v->retry_after_s = 1;
		return -1;
	}
	if (rc > 0) {
		snprintf(v->reason_buf, sizeof v->reason_buf, "limit %s (%.150s): %lld of %lld",
			 r.limit, r.scope, (long long)r.value, (long long)r.max);
		snprintf(v->limit, sizeof v->limit, "%s", r.limit);
		deny(v, 429, v->reason_buf, "rate_limit_exceeded",
		     "limit %s (%.200s) reached: %lld of %lld; retry after %lld s", r.limit,
		     r.scope, (long long)r.value, (long long)r.max, (long long)r.retry_after_s);
		v->retry_after_s = r.retry_after_s;
		return -1;
	}
	return 0;
}

/* The rest of a request once authentication is settled (rc 0 = authenticated, -1 =
 * denied in v): authorization, the answer, the audit event; then the work is released
 * and msg freed. a->in holds the request's metadata. */
static void finish_request(struct authz *a, struct req_work *rw, rd_kafka_message_t *msg, int rc,
			   struct verdict *vp, int64_t now)
{
	struct gw_meta *in = &a->in;
	struct verdict v = *vp;
	int authed = rc == 0 || a->id.principal[0];
	if (rc == 0)
		rc = authorize(a, now, &v);

	if (rc == 0 && strcmp(in->route, GW_ROUTE_WHOAMI) == 0) {
		char *body = whoami_json(&a->id, a->models);
		if (body) {
			v.reason = "whoami answered";
			send_reply(a, rw, 200, body, 0);
			audit_decision(a, rw, msg, "allowed", &v, 1);
			metric_add(a->m_allowed, 1);
			free(body);
			goto done;
		}
		deny(&v, 500, "cannot build the whoami answer", NULL, "internal error");
		rc = -1;
	}
	if (rc == 0) {
		v.reason = a->id.type == CRED_API_KEY ? "api key valid" : "token valid";
		if (send_authorized(a, rw, msg, &v) == 0) {
			audit_decision(a, rw, msg, "allowed", &v, 1);
			metric_add(a->m_allowed, 1);
			goto done;
		}
		/* The identity cannot be carried downstream: answer 500, audit an error. */
		limiter_usage(&a->lim, in->id, a->id.principal, 0, now);
		deny(&v, 500, "identity does not fit the gw.authorized headers", NULL,
		     "internal error in authorization");
	}
	send_denial(a, rw, &v);
	audit_decision(a, rw, msg, v.status >= 500 ? "error" : "denied", &v, authed);
	metric_add(v.status >= 500 ? a->m_error : v.status == 429 ? a->m_limited : a->m_denied, 1);
done:
	kafka_work_release(&rw->w); /* may free rw */
	rd_kafka_message_destroy(msg);
}

static void held_unlink(struct authz *a, struct held_req *h)
{
	if (h->prev)
		h->prev->next = h->next;
	else
		a->held = h->next;
	if (h->next)
		h->next->prev = h->prev;
	a->nheld--;
}

static void free_held(struct authz *a)
{
	/* Their work was never released: the offsets stay uncommitted and the next owner
	 * of the partition decides these requests again. */
	struct held_req **lists[] = {&a->held, &a->kid_held};
	for (int i = 0; i < 2; i++)
		while (*lists[i]) {
			struct held_req *h = *lists[i];
			*lists[i] = h->next;
			rd_kafka_message_destroy(h->msg);
			free(h);
		}
	a->nheld = a->nkid_held = 0;
}

/* The introspection answer for a parked request: resume it where it stopped. */
static void on_introspected(void *waiter, enum introspect_answer ans, const struct identity *id,
			    const char *why)
{
	struct held_req *h = waiter;
	struct authz *a = h->rw->a;
	held_unlink(a, h);
	memcpy(&a->in, &h->meta, sizeof a->in);
	struct verdict v;
	memset(&v, 0, sizeof v);
	memset(&a->id, 0, sizeof a->id);
	int rc = -1;
	if (ans == INTRO_OK) {
		a->id = *id;
		snprintf(v.rule, sizeof v.rule, "introspection");
		rc = 0;
	} else if (ans == INTRO_DENIED) {
		deny(&v, 401, "introspection: token not active", "invalid_token",
		     "invalid token: %s", why ? why : "token is not active");
	} else {
		deny(&v, 503, "introspection unavailable", "introspection_unavailable",
		     "the identity provider cannot be reached to check this token; retry shortly");
		v.retry_after_s = 5;
	}
	int64_t now = wire_now_ms();
	if (a->in.deadline_ms <= now) {
		audit_decision(a, h->rw, h->msg, "expired", NULL, rc == 0);
		metric_add(a->m_expired, 1);
		kafka_work_release(&h->rw->w);
		rd_kafka_message_destroy(h->msg);
	} else {
		finish_request(a, h->rw, h->msg, rc, &v, now);
	}
	free(h);
}

/* Looks the opaque token up. Returns 1 when the request was parked, else 0 (a->id
 * filled) or -1 (v says why). */
static int introspect_start(struct authz *a, struct req_work *rw, rd_kafka_message_t *msg,
			    int64_t now, struct verdict *v)
{
	if (a->intro_len > INTROSPECT_TOKEN_MAX) {
		deny(v, 401, "token too large", "invalid_token", "invalid token: too large");
		return -1;
	}
	struct held_req *h = malloc(sizeof *h);
	if (!h) {
		deny(v, 503, "out of memory", NULL, "authorization is overloaded, retry shortly");
		return -1;
	}
	h->rw = rw;
	h->msg = msg;
	int r = introspect_lookup(a->intro, a->intro_tok, a->intro_len, now, h, &a->id);
	if (r == -1) {
		memcpy(&h->meta, &a->in, sizeof h->meta);
		h->prev = NULL;
		h->next = a->held;
		if (a->held)
			a->held->prev = h;
		a->held = h;
		a->nheld++;
		return 1;
	}
	free(h);
	if (r == INTRO_OK) {
		snprintf(v->rule, sizeof v->rule, "introspection");
		return 0;
	}
	if (r == INTRO_DENIED) {
		deny(v, 401, "introspection: token not active (cached)", "invalid_token",
		     "invalid token: token is not active");
		return -1;
	}
	deny(v, 503, "introspection unavailable", "introspection_unavailable",
	     "the identity provider cannot be reached to check this token; retry shortly");
	v->retry_after_s = 5;
	return -1;
}

static void decide_request(struct authz *a, struct req_work *rw, rd_kafka_message_t *msg,
			   int may_hold);

/* Parks a request until the JWKS refetch ends (its work stays begun: offset unstored). */
static int kid_hold(struct authz *a, struct req_work *rw, rd_kafka_message_t *msg, int64_t now,
		    struct verdict *v)
{
	struct held_req *h = malloc(sizeof *h);
	if (!h) {
		deny(v, 503, "out of memory", NULL, "authorization is overloaded, retry shortly");
		return -1;
	}
	h->rw = rw;
	h->msg = msg;
	memcpy(&h->meta, &a->in, sizeof h->meta);
	h->since_ms = now;
	h->prev = NULL;
	h->next = a->kid_held;
	if (a->kid_held)
		a->kid_held->prev = h;
	a->kid_held = h;
	a->nkid_held++;
	return 1;
}

/* The refetch ended (keys replaced or not) or took too long: decides every held request
 * with the keys in force now, oldest first, without holding again. */
static void kid_held_resume(struct authz *a)
{
	struct held_req *h = a->kid_held, *oldest = NULL;
	a->kid_held = NULL;
	a->nkid_held = 0;
	while (h) { /* reverse: the list is newest first */
		struct held_req *next = h->next;
		h->next = oldest;
		oldest = h;
		h = next;
	}
	while (oldest) {
		h = oldest;
		oldest = h->next;
		decide_request(a, h->rw, h->msg, 0);
		free(h);
	}
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
	decide_request(a, rw, msg, 1);
}

/* Decodes, authenticates and decides one begun request; a->in and a->id are scratch.
 * may_hold = 0 when it resumes after a JWKS refetch (decided with the keys in force). */
static void decide_request(struct authz *a, struct req_work *rw, rd_kafka_message_t *msg,
			   int may_hold)
{
	struct gw_meta *in = &a->in;
	const char *why = NULL;
	if (wire_decode(msg, REQ_FIELDS, in, &why) == 0 && !(in->present & GW_F_MODEL) &&
	    !route_without_model(in->route))
		why = "missing gw-model";
	if (why) {
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
		memset(&a->id, 0, sizeof a->id);
		audit_decision(a, rw, msg, "expired", NULL, 0);
		metric_add(a->m_expired, 1);
		goto done;
	}

	struct verdict v;
	memset(&v, 0, sizeof v);
	unsigned char plain[GW_CRED_MAX];
	size_t plen = 0;
	int rc;
	if (!(in->present & GW_F_CRED)) {
		rc = authenticate(a, NULL, 0, now, may_hold, &v);
	} else if (seal_decrypt(a->seal_key, in->cred, in->cred_len, in->id, plain, sizeof plain,
				&plen) != 0) {
		deny(&v, 401, "credential cannot be unsealed", "invalid_api_key",
		     "invalid API key");
		rc = -1;
	} else {
		rc = authenticate(a, plain, plen, now, may_hold, &v);
	}
	OPENSSL_cleanse(in->cred, in->cred_len);
	in->cred_len = 0;
	if (rc == -3) {
		/* Only the sealed copy in msg is kept while it waits. */
		OPENSSL_cleanse(plain, plen);
		if (kid_hold(a, rw, msg, now, &v) == 1)
			return; /* resumed by kid_held_resume */
		rc = -1;
	}
	if (rc == -2) {
		rc = introspect_start(a, rw, msg, now, &v);
		OPENSSL_cleanse(plain, plen);
		if (rc == 1)
			return; /* parked: resumed by on_introspected */
	}
	OPENSSL_cleanse(plain, plen);
	finish_request(a, rw, msg, rc, &v, now);
	return;
done:
	kafka_work_release(&rw->w); /* may free rw */
	rd_kafka_message_destroy(msg);
}

/* ---- gw.usage ---- */

static void usage_release(struct kafka_work *w)
{
	free((struct usage_work *)w);
}

/* Principal, total_tokens and request_id (optional, "" when absent) of a gw.usage value;
 * -1 when malformed. */
static int usage_parse(const rd_kafka_message_t *msg, char *principal, size_t cap, int64_t *tokens,
		       char request_id[GW_ID_HEX + 1])
{
	json_t *root = json_loadb(msg->payload ? msg->payload : "", msg->len, 0, NULL);
	const char *rid = root ? json_string_value(json_object_get(root, "request_id")) : NULL;
	request_id[0] = 0;
	if (rid && wire_id_valid(rid))
		memcpy(request_id, rid, GW_ID_HEX + 1);
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
	char principal[256], rid[GW_ID_HEX + 1];
	int64_t tokens = 0;
	const char *qgroups[LIMITS_MAX_GROUPS];
	if (wire_decode(msg, GW_F_ID, &a->in, &why) == 0 &&
	    usage_parse(msg, principal, sizeof principal, &tokens, rid) != 0)
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
	const char *req_id = rid[0] ? rid : a->in.id;
	int nq = tokens > 0 ? limiter_quota_groups_of(&a->lim, req_id, principal, qgroups,
						      LIMITS_MAX_GROUPS)
			    : 0;
	for (int i = 0; i < nq; i++) {
		if (usage_add(&a->gusage, qgroups[i], usage_day(wire_now_ms()), tokens) == 0) {
			a->gusage_dirty = 1;
			continue;
		}
		/* The principal's share is counted (and its offset must be stored with it, or a
		 * redelivery would count it twice): only the group quota undercounts. */
		if (!a->gusage_full_logged)
			log_error("group usage table full (GW_AUTHZ_USAGE_MAX) or out of memory: "
				  "group quota not charged",
				  LS("group", qgroups[i]), LS("topic", GW_TOPIC_USAGE),
				  LI("partition", msg->partition), LI("offset", msg->offset),
				  LI("tokens", tokens));
		a->gusage_full_logged = 1;
	}
	/* The request ended: its concurrency slot frees, its tokens enter the minute
	 * windows. The usage's request id is the gw-id of the request (header or JSON). */
	limiter_usage(&a->lim, req_id, principal, tokens, wire_now_ms());
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
	usage_flush_end(&a->gusage, res != NULL);
	if (!res)
		a->gusage_dirty = usage_pending(&a->gusage) != 0;
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
	a->next_gflush_ms = wire_now_ms() + a->cfg.quota_sync_ms;
	/* The final flush is done, or failed: either way shutdown moves on. A regular flush
	 * that was under way when the stop began is followed by the final one. */
	if (a->stopping && a->stop_flush_started == 1)
		a->stop_flush_started = res ? 2 : 3;
	db_schedule(a);
}

/* Returns 1 when a flush query was started. */
static int start_flush(struct authz *a)
{
	char *json = NULL, *gjson = NULL;
	size_t rows = 0, grows = 0;
	int rc = usage_flush_begin(&a->usage, &json, &rows);
	int grc = rc < 0 ? 0 : usage_flush_begin(&a->gusage, &gjson, &grows);
	if (rc < 0 || grc < 0) {
		log_error("out of memory building the usage flush");
		usage_flush_end(&a->usage, 0);
		usage_flush_end(&a->gusage, 0);
		free(json);
		free(gjson);
		return 0;
	}
	a->gusage_dirty = 0;
	if (rc == 0 && grc == 0) {
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
	const char *params[] = {json ? json : "[]", gjson ? gjson : "[]"};
	if (pgconn_query(&a->db, DB_SQL_USAGE_UPSERT, 2, params, on_flush, a) != 0) {
		log_error("cannot queue the usage flush", LI("rows", (long long)rows),
			  LI("group_rows", (long long)grows));
		usage_flush_end(&a->usage, 0);
		usage_flush_end(&a->gusage, 0);
		a->gusage_dirty = 1;
		a->usage_wait = a->usage_flushing;
		a->usage_wait_n = a->usage_flushing_n;
		a->usage_flushing = NULL;
		a->usage_flushing_n = 0;
		free(json);
		free(gjson);
		return 0;
	}
	free(json);
	free(gjson);
	return 1;
}

static void on_group_sync(void *arg, PGresult *res, const char *error)
{
	struct authz *a = arg;
	int ok = res && PQresultStatus(res) == PGRES_TUPLES_OK && PQnfields(res) == 3;
	if (!res)
		db_state(a, 0, error);
	else
		db_state(a, 1, NULL);
	if (res && !ok)
		log_error("unexpected result from the group quota query",
			  LS("error", PQresultErrorMessage(res)));
	for (int i = 0; ok && i < PQntuples(res); i++)
		limiter_group_synced(&a->lim, PQgetvalue(res, i, 0),
				     strtoll(PQgetvalue(res, i, 1), NULL, 10),
				     strtoll(PQgetvalue(res, i, 2), NULL, 10));
	limiter_group_sync_end(&a->lim, ok, a->gsync_day);
	db_schedule(a);
}

/* Re-reads the totals of every group with a quota (other copies add to them). Returns 1
 * when the query was started. */
static int start_group_sync(struct authz *a, int64_t now)
{
	a->next_gsync_ms = now + a->cfg.quota_sync_ms;
	char *json = NULL;
	a->gsync_day = usage_day(now);
	int n = limiter_group_sync_begin(&a->lim, a->gsync_day, &json);
	if (n <= 0) {
		if (n < 0)
			log_error("out of memory building the group quota query");
		return 0;
	}
	char today[16];
	usage_day_str(a->gsync_day, today, sizeof today);
	const char *params[] = {json, today};
	int rc = pgconn_query(&a->db, DB_SQL_GROUP_QUOTA_LOAD, 2, params, on_group_sync, a);
	free(json);
	if (rc != 0) {
		log_error("cannot queue the group quota query", LI("groups", n));
		limiter_group_sync_end(&a->lim, 0, a->gsync_day);
		return 0;
	}
	return 1;
}

static void on_quota_loaded(void *arg, PGresult *res, const char *error)
{
	struct authz *a = arg;
	struct lim_entry *e = a->quota_loading;
	a->quota_loading = NULL;
	int ok = res && PQntuples(res) == 1 && PQnfields(res) == 2;
	if (!res)
		db_state(a, 0, error);
	else
		db_state(a, 1, NULL);
	if (e) {
		int64_t day = ok ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
		int64_t month = ok ? strtoll(PQgetvalue(res, 0, 1), NULL, 10) : 0;
		limiter_loaded(&a->lim, e, ok, day, month, a->quota_committed);
		if (ok)
			log_debug("quota totals loaded", LS("principal", e->name), LI("day", day),
				  LI("month", month));
	}
	db_schedule(a);
}

/* Returns 1 when a quota load was started. */
static int start_quota_load(struct authz *a)
{
	struct lim_entry *e = limiter_next_load(&a->lim);
	if (!e)
		return 0;
	int64_t now = wire_now_ms();
	int32_t day = usage_day(now);
	/* The connection runs one query at a time, so what this copy has committed now is
	 * exactly its share of what the query will read. */
	a->quota_committed = usage_committed(&a->usage, e->name, day);
	e->quota_day = day;
	time_t t = (time_t)(now / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(a->quota_day_str, sizeof a->quota_day_str, "%Y-%m-%d", &tm);
	snprintf(a->quota_principal, sizeof a->quota_principal, "%s", e->name);
	const char *params[] = {a->quota_principal, a->quota_day_str};
	a->quota_loading = e;
	if (pgconn_query(&a->db, DB_SQL_QUOTA_LOAD, 2, params, on_quota_loaded, a) != 0) {
		log_error("cannot queue the quota load", LS("principal", e->name));
		a->quota_loading = NULL;
		limiter_loaded(&a->lim, e, 0, 0, 0, 0);
		return 0;
	}
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
	/* Group usage goes out every quota sync interval: other copies read it from there. */
	int flush_due = ((a->usage_wait || a->usage.count) &&
			 (now >= a->next_flush_ms || a->usage_wait_n >= USAGE_EARLY_FLUSH)) ||
			(a->gusage_dirty && now >= a->next_gflush_ms);
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
	/* Revocations first (they must reach the cache within a second), then the usage,
	 * then quota loads (decisions use memory meanwhile). */
	if (now >= a->next_refresh_ms) {
		db_cursor_pass(&a->cursor);
		a->refreshing = 1;
		start_refresh_page(a);
		return;
	}
	if (flush_due && start_flush(a))
		return;
	/* While the database is down, loads wait for the next refresh to find it back. */
	if (!a->db_up)
		return;
	if (now >= a->next_gsync_ms && start_group_sync(a, now))
		return;
	start_quota_load(a);
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
			 LI("tokens", usage_pending(&a->usage)),
			 LI("group_tokens", usage_pending(&a->gusage)));
	if (a->cons_up) {
		kafka_consumer_close(&a->cons);
		a->cons_up = 0;
	}
	free_held(a);
	introspect_free(a->intro);
	a->intro = NULL;
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

/* 1 when the file changed since the last look (or cannot be seen: the load says why). */
static int watch_changed(struct watched_file *wf)
{
	struct stat st;
	if (!wf->path)
		return 0;
	if (stat(wf->path, &st) != 0)
		return wf->mtime != 0 || wf->size != -1 ? (wf->mtime = 0, wf->size = -1, 1) : 0;
	if (st.st_mtim.tv_sec == wf->mtime && st.st_mtim.tv_nsec == wf->mtime_ns &&
	    st.st_size == wf->size)
		return 0;
	wf->mtime = st.st_mtim.tv_sec;
	wf->mtime_ns = st.st_mtim.tv_nsec;
	wf->size = st.st_size;
	return 1;
}

/* Loads GW_POLICY_FILE; a bad file keeps the policy in force. Returns 0 or -1 (logged). */
static int policy_reload(struct authz *a)
{
	if (!a->policy_watch.path) {
		if (!a->policy && !(a->policy = policy_default())) {
			log_error("out of memory");
			return -1;
		}
		return 0;
	}
	watch_changed(&a->policy_watch);
	char err[256];
	struct policy *p = policy_load(a->policy_watch.path, err, sizeof err);
	if (!p) {
		log_error(a->policy ? "policy file rejected: keeping the policy in force"
				    : "policy file rejected: fix GW_POLICY_FILE",
			  LS("file", a->policy_watch.path), LS("error", err));
		metric_add(a->m_reload_bad, 1);
		return -1;
	}
	policy_free(a->policy);
	a->policy = p;
	metric_add(a->m_reload_ok, 1);
	int nq = limiter_quota_groups(&a->lim, p);
	if (nq < 0)
		log_error("out of memory tracking the group quotas: new quota groups are decided "
			  "from this copy's count only");
	a->next_gsync_ms = 0; /* new quota groups: read their totals at once */
	log_info("policy loaded", LS("file", a->policy_watch.path),
		 LI("principal_limits", p->nprincipals), LI("group_limits", p->ngroups),
		 LI("model_lists", p->nmodels));
	return 0;
}

static int read_file(const char *path, char **out, size_t *len, size_t max, char *err, size_t cap)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, cap, "cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	char *buf = malloc(max + 1);
	size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
	int bad = !buf || ferror(f);
	fclose(f);
	if (bad || n > max) {
		snprintf(err, cap, bad ? "cannot read %s" : "%s is too large", path);
		free(buf);
		return -1;
	}
	buf[n] = 0;
	*out = buf;
	*len = n;
	return 0;
}

/* Loads GW_JWKS_FILE; a bad file keeps the keys in force. Returns 0 or -1 (logged). */
static int jwks_reload(struct authz *a)
{
	if (!a->jwks_watch.path)
		return 0;
	watch_changed(&a->jwks_watch);
	char err[256], *text = NULL;
	size_t len = 0;
	struct jwks k;
	int skipped = 0;
	if (read_file(a->jwks_watch.path, &text, &len, JWKS_MAX_LEN, err, sizeof err) != 0 ||
	    jwks_parse(text, len, &k, &skipped, err, sizeof err) != 0) {
		free(text);
		log_error("JWKS file rejected: keeping the keys in force",
			  LS("file", a->jwks_watch.path), LS("error", err));
		metric_add(a->m_reload_bad, 1);
		return -1;
	}
	free(text);
	jwks_free(&a->jwks);
	a->jwks = k;
	metric_add(a->m_reload_ok, 1);
	if (skipped)
		log_warn("JWKS keys skipped (unsupported type, weak or malformed)",
			 LS("file", a->jwks_watch.path), LI("skipped", skipped));
	log_info("JWKS loaded", LS("file", a->jwks_watch.path), LI("keys", a->jwks.n));
	return 0;
}

static void on_reload(void *arg)
{
	struct authz *a = arg;
	log_info("SIGHUP: reloading the policy and the JWKS");
	policy_reload(a);
	jwks_reload(a);
	if (a->jwks_fetch)
		jwks_fetch_start(a, wire_now_ms(), "SIGHUP");
}

static void on_janitor(evutil_socket_t fd, short what, void *arg)
{
	struct authz *a = arg;
	int64_t now = wire_now_ms();
	pgconn_tick(&a->db, now);
	int32_t day = usage_day(now);
	int day_changed = day != a->today;
	if (day_changed) {
		a->today = day;
		usage_gc(&a->usage, day);
		usage_gc(&a->gusage, day);
		a->next_gsync_ms = 0; /* the new day's (and month's) totals */
	}
	if (now >= a->next_watch_ms || day_changed) {
		a->next_watch_ms = now + 1000;
		if (a->intro)
			introspect_tick(a->intro, now);
		if (a->jwks_fetch && now >= a->jwks_next_fetch_ms)
			jwks_fetch_start(a, now,
					 a->jwks_loaded ? "periodic refresh" : "not loaded yet");
		/* Held requests always end: with no fetch under way (it could not start or
		 * ended without a callback) or past the bound, decide with the keys in force. */
		if (a->kid_held && (!fetch_busy(a->jwks_fetch) ||
				    now - a->kid_held->since_ms >= JWKS_HOLD_MAX_MS)) {
			log_warn(
			    "JWKS refetch did not answer in time: deciding the waiting requests "
			    "with the keys in force",
			    LI("requests", a->nkid_held));
			kid_held_resume(a);
		}
		size_t n = limiter_tick(&a->lim, now, day_changed);
		if (n)
			metric_add(a->m_slots_expired, (double)n);
		if (watch_changed(&a->policy_watch))
			policy_reload(a);
		if (watch_changed(&a->jwks_watch))
			jwks_reload(a);
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
	if (a->jwks_fetch && !a->jwks_loaded) {
		snprintf(why, cap, "JWKS not loaded from GW_JWKS_URL yet");
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

static double inflight(void *arg)
{
	return (double)((struct authz *)arg)->lim.nslots;
}

static double kid_waiting(void *arg)
{
	return (double)((struct authz *)arg)->nkid_held;
}

/* JWT settings; HS256 only with its own secret. Returns 0 or -1 (logged). */
static int setup_jwt(struct authz *a)
{
	struct authz_config *c = &a->cfg;
	a->jwks_watch.path = c->jwks_file;
	if (config_secret("GW_JWT_HS256_SECRET", &a->hs256_secret, &a->hs256_len) != 0)
		return -1;
	if (a->hs256_secret && a->hs256_len < 32) {
		log_error("GW_JWT_HS256_SECRET is shorter than 32 bytes: use a longer secret");
		return -1;
	}
	if (c->jwks_file && c->jwks_url) {
		log_error("both GW_JWKS_FILE and GW_JWKS_URL are set: set one");
		return -1;
	}
	a->jwt_enabled = c->jwks_file || c->jwks_url || a->hs256_secret;
	if (!a->jwt_enabled)
		return 0;
	if (!c->jwt_issuer || !c->jwt_audience) {
		log_error("JWT keys are configured but GW_JWT_ISSUER or GW_JWT_AUDIENCE is not: "
			  "set both, so tokens issued for another service are refused");
		return -1;
	}
	a->jwt.issuer = c->jwt_issuer;
	a->jwt.audience = c->jwt_audience;
	a->jwt.leeway_s = c->leeway_s;
	a->jwt.principal_claim = c->jwt_principal_claim;
	a->jwt.groups_claim = c->jwt_groups_claim;
	a->jwt.idp_claim = c->jwt_idp_claim;
	a->jwt.policies_claim = c->jwt_policies_claim;
	a->jwt.hs256_secret = (const unsigned char *)a->hs256_secret;
	a->jwt.hs256_len = a->hs256_len;
	if (c->jwks_file && jwks_reload(a) != 0) {
		log_error("cannot load GW_JWKS_FILE at start: fix the file or unset it");
		return -1;
	}
	if (c->jwks_url) {
		a->jwks_fetch = fetch_new(a->rt.base, c->jwks_url, JWKS_FETCH_TIMEOUT_MS,
					  JWKS_MAX_LEN, on_jwks_fetched, a);
		if (!a->jwks_fetch) {
			log_error("GW_JWKS_URL is not usable: fix or unset it");
			return -1;
		}
		if (c->ca_file && fetch_set_ca_file(a->jwks_fetch, c->ca_file) != 0)
			return -1;
		jwks_fetch_start(a, wire_now_ms(), "start");
	}
	return 0;
}

static int setup_introspection(struct authz *a)
{
	if (!a->cfg.intro_url)
		return 0;
	char *secret = NULL;
	size_t len = 0;
	if (config_secret("GW_INTROSPECTION_CLIENT_SECRET", &secret, &len) != 0)
		return -1;
	if (!a->cfg.intro_client_id || !secret) {
		log_error("GW_INTROSPECTION_URL is set: set GW_INTROSPECTION_CLIENT_ID and "
			  "GW_INTROSPECTION_CLIENT_SECRET_FILE too");
		free(secret);
		return -1;
	}
	struct introspect_config ic = {a->cfg.intro_url, a->cfg.intro_client_id, secret,
				       (int)a->cfg.intro_timeout_ms, (size_t)a->cfg.intro_max};
	a->intro = introspect_new(a->rt.base, &ic, on_introspected);
	OPENSSL_cleanse(secret, len);
	free(secret);
	if (!a->intro)
		return -1;
	if (a->cfg.ca_file && introspect_set_ca_file(a->intro, a->cfg.ca_file) != 0)
		return -1;
	log_info("token introspection enabled", LS("url", a->cfg.intro_url));
	return 0;
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
	    config_int("GW_KAFKA_FETCH_WAIT_MS", 2, 0, 10000, &cfg->fetch_wait_ms) ||
	    config_int("GW_AUTHZ_MAX_PRINCIPALS", 100000, 1, 100000000, &cfg->max_principals) ||
	    config_int("GW_AUTHZ_MAX_INFLIGHT", 100000, 1, 100000000, &cfg->max_slots) ||
	    config_int("GW_JWT_LEEWAY_S", 60, 0, 600, &cfg->leeway_s) ||
	    config_int("GW_INTROSPECTION_TIMEOUT_MS", 5000, 100, 60000, &cfg->intro_timeout_ms) ||
	    config_int("GW_INTROSPECTION_CACHE_MAX", 100000, 1, 10000000, &cfg->intro_max))
		return -1;
	if (config_int("GW_JWKS_REFRESH_S", 300, 30, 86400, &cfg->jwks_refresh_s) ||
	    config_int("GW_AUTHZ_JWKS_MAX_HELD", 1000, 0, 1000000, &cfg->jwks_max_held) ||
	    config_int("GW_JWKS_KID_REFETCH_S", 30, 1, 3600, &cfg->jwks_kid_refetch_s) ||
	    config_int("GW_AUTHZ_QUOTA_SYNC_MS", 1000, 100, 60000, &cfg->quota_sync_ms))
		return -1;
	cfg->jwks_url = config_str("GW_JWKS_URL", NULL);
	cfg->ca_file = config_str("GW_AUTHZ_CA_FILE", NULL);
	cfg->intro_url = config_str("GW_INTROSPECTION_URL", NULL);
	cfg->intro_client_id = config_str("GW_INTROSPECTION_CLIENT_ID", NULL);
	cfg->policy_file = config_str("GW_POLICY_FILE", NULL);
	cfg->jwks_file = config_str("GW_JWKS_FILE", NULL);
	cfg->jwt_issuer = config_str("GW_JWT_ISSUER", NULL);
	cfg->jwt_audience = config_str("GW_JWT_AUDIENCE", NULL);
	cfg->jwt_principal_claim = config_str("GW_JWT_PRINCIPAL_CLAIM", "sub");
	cfg->jwt_groups_claim = config_str("GW_JWT_GROUPS_CLAIM", "groups");
	cfg->jwt_idp_claim = config_str("GW_JWT_IDP_CLAIM", "idp");
	cfg->jwt_policies_claim = config_str("GW_JWT_POLICIES_CLAIM", "policies");
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
	a->m_limited = metric_get(METRIC_COUNTER, "gw_authz_decisions_total", "outcome=\"limited\"",
				  "Authorization decisions by outcome");
	a->m_slots_expired = metric_get(METRIC_COUNTER, "gw_authz_slots_expired_total", NULL,
					"Concurrency slots freed by their deadline (usage lost)");
	a->m_reload_ok = metric_get(METRIC_COUNTER, "gw_authz_reloads_total", "result=\"ok\"",
				    "Policy and JWKS (re)loads");
	a->m_reload_bad = metric_get(METRIC_COUNTER, "gw_authz_reloads_total",
				     "result=\"rejected\"", "Policy and JWKS (re)loads");
	struct metric *sl = metric_gauge_fn("gw_authz_inflight", NULL,
					    "Requests holding a concurrency slot", inflight, a);
	struct metric *kw =
	    metric_gauge_fn("gw_authz_jwks_waiting", NULL,
			    "Requests waiting for a JWKS refetch (unknown key id)", kid_waiting, a);
	if (!a->m_limited || !a->m_slots_expired || !a->m_reload_ok || !a->m_reload_bad || !sl ||
	    !kw)
		return -1;
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
	/* Before the first decision, so a restart cannot admit a group past its quota. */
	if (db_group_quotas_load(conn, &a->lim, wire_now_ms()) != 0) {
		PQfinish(conn);
		goto out;
	}
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
	    usage_init(&a->usage, (size_t)a->cfg.usage_max) != 0 ||
	    usage_init(&a->gusage, (size_t)a->cfg.usage_max) != 0) {
		log_error("out of memory");
		return -1;
	}
	if (limiter_init(&a->lim, (size_t)a->cfg.max_principals, (size_t)a->cfg.max_slots) != 0) {
		log_error("out of memory");
		return -1;
	}
	a->lim.group_usage = &a->gusage;
	a->policy_watch.path = a->cfg.policy_file;
	if (policy_reload(a) != 0 || setup_jwt(a) != 0 || setup_introspection(a) != 0)
		return -1;
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
	a->next_gflush_ms = now + a->cfg.quota_sync_ms;
	a->next_gsync_ms = now + a->cfg.quota_sync_ms; /* loaded by load_keys just now */
	a->rt.on_stop = on_stop;
	a->rt.on_reload = on_reload;
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
	free_held(a);
	introspect_free(a->intro);
	a->intro = NULL;
	fetch_free(a->jwks_fetch);
	a->jwks_fetch = NULL;
	while (a->reqs) {
		struct req_work *rw = a->reqs;
		a->reqs = rw->next;
		free(rw);
	}
	pgconn_close(&a->db);
	keys_free(&a->keys);
	usage_free(&a->usage);
	usage_free(&a->gusage);
	limiter_free(&a->lim);
	policy_free(a->policy);
	jwks_free(&a->jwks);
	if (a->hs256_secret) {
		OPENSSL_cleanse(a->hs256_secret, a->hs256_len);
		free(a->hs256_secret);
	}
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
