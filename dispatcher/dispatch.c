/* The dispatcher stage: one request from its gw.authorized message, through routing,
 * the endpoint call(s), to its replies, usage and audit event; plus the limits, circuit
 * breakers, retries, cancels and reloads around it. */
#include "dispatch.h"

#include "audit.h"
#include "config.h"
#include "listing.h"
#include "log.h"
#include "relay.h"
#include "route.h"
#include "status.h"
#include "wire.h"

#include <event2/buffer.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JANITOR_MS        50
/* After the drain deadline, how long to wait for the last acknowledgements. */
#define ACK_GRACE_US      (10 * 1000000LL)
/* A retry is not worth starting with less than this left before the deadline. */
#define RETRY_MIN_LEFT_MS 50

/* What a gw.authorized request must carry; gw-stream, gw-hint, gw-client, gw-groups,
 * gw-cluster, gw-framework and gw-models are optional, and gw-model is required only
 * of routes that call an endpoint (the listings have none). A cancel needs only gw-id. */
static const unsigned required_fields =
    GW_F_ID | GW_F_DEADLINE | GW_F_REPLY | GW_F_ROUTE | GW_F_PRINCIPAL;

static int route_is_listing(const char *route)
{
	return strcmp(route, "/v1/models") == 0 ||
	       strcmp(route, "/resource_server/list-endpoints") == 0 ||
	       strcmp(route, "/resource_server/jobs") == 0;
}

enum dreq_state { DREQ_NEW, DREQ_WAITING, DREQ_CALLING, DREQ_BACKOFF, DREQ_DONE };

/* One request from its gw.authorized message until every output is acknowledged.
 * Owned by the dispatcher: allocated in on_message, freed in req_release when the
 * work's last hold goes. msg is owned until the last attempt has started (a retry
 * sends the body again). b holds a reference while the request is bound to it. */
struct dreq {
	struct kafka_work work;
	struct dispatcher *d;
	TAILQ_ENTRY(dreq) active_link; /* d->active while NEW/WAITING/CALLING/BACKOFF */
	TAILQ_ENTRY(dreq) queue_link;  /* b->queue while WAITING */
	enum dreq_state state;
	int on_active;
	int relay_on;
	rd_kafka_message_t *msg;
	int64_t offset;
	int32_t partition;
	struct backend *b;
	int probe;                        /* holds a half-open probe slot of b */
	char endpoint[REGISTRY_NAME_MAX]; /* of the last attempt, for audit and usage */
	char tried[DISPATCH_MAX_ATTEMPTS][REGISTRY_NAME_MAX];
	int attempts;
	int64_t retry_at_us;
	int retry_after_s; /* the endpoint's Retry-After of the current answer, -1 none */
	int last_status;   /* the gateway error to give if no retry is possible */
	char last_code[48];
	char last_msg[256];
	char id[GW_ID_HEX + 1];
	int64_t deadline_ms;
	int32_t reply;
	int stream;
	char route[64];
	char model[256];
	char principal[256];
	char hint[256];
	char client[64];
	char groups[1024];
	char cluster[64];
	char framework[64];
	int64_t t0_us, t_call_us, t_first_us;
	const char *outcome;
	const char *reason;
	struct upstream_call call;
	struct relay relay;
};

static void req_finish(struct dreq *r);
static void req_route(struct dreq *r);

static struct dreq *req_of_call(struct upstream_call *c)
{
	return (struct dreq *)(void *)((char *)c - offsetof(struct dreq, call));
}

static struct dreq *req_of_work(struct kafka_work *w)
{
	return (struct dreq *)(void *)((char *)w - offsetof(struct dreq, work));
}

static const char *ep_name(const struct dreq *r)
{
	return r->endpoint[0] ? r->endpoint : NULL;
}

/* ---- settings ---- */

static int cfg_int(const char *name, long long def, long long min, long long max, int *out)
{
	long long v;
	if (config_int(name, def, min, max, &v) != 0)
		return -1;
	*out = (int)v;
	return 0;
}

int dispatch_config_load(struct dispatch_config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	const char *file = config_str("GW_ENDPOINTS_FILE", NULL);
	if (!file) {
		log_error("GW_ENDPOINTS_FILE is not set: give the path of the endpoints JSON file "
			  "({\"endpoints\":[{\"name\",\"url\",\"models\",...}]})");
		return -1;
	}
	if (strlen(file) >= sizeof cfg->endpoints_file) {
		log_error("GW_ENDPOINTS_FILE path is too long");
		return -1;
	}
	snprintf(cfg->endpoints_file, sizeof cfg->endpoints_file, "%s", file);
	const char *group = config_str("GW_DISPATCHER_GROUP", "dispatcher");
	if (strlen(group) >= sizeof cfg->group) {
		log_error("GW_DISPATCHER_GROUP is too long");
		return -1;
	}
	snprintf(cfg->group, sizeof cfg->group, "%s", group);
	const char *ca = config_str("GW_DISPATCHER_CA_FILE", "");
	if (strlen(ca) >= sizeof cfg->ca_file) {
		log_error("GW_DISPATCHER_CA_FILE path is too long");
		return -1;
	}
	snprintf(cfg->ca_file, sizeof cfg->ca_file, "%s", ca);
	struct breaker_config *cb = &cfg->cb;
	if (cfg_int("GW_KAFKA_FETCH_WAIT_MS", 2, 0, 10000, &cfg->fetch_wait_ms) ||
	    cfg_int("GW_DISPATCHER_MAX_INFLIGHT", 1024, 1, 1000000, &cfg->max_inflight) ||
	    cfg_int("GW_DISPATCHER_DEDUP", 65536, 1, 1 << 26, &cfg->dedup) ||
	    cfg_int("GW_DISPATCHER_CANCEL_MEMORY", 16384, 1, 1 << 24, &cfg->cancel_memory) ||
	    cfg_int("GW_DISPATCHER_MAX_RESPONSE", 16 << 20, 1024, 1 << 30, &cfg->max_response) ||
	    cfg_int("GW_DISPATCHER_ENDPOINT_QUEUE", 256, 0, 1000000, &cfg->queue_max) ||
	    cfg_int("GW_DISPATCHER_DRAIN_MS", 10000, 0, 3600000, &cfg->drain_ms) ||
	    cfg_int("GW_DISPATCHER_SSE_LINE_MAX", 65536, 256, 16 << 20, &cfg->sse_line_max) ||
	    cfg_int("GW_MAX_ATTEMPTS", 3, 1, DISPATCH_MAX_ATTEMPTS, &cfg->max_attempts) ||
	    cfg_int("GW_DISPATCHER_RETRY_BASE_MS", 100, 1, 60000, &cfg->retry_base_ms) ||
	    cfg_int("GW_DISPATCHER_RETRY_MAX_MS", 2000, 1, 600000, &cfg->retry_max_ms) ||
	    cfg_int("GW_DISPATCHER_HEALTH_INTERVAL_MS", 5000, 100, 3600000,
		    &cfg->health_interval_ms) ||
	    cfg_int("GW_DISPATCHER_HEALTH_TIMEOUT_MS", 2000, 50, 600000, &cfg->health_timeout_ms) ||
	    cfg_int("GW_DISPATCHER_SATURATED_STATUS", 429, 429, 503, &cfg->saturated_status) ||
	    cfg_int("GW_DISPATCHER_CB_FAILURES", 5, 1, 100000, &cb->consecutive) ||
	    cfg_int("GW_DISPATCHER_CB_RATE_PCT", 50, 1, 100, &cb->rate_pct) ||
	    cfg_int("GW_DISPATCHER_CB_RATE_MIN", 20, 1, 1000000, &cb->rate_min) ||
	    cfg_int("GW_DISPATCHER_CB_WINDOW_MS", 30000, 100, 3600000, &cb->window_ms) ||
	    cfg_int("GW_DISPATCHER_CB_COOLDOWN_MS", 10000, 10, 3600000, &cb->cooldown_ms) ||
	    cfg_int("GW_DISPATCHER_CB_HALFOPEN_PROBES", 1, 1, 1000, &cb->halfopen_max) ||
	    cfg_int("GW_DISPATCHER_POOL_IDLE", 64, 0, 100000, &cfg->pool.idle_max) ||
	    cfg_int("GW_DISPATCHER_POOL_IDLE_MS", 4000, 10, 3600000, &cfg->pool.idle_ms) ||
	    cfg_int("GW_DISPATCHER_COALESCE_MS", 2, 0, 1000, &cfg->coalesce_ms) ||
	    cfg_int("GW_DISPATCHER_COALESCE_BYTES", 16384, 256, RELAY_CHUNK_MAX,
		    &cfg->coalesce_bytes))
		return -1;
	if (cfg->saturated_status != 429 && cfg->saturated_status != 503) {
		log_error("GW_DISPATCHER_SATURATED_STATUS must be 429 or 503");
		return -1;
	}
	return 0;
}

/* ---- circuit changes ---- */

static void circuit_meter(struct backend *b)
{
	char labels[128];
	snprintf(labels, sizeof labels, "endpoint=\"%s\"", b->ep.name);
	metric_set(metric_get(METRIC_GAUGE, "gw_circuit_state", labels,
			      "Circuit breaker state per endpoint: 0 closed, 1 open, 2 half-open"),
		   (double)b->br.state);
}

/* Logs, meters and audits a breaker change that just happened. */
static void circuit_changed(struct dispatcher *d, struct backend *b, enum breaker_state from)
{
	const char *to = breaker_state_name(b->br.state);
	int ok = 0, bad = 0;
	breaker_window(&b->br, &d->cfg.cb, wire_now_us(), &ok, &bad);
	if (b->br.state == BREAKER_OPEN)
		log_warn("circuit opened", LS("endpoint", b->ep.name),
			 LS("from", breaker_state_name(from)), LS("reason", b->br.why),
			 LI("consecutive_failures", b->br.consecutive));
	else
		log_info("circuit changed", LS("endpoint", b->ep.name),
			 LS("from", breaker_state_name(from)), LS("to", to),
			 LS("reason", b->br.why));
	circuit_meter(b);
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "endpoint.circuit";
	ev.outcome = to;
	ev.reason = b->br.why;
	ev.endpoint = b->ep.name;
	json_t *extra = json_pack("{s:s, s:s, s:i, s:s}", "from", breaker_state_name(from), "to",
				  to, "consecutive_failures", b->br.consecutive, "url", b->ep.url);
	ev.extra = extra;
	if (audit_emit(&d->producer, &ev, NULL, NULL) != 0)
		log_error("circuit change not audited", LS("endpoint", b->ep.name));
	json_decref(extra);
}

/* A call that ends on a backend a reload removed says nothing about the registry any more:
 * its breaker is no longer consulted (and its name may now belong to a new object). */
static void outcome_ok(struct dispatcher *d, struct backend *b, int probe)
{
	if (b->retired)
		return;
	enum breaker_state from = b->br.state;
	b->last_ok_us = wire_now_us();
	if (breaker_success(&b->br, &d->cfg.cb, b->last_ok_us, probe))
		circuit_changed(d, b, from);
}

static void outcome_failed(struct dispatcher *d, struct backend *b, int probe)
{
	if (b->retired)
		return;
	enum breaker_state from = b->br.state;
	b->failures++;
	b->last_fail_us = wire_now_us();
	if (breaker_failure(&b->br, &d->cfg.cb, b->last_fail_us, probe))
		circuit_changed(d, b, from);
}

static void on_health(struct backend *b, int ok, const char *why, void *arg)
{
	struct dispatcher *d = arg;
	if (!ok) {
		log_warn("health check failed", LS("endpoint", b->ep.name), LS("reason", why));
		outcome_failed(d, b, 0);
		return;
	}
	/* A passing check is not counted as traffic and does not close a half-open
	 * circuit: an endpoint can list its models and still fail every completion, so
	 * only a request let through as a probe decides. */
	log_debug("health check passed", LS("endpoint", b->ep.name), LS("detail", why));
}

/* ---- consumer flow control ---- */

static void flow_check(struct dispatcher *d)
{
	if (d->stopping)
		return;
	int over = d->live >= d->cfg.max_inflight;
	if (over != d->paused) {
		kafka_consumer_pause(&d->consumer, over);
		d->paused = over;
		log_debug(over ? "consumer paused" : "consumer resumed", LI("live", d->live),
			  LI("calls", d->calls));
	}
}

/* ---- request lifecycle ---- */

static void req_release(struct kafka_work *w)
{
	struct dreq *r = req_of_work(w);
	struct dispatcher *d = r->d;
	if (r->relay_on)
		relay_free(&r->relay);
	if (r->msg)
		rd_kafka_message_destroy(r->msg);
	free(r);
	d->live--;
	flow_check(d);
}

/* Gives back the half-open probe slot of a call that ended without a verdict. */
static void probe_drop(struct dreq *r)
{
	if (r->probe && r->b && r->b->br.probes > 0)
		r->b->br.probes--;
	r->probe = 0;
}

/* Leaves the endpoint: out of its queue, its reference dropped; a freed slot lets the
 * pump start a waiting request. */
static void req_unbind(struct dreq *r)
{
	struct dispatcher *d = r->d;
	struct backend *b = r->b;
	if (!b)
		return;
	if (r->state == DREQ_WAITING) {
		TAILQ_REMOVE(&b->queue, r, queue_link);
		b->nqueue--;
		d->nwaiting--;
		r->state = DREQ_NEW;
	}
	probe_drop(r);
	r->b = NULL;
	backend_unref(b);
	event_active(d->pump, 0, 0);
}

static void active_remove(struct dreq *r)
{
	struct dispatcher *d = r->d;
	req_unbind(r);
	if (r->on_active) {
		TAILQ_REMOVE(&d->active, r, active_link);
		r->on_active = 0;
		d->nactive--;
	}
	r->state = DREQ_DONE;
}

static void count_request(struct dreq *r, int status)
{
	char labels[160];
	const char *ep = ep_name(r);
	snprintf(labels, sizeof labels, "endpoint=\"%s\",status=\"%d\"", ep ? ep : "", status);
	metric_add(metric_get(METRIC_COUNTER, "gw_dispatcher_requests_total", labels,
			      "Requests finished by the dispatcher, by endpoint and status given"),
		   1);
}

/* Emits the audit event and the usage message (every outcome but duplicate: authz
 * releases the request's concurrency slot on it), then drops the request's own hold:
 * the offset is stored once the broker has acknowledged everything produced. */
static void req_finish(struct dreq *r)
{
	struct dispatcher *d = r->d;
	active_remove(r);
	if (r->relay_on)
		relay_close(&r->relay); /* nothing more goes out, held bytes included */

	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "dispatch.result";
	ev.request_id = r->id;
	ev.outcome = r->outcome ? r->outcome : "error";
	ev.reason = r->reason;
	ev.principal = r->principal[0] ? r->principal : NULL;
	ev.groups = r->groups[0] ? r->groups : NULL;
	ev.client = r->client[0] ? r->client : NULL;
	ev.route = r->route[0] ? r->route : NULL;
	ev.model = r->model[0] ? r->model : NULL;
	ev.endpoint = ep_name(r);
	int64_t now = wire_now_us();
	ev.latency_us = now - r->t0_us;
	if (r->t_first_us)
		ev.ttft_us = r->t_first_us - r->t0_us;
	if (r->relay_on) {
		ev.status = r->relay.status;
		relay_fill_audit(&r->relay, &ev);
	}
	json_t *extra = NULL, *tried = json_array();
	for (int i = 0; tried && i < r->attempts; i++)
		json_array_append_new(tried, json_string(r->tried[i]));
	extra = json_pack("{s:i, s:o*}", "attempts", r->attempts, "endpoints_tried", tried);
	if (r->cluster[0] && extra)
		json_object_set_new(extra, "cluster", json_string(r->cluster));
	ev.extra = extra;
	if (strcmp(ev.outcome, "duplicate") != 0) {
		struct usage_report u = {
		    .id = r->id,
		    .hint = r->hint,
		    .principal = r->principal,
		    .model = r->model,
		    .endpoint = ep_name(r),
		    .outcome = ev.outcome,
		    .status = ev.status > 0 ? ev.status : 0,
		    .ttft_us = r->t_first_us ? r->t_first_us - r->t0_us : -1,
		    .latency_us = ev.latency_us,
		};
		if (r->relay_on && r->relay.have_usage && r->relay.status >= 200 &&
		    r->relay.status < 300)
			u.tokens = r->relay.usage;
		relay_usage_emit(&d->producer, &r->work, &u);
	}
	if (r->relay_on && relay_started(&r->relay)) {
		count_request(r, r->relay.status);
	} else {
		char labels[64];
		snprintf(labels, sizeof labels, "outcome=\"%s\"", ev.outcome);
		metric_add(
		    metric_get(METRIC_COUNTER, "gw_dispatcher_skipped_total", labels,
			       "Requests not answered: expired, cancelled, duplicate or reply not "
			       "produced"),
		    1);
	}
	if (r->t_first_us)
		metric_observe(d->m_ttft, (double)(r->t_first_us - r->t0_us) / 1e6);
	if (audit_emit(&d->producer, &ev, &r->work, NULL) != 0)
		r->work.failed = 1; /* redone after a restart rather than unaudited */
	json_decref(extra);
	log_debug("request done", LS("request_id", r->id), LS("outcome", ev.outcome),
		  LI("status", ev.status), LI("latency_us", ev.latency_us),
		  LI("attempts", r->attempts));
	kafka_work_release(&r->work);
}

/* A gateway-made error answer. */
static void req_fail(struct dreq *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void req_fail(struct dreq *r, int status, const char *code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	relay_error(&r->relay, status, msg, code);
	r->outcome = "error";
	r->reason = code;
	req_finish(r);
}

/* ---- retries ---- */

static int retryable_status(int s)
{
	return s == 429 || s == 502 || s == 503 || s == 504;
}

static uint32_t rand32(void)
{
	uint32_t v = 0;
	if (RAND_bytes((unsigned char *)&v, sizeof v) != 1)
		v = (uint32_t)wire_now_us();
	return v;
}

static void retry_arm(struct dispatcher *d)
{
	int64_t first = 0;
	struct dreq *r;
	TAILQ_FOREACH(r, &d->active, active_link)
	if (r->state == DREQ_BACKOFF && (!first || r->retry_at_us < first))
		first = r->retry_at_us;
	if (!first) {
		event_del(d->retry);
		return;
	}
	int64_t wait = first - wire_now_us();
	if (wait < 0)
		wait = 0;
	struct timeval tv = {(time_t)(wait / 1000000), (suseconds_t)(wait % 1000000)};
	event_add(d->retry, &tv);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dispatcher *d = arg;
	int64_t now = wire_now_us();
	struct dreq *r, *next;
	for (r = TAILQ_FIRST(&d->active); r; r = next) {
		next = TAILQ_NEXT(r, active_link);
		if (r->state != DREQ_BACKOFF || r->retry_at_us > now)
			continue;
		r->state = DREQ_NEW;
		req_route(r);
	}
	retry_arm(d);
}

/* Remembers the error to give when no further attempt is possible. */
static void note_error(struct dreq *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void note_error(struct dreq *r, int status, const char *code, const char *fmt, ...)
{
	va_list ap;
	r->last_status = status;
	snprintf(r->last_code, sizeof r->last_code, "%s", code);
	va_start(ap, fmt);
	vsnprintf(r->last_msg, sizeof r->last_msg, fmt, ap);
	va_end(ap);
}

/* After a failed attempt that relayed nothing: schedules another one, at once on an
 * endpoint not tried yet, else after an exponential backoff with jitter (longer when
 * the endpoint sent Retry-After), within GW_MAX_ATTEMPTS and the deadline. 1 when
 * scheduled; 0 when the caller must answer with the last error. */
static int req_retry(struct dreq *r)
{
	struct dispatcher *d = r->d;
	if (r->attempts >= d->cfg.max_attempts || d->stopping ||
	    (r->relay_on && relay_started(&r->relay)))
		return 0;
	int64_t now = wire_now_us();
	struct backend *b = r->b;
	if (b && r->retry_after_s > 0)
		b->busy_until_us = now + (int64_t)r->retry_after_s * 1000000;
	int64_t backoff = (int64_t)d->cfg.retry_base_ms
			  << (r->attempts - 1 < 20 ? r->attempts - 1 : 20);
	if (backoff > d->cfg.retry_max_ms)
		backoff = d->cfg.retry_max_ms;
	/* Equal jitter: half fixed, half random, so copies do not retry in step. */
	int64_t wait_ms = backoff / 2 + (int64_t)(rand32() % (uint32_t)(backoff / 2 + 1));
	/* Another endpoint not tried yet takes the retry at once: the backoff protects an
	 * endpoint from its own retries, a fresh one needs no protection. Back to an
	 * endpoint already tried, the backoff (or its Retry-After, if longer) applies. */
	const char *names[DISPATCH_MAX_ATTEMPTS];
	for (int i = 0; i < r->attempts; i++)
		names[i] = r->tried[i];
	struct route_query q = {r->model,    r->cluster,       r->framework, names,
				r->attempts, d->cfg.queue_max, now,          d->rr};
	enum route_none why;
	int next = route_pick(d->bs, d->nb, &q, &d->cfg.cb, &why);
	int fresh = next >= 0 && d->bs[next] != b;
	for (int i = 0; fresh && i < r->attempts; i++)
		fresh = strcmp(d->bs[next]->ep.name, r->tried[i]) != 0;
	if (fresh)
		wait_ms = 0;
	else if (r->retry_after_s > 0 && wait_ms < (int64_t)r->retry_after_s * 1000)
		wait_ms = (int64_t)r->retry_after_s * 1000;
	if (now / 1000 + wait_ms + RETRY_MIN_LEFT_MS >= r->deadline_ms)
		return 0;
	req_unbind(r);
	r->state = DREQ_BACKOFF;
	r->retry_at_us = now + wait_ms * 1000;
	metric_add(d->m_retries, 1);
	log_info("retrying", LS("request_id", r->id), LS("endpoint", r->endpoint),
		 LI("attempt", r->attempts + 1), LI("backoff_ms", wait_ms),
		 LS("after", r->last_code));
	retry_arm(d);
	return 1;
}

/* The last attempt failed and no other is possible. A collected endpoint answer (a
 * retryable status) passes through; otherwise the gateway's error. */
static void req_give_up(struct dreq *r)
{
	if (r->relay.status > 0 && !relay_started(&r->relay) && !r->relay.streaming) {
		if (relay_finish(&r->relay) == 0) {
			r->outcome =
			    r->relay.status < 500 && r->relay.status != 429 ? "ok" : "error";
			r->reason = "upstream_status";
			req_finish(r);
			return;
		}
	}
	req_fail(r, r->last_status ? r->last_status : 502,
		 r->last_code[0] ? r->last_code : "upstream_error", "%s", r->last_msg);
}

/* ---- the endpoint call ---- */

static void call_head(struct upstream_call *c, int status, const char *ctype, int retry_after)
{
	struct dreq *r = req_of_call(c);
	r->retry_after_s = retry_after;
	relay_head(&r->relay, status, ctype);
}

static void call_ended(struct dreq *r)
{
	struct dispatcher *d = r->d;
	d->calls--;
	metric_observe(d->m_upstream, (double)(wire_now_us() - r->t_call_us) / 1e6);
}

static void call_body(struct upstream_call *c, struct evbuffer *buf)
{
	struct dreq *r = req_of_call(c);
	if (!r->t_first_us)
		r->t_first_us = wire_now_us();
	int rc = relay_body(&r->relay, buf);
	if (rc == 0 && !r->relay.failed)
		return;
	upstream_cancel(c);
	call_ended(r);
	if (rc == -1) {
		log_warn("endpoint answer too large", LS("request_id", r->id),
			 LS("endpoint", ep_name(r)), LI("max", r->d->cfg.max_response));
		probe_drop(r);
		req_fail(r, 502, "upstream_response_too_large",
			 "endpoint '%s' answered with more than GW_DISPATCHER_MAX_RESPONSE bytes",
			 ep_name(r));
	} else if (rc == -2) {
		log_warn("endpoint sent a broken event stream", LS("request_id", r->id),
			 LS("endpoint", ep_name(r)));
		outcome_failed(r->d, r->b, r->probe);
		r->probe = 0;
		req_fail(r, 502, "upstream_invalid_response",
			 "endpoint '%s' sent an event stream that is not valid JSON events",
			 ep_name(r));
	} else {
		probe_drop(r);
		req_fail(r, 502, "upstream_error", "the gateway could not relay the answer of '%s'",
			 ep_name(r));
	}
}

/* The attempt failed before anything was relayed: retry or answer. */
static void attempt_failed(struct dreq *r)
{
	if (!req_retry(r))
		req_give_up(r);
}

static void call_done(struct upstream_call *c, enum upstream_result res)
{
	struct dreq *r = req_of_call(c);
	struct dispatcher *d = r->d;
	struct backend *b = r->b;
	call_ended(r);
	const char *name = ep_name(r);
	int probe = r->probe;
	r->probe = 0;
	switch (res) {
	case UPSTREAM_OK: {
		int st = r->relay.status;
		if (retryable_status(st) && !relay_started(&r->relay)) {
			/* Overload (429) says nothing about the endpoint's health. */
			if (st == 429) {
				if (probe && b->br.probes > 0)
					b->br.probes--;
			} else {
				outcome_failed(d, b, probe);
			}
			log_warn("endpoint answered with a retryable status",
				 LS("request_id", r->id), LS("endpoint", name), LI("status", st),
				 LI("retry_after_s", r->retry_after_s));
			note_error(r, st, "upstream_status", "endpoint '%s' answered %d", name, st);
			attempt_failed(r);
			return;
		}
		if (st >= 500)
			outcome_failed(d, b, probe);
		else
			outcome_ok(d, b, probe);
		if (relay_finish(&r->relay) != 0) {
			log_warn("endpoint sent invalid JSON", LS("request_id", r->id),
				 LS("endpoint", name), LI("status", st));
			req_fail(r, 502, "upstream_invalid_response",
				 "endpoint '%s' sent an answer that is not valid JSON", name);
			return;
		}
		r->outcome = r->relay.status < 500 && !r->relay.failed ? "ok" : "error";
		if (r->relay.status >= 500)
			r->reason = "upstream_status";
		req_finish(r);
		return;
	}
	case UPSTREAM_TIMEOUT:
		outcome_failed(d, b, probe);
		log_warn("endpoint timed out", LS("request_id", r->id), LS("endpoint", name));
		if (!r->relay.status) {
			note_error(r, 504, "upstream_timeout",
				   "endpoint '%s' did not answer in time", name);
			attempt_failed(r);
			return;
		}
		req_fail(r, 504, "upstream_timeout", "endpoint '%s' stopped answering", name);
		return;
	case UPSTREAM_UNREACHABLE:
		outcome_failed(d, b, probe);
		log_warn("endpoint unreachable", LS("request_id", r->id), LS("endpoint", name));
		note_error(r, 502, "upstream_unavailable", "endpoint '%s' unreachable", name);
		attempt_failed(r);
		return;
	case UPSTREAM_CLOSED:
		outcome_failed(d, b, probe);
		log_warn("endpoint closed the connection mid-answer", LS("request_id", r->id),
			 LS("endpoint", name));
		req_fail(r, 502, "upstream_error",
			 "endpoint '%s' closed the connection before the answer was complete",
			 name);
		return;
	case UPSTREAM_PROTOCOL:
		outcome_failed(d, b, probe);
		log_warn("endpoint sent invalid HTTP", LS("request_id", r->id),
			 LS("endpoint", name));
		req_fail(r, 502, "upstream_invalid_response",
			 "endpoint '%s' sent an invalid HTTP answer", name);
		return;
	}
}

static const struct upstream_ops call_ops = {call_head, call_body, call_done};

static void req_expired(struct dreq *r)
{
	r->outcome = "expired";
	r->reason = "deadline passed";
	req_finish(r);
}

static void req_call(struct dreq *r)
{
	struct dispatcher *d = r->d;
	struct backend *b = r->b;
	const struct endpoint *ep = &b->ep;
	int64_t now_us = wire_now_us();
	int64_t remaining = r->deadline_ms - now_us / 1000;
	if (remaining <= 0) {
		req_expired(r);
		return;
	}
	enum breaker_state st = b->br.state;
	if (!breaker_allow(&b->br, &d->cfg.cb, now_us)) {
		/* The circuit opened while the request waited: route it again. */
		req_unbind(r);
		req_route(r);
		return;
	}
	if (st != b->br.state)
		circuit_changed(d, b, st);
	r->probe = b->br.state == BREAKER_HALF_OPEN;
	int phase = ep->first_byte_timeout_ms > ep->chunk_timeout_ms ? ep->first_byte_timeout_ms
								     : ep->chunk_timeout_ms;
	if (ep->connect_timeout_ms > phase)
		phase = ep->connect_timeout_ms;
	int timeout = phase < remaining ? phase : (int)remaining;
	if (r->attempts > 0)
		relay_reset(&r->relay);
	r->retry_after_s = -1;
	snprintf(r->tried[r->attempts], sizeof r->tried[0], "%s", ep->name);
	snprintf(r->endpoint, sizeof r->endpoint, "%s", ep->name);
	r->attempts++;
	r->state = DREQ_CALLING;
	r->t_call_us = now_us;
	b->requests++;
	d->calls++;
	int rc = upstream_start(&r->call, &b->pool, &call_ops, r->route, r->id, r->msg->payload,
				r->msg->len, timeout);
	if (rc != 0) {
		call_ended(r);
		outcome_failed(d, b, r->probe);
		r->probe = 0;
		log_warn("endpoint unreachable", LS("request_id", r->id), LS("endpoint", ep->name));
		note_error(r, 502, "upstream_unavailable", "endpoint '%s' unreachable", ep->name);
		attempt_failed(r);
	}
}

/* Starts waiting requests where endpoints have free slots. Deferred to its own loop
 * turn so no call starts from inside another call's evhttp callback. */
static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dispatcher *d = arg;
	for (int i = 0; i < d->nb; i++) {
		struct backend *b = d->bs[i];
		while (b->nqueue > 0 && b->pool.inflight < b->ep.max_concurrent) {
			struct dreq *r = TAILQ_FIRST(&b->queue);
			TAILQ_REMOVE(&b->queue, r, queue_link);
			b->nqueue--;
			d->nwaiting--;
			r->state = DREQ_NEW;
			req_call(r);
		}
	}
}

/* Routes r (first attempt or retry) and starts or queues its call. */
static void req_route(struct dreq *r)
{
	struct dispatcher *d = r->d;
	int64_t now = wire_now_us();
	if (r->deadline_ms <= now / 1000) {
		if (r->attempts > 0)
			req_give_up(r);
		else
			req_expired(r);
		return;
	}
	const char *names[DISPATCH_MAX_ATTEMPTS];
	for (int i = 0; i < r->attempts; i++)
		names[i] = r->tried[i];
	struct route_query q = {r->model,    r->cluster,       r->framework, names,
				r->attempts, d->cfg.queue_max, now,          d->rr++};
	enum route_none why;
	int i = route_pick(d->bs, d->nb, &q, &d->cfg.cb, &why);
	if (i < 0 && r->attempts > 0) {
		req_give_up(r);
		return;
	}
	const char *in = r->cluster[0] ? " in cluster '" : "";
	const char *cl = r->cluster[0] ? r->cluster : "";
	const char *q2 = r->cluster[0] ? "'" : "";
	switch (why) {
	case ROUTE_FOUND: break;
	case ROUTE_NOT_LISTED:
		req_fail(r, 404, "model_not_found",
			 "model '%s' is not served by any endpoint%s%s%s", r->model, in, cl, q2);
		return;
	case ROUTE_ALL_OPEN:
		r->relay.retry_after_s = route_retry_after(d->bs, d->nb, &q, &d->cfg.cb);
		log_warn("no endpoint can serve the model: every circuit is open",
			 LS("request_id", r->id), LS("model", r->model));
		req_fail(r, 503, "no_healthy_endpoint",
			 "no endpoint can serve model '%s' right now: every endpoint serving it is "
			 "failing (circuit open); retry after %d s",
			 r->model, r->relay.retry_after_s);
		return;
	case ROUTE_SATURATED:
		r->relay.retry_after_s = 1;
		log_warn("every endpoint for the model is saturated", LS("request_id", r->id),
			 LS("model", r->model));
		req_fail(r, d->cfg.saturated_status, "endpoints_saturated",
			 "every endpoint serving model '%s' is at capacity; retry after 1 s",
			 r->model);
		return;
	}
	struct backend *b = d->bs[i];
	backend_ref(b);
	r->b = b;
	if (b->nqueue == 0 && b->pool.inflight < b->ep.max_concurrent) {
		req_call(r);
		return;
	}
	TAILQ_INSERT_TAIL(&b->queue, r, queue_link);
	b->nqueue++;
	d->nwaiting++;
	r->state = DREQ_WAITING;
}

static int route_ok(const char *route)
{
	if (route[0] != '/' || strstr(route, ".."))
		return 0;
	for (const char *p = route; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '/' || *p == '_' || *p == '-' || *p == '.'))
			return 0;
	return 1;
}

/* The listing routes: answered from the registry, no endpoint call. 1 when r was one. */
static int req_listing(struct dreq *r, const char *allowed)
{
	struct dispatcher *d = r->d;
	char *body;
	if (strcmp(r->route, "/v1/models") == 0)
		body =
		    listing_models(d->bs, d->nb, allowed, r->cluster, r->framework, d->started_s);
	else if (strcmp(r->route, "/resource_server/list-endpoints") == 0)
		body = listing_endpoints(d->bs, d->nb, allowed);
	else if (strcmp(r->route, "/resource_server/jobs") == 0)
		body = listing_jobs(d->bs, d->nb, allowed, r->cluster);
	else
		return 0;
	if (!body) {
		log_error("out of memory building a listing", LS("request_id", r->id));
		req_fail(r, 500, "internal_error", "the gateway ran out of memory");
		return 1;
	}
	relay_head(&r->relay, 200, "application/json");
	if (evbuffer_add(r->relay.body, body, strlen(body)) != 0) {
		free(body);
		req_fail(r, 500, "internal_error", "the gateway ran out of memory");
		return 1;
	}
	free(body);
	relay_finish(&r->relay);
	r->outcome = "ok";
	req_finish(r);
	return 1;
}

/* Everything up to routing: checks, de-duplication, cancels, listings. */
static void req_admit(struct dreq *r, const char *allowed)
{
	struct dispatcher *d = r->d;
	if (r->deadline_ms <= wire_now_ms()) {
		req_expired(r);
		return;
	}
	if (dedup_check_add(&d->dedup, r->id) == 1) {
		log_info("duplicate request not sent again", LS("request_id", r->id),
			 LS("topic", GW_TOPIC_AUTHORIZED), LI("partition", r->partition),
			 LI("offset", r->offset));
		r->outcome = "duplicate";
		r->reason = "request id seen before (redelivery)";
		req_finish(r);
		return;
	}
	if (dedup_check_add(&d->cancelled, r->id) == 1) {
		log_info("request cancelled before it arrived: not sent", LS("request_id", r->id));
		r->outcome = "cancelled";
		r->reason = "cancel arrived before the request";
		metric_add(d->m_cancelled, 1);
		req_finish(r);
		return;
	}
	if (relay_init(&r->relay, &d->producer, &r->work, r->id, r->reply, r->stream,
		       (size_t)d->cfg.max_response, (size_t)d->cfg.sse_line_max,
		       &d->flusher) != 0) {
		r->work.failed = 1; /* cannot answer now: redo after a restart */
		r->outcome = "error";
		r->reason = "out of memory";
		req_finish(r);
		return;
	}
	r->relay_on = 1;
	TAILQ_INSERT_TAIL(&d->active, r, active_link);
	r->on_active = 1;
	d->nactive++;
	if (!route_ok(r->route)) {
		req_fail(r, 400, "invalid_route", "route '%s' is not a valid endpoint path",
			 r->route);
		return;
	}
	if (req_listing(r, allowed))
		return;
	req_route(r);
}

/* Ends a request still waiting, backing off or calling, with no reply. */
static void req_cancel(struct dreq *r)
{
	struct dispatcher *d = r->d;
	if (r->state == DREQ_CALLING) {
		upstream_cancel(&r->call); /* closes the connection: the endpoint stops */
		call_ended(r);
	}
	log_info("request cancelled", LS("request_id", r->id), LS("endpoint", ep_name(r)),
		 LS("state", r->state == DREQ_CALLING ? "calling" : "waiting"));
	metric_add(d->m_cancelled, 1);
	r->outcome = "cancelled";
	r->reason = "client disconnected";
	req_finish(r);
}

/* A cancel travels in a dreq of its own that ends here; w is its work. */
static void on_cancel(struct dispatcher *d, const struct gw_meta *m, struct kafka_work *w)
{
	struct dreq *r;
	TAILQ_FOREACH(r, &d->active, active_link)
	if (strcmp(r->id, m->id) == 0)
		break;
	/* Remembered in any case: the request may still be on its way (another partition
	 * order, a retry), and must not be sent once it arrives. */
	dedup_check_add(&d->cancelled, m->id);
	if (r)
		req_cancel(r);
	else
		log_debug("cancel for no request in flight", LS("request_id", m->id));
	kafka_work_release(w);
}

static void on_message(void *arg, rd_kafka_message_t *msg)
{
	struct dispatcher *d = arg;
	struct dreq *r = calloc(1, sizeof *r);
	if (!r) {
		/* Without memory the message cannot be held: hand it back by rewinding so it
		 * is fetched again rather than skipped. */
		log_error("cannot take the message now: rewinding",
			  LS("topic", GW_TOPIC_AUTHORIZED), LI("partition", msg->partition),
			  LI("offset", msg->offset));
		rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
		rd_kafka_topic_partition_list_add(l, GW_TOPIC_AUTHORIZED, msg->partition)->offset =
		    msg->offset;
		rd_kafka_error_t *e = rd_kafka_seek_partitions(d->consumer.rk, l, 0);
		if (e)
			rd_kafka_error_destroy(e);
		rd_kafka_topic_partition_list_destroy(l);
		rd_kafka_message_destroy(msg);
		return;
	}
	if (kafka_work_begin(&d->consumer, &r->work, msg, req_release) != 0) {
		free(r);
		rd_kafka_message_destroy(msg);
		return;
	}
	r->d = d;
	r->msg = msg;
	r->offset = msg->offset;
	r->partition = msg->partition;
	r->t0_us = wire_now_us();
	d->live++;
	flow_check(d);

	struct gw_meta *m = malloc(sizeof *m);
	const char *reason = NULL;
	if (!m) {
		log_error("out of memory decoding a message", LS("topic", GW_TOPIC_AUTHORIZED),
			  LI("partition", msg->partition), LI("offset", msg->offset));
		r->work.failed = 1;
		kafka_work_release(&r->work);
		return;
	}
	/* A cancel carries only gw-id (and gw-deadline); decoded with that requirement. */
	if (wire_decode(msg, GW_F_ID, m, &reason) == 0 && (m->present & GW_F_CANCEL) && m->cancel) {
		on_cancel(d, m, &r->work);
		free(m);
		return;
	}
	int decoded = wire_decode(msg, required_fields, m, &reason) == 0;
	if (decoded && !(m->present & GW_F_MODEL) && !route_is_listing(m->route)) {
		decoded = 0;
		reason = "missing required header"; /* gw-model, as the decoder words it */
	}
	if (!decoded) {
		if (wire_deadletter(&d->producer, msg, reason, &r->work) != 0)
			r->work.failed = 1;
		free(m);
		kafka_work_release(&r->work);
		return;
	}
	memcpy(r->id, m->id, sizeof r->id);
	r->deadline_ms = m->deadline_ms;
	r->reply = m->reply_partition;
	r->stream = (m->present & GW_F_STREAM) ? m->stream : 0;
	snprintf(r->route, sizeof r->route, "%s", m->route);
	snprintf(r->model, sizeof r->model, "%s", m->model);
	snprintf(r->principal, sizeof r->principal, "%s", m->principal);
	snprintf(r->hint, sizeof r->hint, "%s", (m->present & GW_F_HINT) ? m->hint : m->principal);
	if (m->present & GW_F_CLIENT)
		snprintf(r->client, sizeof r->client, "%s", m->client);
	if (m->present & GW_F_GROUPS)
		snprintf(r->groups, sizeof r->groups, "%s", m->groups);
	if (m->present & GW_F_CLUSTER)
		snprintf(r->cluster, sizeof r->cluster, "%s", m->cluster);
	if (m->present & GW_F_FRAMEWORK)
		snprintf(r->framework, sizeof r->framework, "%s", m->framework);
	/* Without gw-models (an older authz) the listings are not filtered. */
	req_admit(r, (m->present & GW_F_MODELS) ? m->models : "*");
	free(m);
}

/* ---- janitor: deadlines, phase timeouts, health, circuits, drain ---- */

/* Ends a request still waiting or calling, with a gateway error. */
static void req_abort(struct dreq *r, int status, const char *code, const char *msg)
{
	if (r->state == DREQ_CALLING) {
		upstream_cancel(&r->call);
		call_ended(r);
	}
	probe_drop(r);
	req_fail(r, status, code, "%s", msg);
}

/* A call ran past one of its endpoint's timeouts. */
static void call_timed_out(struct dreq *r, const char *phase)
{
	struct dispatcher *d = r->d;
	upstream_cancel(&r->call);
	call_ended(r);
	outcome_failed(d, r->b, r->probe);
	r->probe = 0;
	log_warn("endpoint timed out", LS("request_id", r->id), LS("endpoint", ep_name(r)),
		 LS("phase", phase));
	char msg[200];
	snprintf(msg, sizeof msg, "endpoint '%s' timed out (%s timeout)", ep_name(r), phase);
	if (!r->relay.status && !relay_started(&r->relay)) {
		note_error(r, 504, "upstream_timeout", "%s", msg);
		attempt_failed(r);
		return;
	}
	req_fail(r, 504, "upstream_timeout", "%s", msg);
}

/* Frees retired backends no request holds any more (from the janitor, so never inside a
 * callback of their own connections) and closes their idle connections meanwhile. */
static void retired_sweep(struct dispatcher *d, int64_t now_us)
{
	int k = 0;
	for (int i = 0; i < d->nretired; i++) {
		struct backend *b = d->retired[i];
		if (b->refs == 1) {
			log_info("removed endpoint released: its last call ended",
				 LS("endpoint", b->ep.name), LS("url", b->ep.url));
			backend_unref(b);
			continue;
		}
		upstream_pool_tick(&b->pool, now_us);
		d->retired[k++] = b;
	}
	d->nretired = k;
}

/* Moves the live list's reference of b to the retired list, or drops it when nothing
 * else holds b. -1 (nothing changed) when the list cannot grow. */
static int retire(struct dispatcher *d, struct backend *b)
{
	if (b->refs == 1) {
		backend_retire(b);
		backend_unref(b);
		return 0;
	}
	if (d->nretired == d->retired_cap) {
		int cap = d->retired_cap ? 2 * d->retired_cap : 16;
		struct backend **nr = realloc(d->retired, (size_t)cap * sizeof *nr);
		if (!nr)
			return -1;
		d->retired = nr;
		d->retired_cap = cap;
	}
	backend_retire(b);
	d->retired[d->nretired++] = b;
	log_info("endpoint leaves the registry; its calls in flight finish first",
		 LS("endpoint", b->ep.name), LI("inflight", b->pool.inflight));
	return 0;
}

static void janitor_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dispatcher *d = arg;
	int64_t now_ms = wire_now_ms(), now_us = wire_now_us();
	int draining_over = d->stopping && now_us >= d->drain_deadline_us;
	struct dreq *r = TAILQ_FIRST(&d->active), *next;
	for (; r; r = next) {
		next = TAILQ_NEXT(r, active_link);
		if (draining_over) {
			log_warn("drain time over: cancelling", LS("request_id", r->id),
				 LS("endpoint", ep_name(r)));
			req_abort(r, 503, "shutting_down",
				  "the dispatcher is shutting down; retry the request");
			continue;
		}
		if (now_ms >= r->deadline_ms) {
			if (r->state == DREQ_WAITING || r->state == DREQ_BACKOFF) {
				if (r->attempts > 0)
					req_give_up(r);
				else
					req_expired(r);
			} else if (r->state == DREQ_CALLING) {
				log_warn("request deadline passed during the call",
					 LS("request_id", r->id), LS("endpoint", ep_name(r)));
				char msg[160];
				snprintf(msg, sizeof msg,
					 "endpoint '%s' did not finish before the request deadline",
					 ep_name(r));
				req_abort(r, 504, "upstream_timeout", msg);
			}
			continue;
		}
		const char *phase;
		if (r->state == DREQ_CALLING && (phase = upstream_expired(&r->call, now_us)))
			call_timed_out(r, phase);
	}
	if (d->stopping && d->nactive == 0 &&
	    (d->live == 0 || now_us >= d->drain_deadline_us + ACK_GRACE_US)) {
		if (d->live > 0)
			log_warn("leaving with outputs not acknowledged", LI("requests", d->live));
		runtime_exit(d->rt);
		return;
	}
	for (int i = 0; i < d->nb; i++) {
		struct backend *b = d->bs[i];
		enum breaker_state st = b->br.state;
		if (breaker_tick(&b->br, &d->cfg.cb, now_us))
			circuit_changed(d, b, st);
		if (!d->stopping)
			backend_health_tick(b, now_us, d->cfg.health_interval_ms,
					    d->cfg.health_timeout_ms);
		upstream_pool_tick(&b->pool, now_us);
	}
	retired_sweep(d, now_us);
}

/* ---- registry ---- */

/* Builds backends for every endpoint of reg (emptied). Endpoints whose name and URL
 * are unchanged keep their circuit and health state. */
static int backends_build(struct dispatcher *d, struct registry *reg, struct backend ***out)
{
	struct backend **bs = calloc((size_t)reg->n, sizeof *bs);
	if (!bs) {
		log_error("out of memory for the endpoints");
		return -1;
	}
	int64_t now = wire_now_us();
	for (int i = 0; i < reg->n; i++) {
		bs[i] = backend_new(d->base, d->dns, d->ssl_ctx, &d->cfg.pool, &reg->eps[i], now);
		if (!bs[i]) {
			for (int j = 0; j < i; j++)
				backend_unref(bs[j]);
			free(bs);
			return -1;
		}
		bs[i]->health_fn = on_health;
		bs[i]->health_arg = d;
		for (int j = 0; j < d->nb; j++) {
			struct backend *o = d->bs[j];
			if (strcmp(o->ep.name, bs[i]->ep.name) || strcmp(o->ep.url, bs[i]->ep.url))
				continue;
			bs[i]->br = o->br;
			bs[i]->health_ok = o->health_ok;
			bs[i]->next_check_us = o->next_check_us;
			bs[i]->requests = o->requests;
			bs[i]->failures = o->failures;
			/* Same URL: its kept-alive connections stay good (should the build
			 * fail after this, they are closed with bs[i]). */
			upstream_pool_adopt(&bs[i]->pool, &o->pool);
		}
		circuit_meter(bs[i]);
	}
	*out = bs;
	return 0;
}

static int registry_needs_tls(const struct registry *reg)
{
	for (int i = 0; i < reg->n; i++)
		if (reg->eps[i].https)
			return 1;
	return 0;
}

int dispatch_reload(struct dispatcher *d)
{
	struct registry reg;
	char err[1024];
	if (registry_load(&reg, d->cfg.endpoints_file, err, sizeof err) != 0) {
		log_error("reload refused: the endpoints file is invalid; keeping the current "
			  "endpoints",
			  LS("error", err));
		return -1;
	}
	if (registry_needs_tls(&reg) && !d->ssl_ctx &&
	    !(d->ssl_ctx = upstream_ssl_ctx_new(d->cfg.ca_file[0] ? d->cfg.ca_file : NULL))) {
		log_error("reload refused: https endpoints need a TLS context");
		registry_free(&reg);
		return -1;
	}
	struct backend **bs;
	int n = reg.n;
	/* Room on the retired list for every old backend first: past this point the reload
	 * cannot fail half-way. */
	if (d->nretired + d->nb > d->retired_cap) {
		int cap = d->nretired + d->nb + 16;
		struct backend **nr = realloc(d->retired, (size_t)cap * sizeof *nr);
		if (!nr) {
			log_error("reload refused: out of memory");
			registry_free(&reg);
			return -1;
		}
		d->retired = nr;
		d->retired_cap = cap;
	}
	if (backends_build(d, &reg, &bs) != 0) {
		registry_free(&reg);
		return -1;
	}
	registry_free(&reg);
	struct backend **old = d->bs;
	int nold = d->nb;
	d->bs = bs;
	d->nb = n;
	/* Calls in flight finish on the old objects (their references keep them); waiting
	 * requests are routed again over the new registry. */
	for (int i = 0; i < nold; i++) {
		struct backend *b = old[i];
		backend_retire(b);
		struct dreq *r;
		while ((r = TAILQ_FIRST(&b->queue))) {
			req_unbind(r);
			req_route(r);
		}
		retire(d, b); /* cannot fail: room was made above */
	}
	free(old);
	log_info("endpoints reloaded", LI("endpoints", n), LS("file", d->cfg.endpoints_file));
	return 0;
}

/* ---- runtime hooks ---- */

static void on_reload(void *arg)
{
	dispatch_reload(arg);
}

static void on_stop(void *arg)
{
	struct dispatcher *d = arg;
	d->stopping = 1;
	if (d->consumer.rk)
		kafka_consumer_pause(&d->consumer, 1);
	d->paused = 1;
	d->drain_deadline_us = wire_now_us() + (int64_t)d->cfg.drain_ms * 1000;
	log_info("draining", LI("active", d->nactive), LI("waiting", d->nwaiting),
		 LI("drain_ms", d->cfg.drain_ms));
	janitor_cb(-1, 0, d);
}

static int ready(void *arg, char *why, size_t cap)
{
	struct dispatcher *d = arg;
	if (!d->loaded) {
		snprintf(why, cap, "endpoints file not loaded");
		return 0;
	}
	if (!d->subscribed) {
		snprintf(why, cap, "consumer not set up");
		return 0;
	}
	if (d->producer.fatal) {
		snprintf(why, cap, "Kafka producer failed fatally: restart required");
		return 0;
	}
	if (d->stopping) {
		snprintf(why, cap, "shutting down");
		return 0;
	}
	return 1;
}

static double gauge_calls(void *arg)
{
	return ((struct dispatcher *)arg)->calls;
}
static double gauge_waiting(void *arg)
{
	return ((struct dispatcher *)arg)->nwaiting;
}
static double gauge_paused(void *arg)
{
	return ((struct dispatcher *)arg)->paused;
}

static double gauge_stream_messages(void *arg)
{
	return (double)((struct dispatcher *)arg)->flusher.messages;
}
static double gauge_stream_arrivals(void *arg)
{
	return (double)((struct dispatcher *)arg)->flusher.arrivals;
}

static void admin_send(struct evhttp_request *req, char *body)
{
	struct evbuffer *out = evhttp_request_get_output_buffer(req);
	if (!body || evbuffer_add(out, body, strlen(body)) != 0) {
		free(body);
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	free(body);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	evhttp_send_reply(req, 200, "OK", NULL);
}

static void admin_endpoints(struct evhttp_request *req, void *arg)
{
	struct dispatcher *d = arg;
	admin_send(req, status_endpoints_json(d->bs, d->nb, &d->cfg.cb, wire_now_us()));
}

static void admin_circuits(struct evhttp_request *req, void *arg)
{
	struct dispatcher *d = arg;
	admin_send(req, status_circuits_json(d->bs, d->nb, &d->cfg.cb, wire_now_us()));
}

int dispatch_init(struct dispatcher *d, struct runtime *rt, const struct dispatch_config *cfg)
{
	char err[1024];
	memset(d, 0, sizeof *d);
	d->rt = rt;
	d->base = rt->base;
	d->cfg = *cfg;
	d->started_s = wire_now_ms() / 1000;
	TAILQ_INIT(&d->active);
	rt->on_stop = on_stop;
	rt->on_reload = on_reload;
	rt->ready = ready;
	rt->arg = d;

	struct registry reg;
	if (registry_load(&reg, cfg->endpoints_file, err, sizeof err) != 0) {
		log_error("invalid endpoints file", LS("error", err));
		return -1;
	}
	if (registry_needs_tls(&reg) &&
	    !(d->ssl_ctx = upstream_ssl_ctx_new(cfg->ca_file[0] ? cfg->ca_file : NULL))) {
		registry_free(&reg);
		return -1;
	}
	d->dns = evdns_base_new(d->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
	if (!d->dns)
		log_warn("no DNS resolver configured: endpoint host names are resolved blocking");
	int n = reg.n;
	if (backends_build(d, &reg, &d->bs) != 0) {
		registry_free(&reg);
		return -1;
	}
	registry_free(&reg);
	d->nb = n;
	for (int i = 0; i < d->nb; i++)
		log_info("endpoint", LS("name", d->bs[i]->ep.name), LS("url", d->bs[i]->ep.url),
			 LI("models", d->bs[i]->ep.nmodels),
			 LI("max_concurrent", d->bs[i]->ep.max_concurrent));
	d->loaded = 1;
	if (dedup_init(&d->dedup, (uint32_t)cfg->dedup) != 0 ||
	    dedup_init(&d->cancelled, (uint32_t)cfg->cancel_memory) != 0) {
		log_error("cannot allocate the de-duplication tables",
			  LI("GW_DISPATCHER_DEDUP", cfg->dedup),
			  LI("GW_DISPATCHER_CANCEL_MEMORY", cfg->cancel_memory));
		return -1;
	}
	d->m_upstream = metric_get(METRIC_HISTOGRAM, "gw_dispatcher_upstream_seconds", NULL,
				   "Duration of endpoint calls");
	d->m_ttft = metric_get(METRIC_HISTOGRAM, "gw_dispatcher_ttft_seconds", NULL,
			       "Time from taking a request to the endpoint's first answer byte");
	d->m_retries = metric_get(METRIC_COUNTER, "gw_dispatcher_retries_total", NULL,
				  "Attempts started again after a retryable failure");
	d->m_cancelled = metric_get(METRIC_COUNTER, "gw_dispatcher_cancelled_total", NULL,
				    "Requests cancelled by their client");
	metric_gauge_fn("gw_dispatcher_inflight", NULL, "Endpoint calls in flight", gauge_calls, d);
	metric_gauge_fn("gw_dispatcher_waiting", NULL, "Requests waiting for an endpoint slot",
			gauge_waiting, d);
	metric_gauge_fn("gw_dispatcher_consumer_paused", NULL,
			"1 while the consumer is paused because too much is in flight",
			gauge_paused, d);
	metric_gauge_fn("gw_dispatcher_stream_messages", NULL,
			"Streamed gw.replies messages produced since start (after coalescing)",
			gauge_stream_messages, d);
	metric_gauge_fn("gw_dispatcher_stream_arrivals", NULL,
			"Pieces of streamed answers read from endpoints since start",
			gauge_stream_arrivals, d);
	if (rt->admin) {
		evhttp_set_cb(rt->admin, "/endpoints", admin_endpoints, d);
		evhttp_set_cb(rt->admin, "/circuit-breakers", admin_circuits, d);
	}

	if (relay_flusher_init(&d->flusher, d->base, cfg->coalesce_ms,
			       (size_t)cfg->coalesce_bytes) != 0)
		return -1;
	d->janitor = event_new(d->base, -1, EV_PERSIST, janitor_cb, d);
	d->pump = event_new(d->base, -1, 0, pump_cb, d);
	d->retry = event_new(d->base, -1, 0, retry_cb, d);
	struct timeval tv = {0, JANITOR_MS * 1000};
	if (!d->janitor || !d->pump || !d->retry || event_add(d->janitor, &tv) != 0) {
		log_error("cannot register timers");
		return -1;
	}

	if (kafka_producer_init(&d->producer, d->base, "dispatcher") != 0)
		return -1;
	d->consumer.on_message = on_message;
	d->consumer.arg = d;
	if (kafka_consumer_init(&d->consumer, d->base, cfg->group, "dispatcher",
				cfg->fetch_wait_ms) != 0)
		return -1;
	const char *topics[] = {GW_TOPIC_AUTHORIZED};
	if (kafka_consumer_subscribe(&d->consumer, topics, 1) != 0)
		return -1;
	d->subscribed = 1;
	log_info("dispatcher started", LS("group", cfg->group), LI("endpoints", d->nb),
		 LI("max_inflight", cfg->max_inflight), LI("max_attempts", cfg->max_attempts));
	return 0;
}

void dispatch_free(struct dispatcher *d)
{
	d->stopping = 1; /* no more pause/resume: the consumer is about to close */
	/* The loop has ended (normally after the drain). Whatever is still active gets an
	 * answer before the producer is flushed. */
	struct dreq *r, *next;
	for (r = TAILQ_FIRST(&d->active); r; r = next) {
		next = TAILQ_NEXT(r, active_link);
		req_abort(r, 503, "shutting_down",
			  "the dispatcher is shutting down; retry the request");
	}
	/* Flushing serves the delivery reports, which store the offsets. */
	if (d->producer.rk)
		kafka_producer_close(&d->producer, 10000);
	if (d->consumer.rk)
		kafka_consumer_close(&d->consumer);
	if (d->live > 0)
		log_warn("requests left without acknowledgement", LI("requests", d->live));
	if (d->janitor)
		event_free(d->janitor);
	if (d->pump)
		event_free(d->pump);
	if (d->retry)
		event_free(d->retry);
	relay_flusher_free(&d->flusher);
	for (int i = 0; i < d->nb; i++)
		backend_unref(d->bs[i]);
	free(d->bs);
	for (int i = 0; i < d->nretired; i++)
		backend_unref(d->retired[i]);
	free(d->retired);
	if (d->dns)
		evdns_base_free(d->dns, 0);
	if (d->ssl_ctx)
		upstream_ssl_ctx_free(d->ssl_ctx);
	dedup_free(&d->dedup);
	dedup_free(&d->cancelled);
	memset(d, 0, sizeof *d);
}
