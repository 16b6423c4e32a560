/* The dispatcher stage: one request from its gw.authorized message, through the
 * endpoint call, to its replies, usage and audit event; plus the limits around it. */
#include "dispatch.h"

#include "audit.h"
#include "config.h"
#include "log.h"
#include "relay.h"
#include "route.h"
#include "wire.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JANITOR_MS   100
/* After the drain deadline, how long to wait for the last acknowledgements. */
#define ACK_GRACE_US (10 * 1000000LL)

/* What a gw.authorized message must carry; gw-stream, gw-hint, gw-client, gw-groups are
 * optional. */
static const unsigned required_fields =
    GW_F_ID | GW_F_DEADLINE | GW_F_REPLY | GW_F_ROUTE | GW_F_MODEL | GW_F_PRINCIPAL;

enum dreq_state { DREQ_NEW, DREQ_WAITING, DREQ_CALLING, DREQ_DONE };

/* Live requests of one gw.authorized partition, oldest first. The oldest bounds how far
 * back the consumer's offset tracker must look, so the dispatcher pauses before that
 * tracker fills (it would pause and rewind on its own, fighting our resume). Owned by
 * the dispatcher's parts array. */
struct part_live {
	int32_t partition;
	struct dreq_list reqs;
	int64_t newest;
};

/* One request from its gw.authorized message until every output is acknowledged.
 * Owned by the dispatcher: allocated in on_message, freed in req_release when the
 * work's last hold goes. msg is owned until the call has copied the body. */
struct dreq {
	struct kafka_work work;
	struct dispatcher *d;
	TAILQ_ENTRY(dreq) active_link; /* d->active while NEW/WAITING/CALLING */
	TAILQ_ENTRY(dreq) queue_link;  /* the endpoint queue while WAITING */
	TAILQ_ENTRY(dreq) part_link;   /* its partition's live list, always */
	struct part_live *part;
	enum dreq_state state;
	int on_active;
	int relay_on;
	rd_kafka_message_t *msg;
	int64_t offset;
	int ep;
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
	int64_t t0_us, t_call_us, t_first_us;
	const char *outcome;
	const char *reason;
	struct upstream_call call;
	struct relay relay;
};

static void req_finish(struct dreq *r);

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
	return r->ep >= 0 ? r->d->reg.eps[r->ep].name : NULL;
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
	if (cfg_int("GW_KAFKA_FETCH_WAIT_MS", 2, 0, 10000, &cfg->fetch_wait_ms) ||
	    cfg_int("GW_DISPATCHER_MAX_INFLIGHT", 1024, 1, 1000000, &cfg->max_inflight) ||
	    cfg_int("GW_DISPATCHER_DEDUP", 65536, 1, 1 << 26, &cfg->dedup) ||
	    cfg_int("GW_DISPATCHER_MAX_RESPONSE", 16 << 20, 1024, 1 << 30, &cfg->max_response) ||
	    cfg_int("GW_DISPATCHER_ENDPOINT_QUEUE", 256, 0, 1000000, &cfg->queue_max) ||
	    cfg_int("GW_DISPATCHER_DRAIN_MS", 10000, 0, 3600000, &cfg->drain_ms) ||
	    cfg_int("GW_DISPATCHER_SSE_LINE_MAX", 65536, 256, 16 << 20, &cfg->sse_line_max))
		return -1;
	return 0;
}

/* ---- consumer flow control ---- */

static void consumer_pause(struct dispatcher *d, int pause)
{
	rd_kafka_topic_partition_list_t *l = NULL;
	rd_kafka_resp_err_t err = rd_kafka_assignment(d->consumer.rk, &l);
	if (err || !l) {
		log_error("cannot read the consumer assignment",
			  LS("error", rd_kafka_err2str(err)));
		return;
	}
	if (l->cnt > 0) {
		err = pause ? rd_kafka_pause_partitions(d->consumer.rk, l)
			    : rd_kafka_resume_partitions(d->consumer.rk, l);
		if (err)
			log_error(
			    pause ? "pausing the consumer failed" : "resuming the consumer failed",
			    LS("topic", GW_TOPIC_AUTHORIZED), LS("error", rd_kafka_err2str(err)));
	}
	rd_kafka_topic_partition_list_destroy(l);
	if (d->paused != pause)
		log_debug(pause ? "consumer paused" : "consumer resumed", LI("live", d->live),
			  LI("calls", d->calls));
	d->paused = pause;
}

/* How many offsets the partition tracker must span for p. */
static int64_t part_span(const struct part_live *p)
{
	struct dreq *oldest = TAILQ_FIRST(&p->reqs);
	return oldest ? p->newest - oldest->offset + 1 : 0;
}

static int over_limits(struct dispatcher *d)
{
	if (d->live >= d->cfg.max_inflight)
		return 1;
	int64_t span_max = d->consumer.max_inflight_per_partition / 2;
	if (span_max < 1)
		span_max = 1;
	for (int i = 0; i < d->nparts; i++)
		if (part_span(d->parts[i]) >= span_max)
			return 1;
	return 0;
}

static void flow_check(struct dispatcher *d)
{
	if (d->stopping)
		return;
	int over = over_limits(d);
	if (over && !d->paused)
		consumer_pause(d, 1);
	else if (!over && d->paused)
		consumer_pause(d, 0);
}

static struct part_live *part_get(struct dispatcher *d, int32_t partition)
{
	for (int i = 0; i < d->nparts; i++)
		if (d->parts[i]->partition == partition)
			return d->parts[i];
	if (d->nparts == d->capparts) {
		int ncap = d->capparts ? d->capparts * 2 : 16;
		struct part_live **np = realloc(d->parts, (size_t)ncap * sizeof *np);
		if (!np)
			return NULL;
		d->parts = np;
		d->capparts = ncap;
	}
	struct part_live *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	d->parts[d->nparts++] = p;
	p->partition = partition;
	TAILQ_INIT(&p->reqs);
	p->newest = -1;
	return p;
}

/* ---- request lifecycle ---- */

static void req_release(struct kafka_work *w)
{
	struct dreq *r = req_of_work(w);
	struct dispatcher *d = r->d;
	if (r->part)
		TAILQ_REMOVE(&r->part->reqs, r, part_link);
	if (r->relay_on)
		relay_free(&r->relay);
	if (r->msg)
		rd_kafka_message_destroy(r->msg);
	free(r);
	d->live--;
	flow_check(d);
}

static void active_remove(struct dreq *r)
{
	struct dispatcher *d = r->d;
	if (r->state == DREQ_WAITING) {
		struct ep_queue *q = &d->queues[r->ep];
		TAILQ_REMOVE(&q->q, r, queue_link);
		q->n--;
		d->nwaiting--;
	}
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

/* Emits the audit event (and usage on success), then drops the request's own hold:
 * the offset is stored once the broker has acknowledged everything produced. */
static void req_finish(struct dreq *r)
{
	struct dispatcher *d = r->d;
	int had_slot = r->state == DREQ_CALLING || r->state == DREQ_WAITING;
	active_remove(r);
	if (had_slot && r->ep >= 0)
		event_active(d->pump, 0, 0);

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
		if (strcmp(ev.outcome, "ok") == 0 && r->relay.have_usage &&
		    r->relay.status >= 200 && r->relay.status < 300)
			relay_usage(&r->relay, r->hint, r->principal, r->model, ep_name(r));
		relay_fill_audit(&r->relay, &ev);
	}
	if (r->relay_on && relay_started(&r->relay)) {
		count_request(r, r->relay.status);
	} else {
		char labels[64];
		snprintf(labels, sizeof labels, "outcome=\"%s\"", ev.outcome);
		metric_add(
		    metric_get(METRIC_COUNTER, "gw_dispatcher_skipped_total", labels,
			       "Requests not answered: expired, duplicate or reply not produced"),
		    1);
	}
	if (r->t_first_us)
		metric_observe(d->m_ttft, (double)(r->t_first_us - r->t0_us) / 1e6);
	if (audit_emit(&d->producer, &ev, &r->work, NULL) != 0)
		r->work.failed = 1; /* redone after a restart rather than unaudited */
	log_debug("request done", LS("request_id", r->id), LS("outcome", ev.outcome),
		  LI("status", ev.status), LI("latency_us", ev.latency_us));
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

/* ---- the endpoint call ---- */

static void call_head(struct upstream_call *c, int status, const char *ctype)
{
	struct dreq *r = req_of_call(c);
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
	if (rc != 0) {
		log_warn("endpoint answer too large", LS("request_id", r->id),
			 LS("endpoint", ep_name(r)), LI("max", r->d->cfg.max_response));
		req_fail(r, 502, "upstream_response_too_large",
			 "endpoint '%s' answered with more than GW_DISPATCHER_MAX_RESPONSE bytes",
			 ep_name(r));
	} else {
		req_fail(r, 502, "upstream_error", "the gateway could not relay the answer of '%s'",
			 ep_name(r));
	}
}

static void call_done(struct upstream_call *c, enum upstream_result res)
{
	struct dreq *r = req_of_call(c);
	call_ended(r);
	const char *name = ep_name(r);
	switch (res) {
	case UPSTREAM_OK:
		relay_finish(&r->relay);
		r->outcome = r->relay.status < 500 && !r->relay.failed ? "ok" : "error";
		if (r->relay.status >= 500)
			r->reason = "upstream_status";
		req_finish(r);
		return;
	case UPSTREAM_TIMEOUT:
		log_warn("endpoint timed out", LS("request_id", r->id), LS("endpoint", name));
		req_fail(r, 504, "upstream_timeout", "endpoint '%s' did not answer in time", name);
		return;
	case UPSTREAM_UNREACHABLE:
		log_warn("endpoint unreachable", LS("request_id", r->id), LS("endpoint", name));
		req_fail(r, 502, "upstream_unavailable", "endpoint '%s' unreachable", name);
		return;
	case UPSTREAM_CLOSED:
		log_warn("endpoint closed the connection mid-answer", LS("request_id", r->id),
			 LS("endpoint", name));
		req_fail(r, 502, "upstream_error",
			 "endpoint '%s' closed the connection before the answer was complete",
			 name);
		return;
	case UPSTREAM_PROTOCOL:
		log_warn("endpoint sent invalid HTTP", LS("request_id", r->id),
			 LS("endpoint", name));
		req_fail(r, 502, "upstream_error", "endpoint '%s' sent an invalid HTTP answer",
			 name);
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
	const struct endpoint *ep = &d->reg.eps[r->ep];
	int64_t remaining = r->deadline_ms - wire_now_ms();
	if (remaining <= 0) {
		req_expired(r);
		return;
	}
	int timeout = ep->timeout_ms < remaining ? ep->timeout_ms : (int)remaining;
	r->state = DREQ_CALLING;
	r->t_call_us = wire_now_us();
	d->calls++;
	int rc = upstream_start(&r->call, &d->pools[r->ep], &call_ops, r->route, r->id,
				r->msg->payload, r->msg->len, timeout);
	/* The body now lives in the call's buffer. */
	rd_kafka_message_destroy(r->msg);
	r->msg = NULL;
	if (rc != 0) {
		call_ended(r);
		log_warn("endpoint unreachable", LS("request_id", r->id), LS("endpoint", ep->name));
		req_fail(r, 502, "upstream_unavailable", "endpoint '%s' unreachable", ep->name);
	}
}

/* Starts waiting requests where endpoints have free slots. Deferred to its own loop
 * turn so no call starts from inside another call's evhttp callback. */
static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dispatcher *d = arg;
	for (int i = 0; i < d->reg.n; i++) {
		struct ep_queue *q = &d->queues[i];
		while (q->n > 0 && d->pools[i].inflight < d->reg.eps[i].max_concurrent) {
			struct dreq *r = TAILQ_FIRST(&q->q);
			TAILQ_REMOVE(&q->q, r, queue_link);
			q->n--;
			d->nwaiting--;
			r->state = DREQ_NEW;
			req_call(r);
		}
	}
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

/* Everything up to the endpoint call: checks, de-duplication, routing, admission. */
static void req_admit(struct dreq *r)
{
	struct dispatcher *d = r->d;
	if (r->deadline_ms <= wire_now_ms()) {
		req_expired(r);
		return;
	}
	if (dedup_check_add(&d->dedup, r->id) == 1) {
		log_info("duplicate request not sent again", LS("request_id", r->id),
			 LS("topic", GW_TOPIC_AUTHORIZED), LI("partition", r->part->partition),
			 LI("offset", r->offset));
		r->outcome = "duplicate";
		r->reason = "request id seen before (redelivery)";
		req_finish(r);
		return;
	}
	if (relay_init(&r->relay, &d->producer, &r->work, r->id, r->reply, r->stream,
		       (size_t)d->cfg.max_response, (size_t)d->cfg.sse_line_max) != 0) {
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
	r->ep = route_pick(&d->reg, r->model);
	if (r->ep < 0) {
		req_fail(r, 404, "model_not_found", "model '%s' is not served by any endpoint",
			 r->model);
		return;
	}
	struct ep_queue *q = &d->queues[r->ep];
	const struct endpoint *ep = &d->reg.eps[r->ep];
	if (q->n == 0 && d->pools[r->ep].inflight < ep->max_concurrent) {
		req_call(r);
		return;
	}
	if (q->n >= d->cfg.queue_max) {
		log_warn("endpoint busy: request refused", LS("request_id", r->id),
			 LS("endpoint", ep->name), LI("waiting", q->n));
		req_fail(r, 503, "endpoint_busy",
			 "endpoint '%s' is at capacity; retry after 1 second", ep->name);
		return;
	}
	TAILQ_INSERT_TAIL(&q->q, r, queue_link);
	q->n++;
	d->nwaiting++;
	r->state = DREQ_WAITING;
}

static void on_message(void *arg, rd_kafka_message_t *msg)
{
	struct dispatcher *d = arg;
	if (d->paused) {
		/* A partition assigned since the pause starts unpaused: pause it too. */
		consumer_pause(d, 1);
	}
	struct dreq *r = calloc(1, sizeof *r);
	struct part_live *part = part_get(d, msg->partition);
	if (!r || !part) {
		/* Without a tracker slot the message cannot be held: hand it back by rewinding
		 * so it is fetched again rather than skipped. */
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
		free(r);
		rd_kafka_message_destroy(msg);
		return;
	}
	if (kafka_work_begin(&d->consumer, &r->work, msg, req_release) != 0) {
		free(r);
		rd_kafka_message_destroy(msg);
		return;
	}
	r->d = d;
	r->ep = -1;
	r->msg = msg;
	r->offset = msg->offset;
	r->t0_us = wire_now_us();
	r->part = part;
	TAILQ_INSERT_TAIL(&part->reqs, r, part_link);
	if (msg->offset > part->newest)
		part->newest = msg->offset;
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
	if (wire_decode(msg, required_fields, m, &reason) != 0) {
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
	free(m);
	req_admit(r);
}

/* ---- janitor: deadlines and drain ---- */

/* Ends a request still waiting or calling, with a gateway error. */
static void req_abort(struct dreq *r, int status, const char *code, const char *msg)
{
	if (r->state == DREQ_CALLING) {
		upstream_cancel(&r->call);
		call_ended(r);
	}
	req_fail(r, status, code, "%s", msg);
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
		if (now_ms < r->deadline_ms)
			continue;
		if (r->state == DREQ_WAITING) {
			req_expired(r);
		} else if (r->state == DREQ_CALLING) {
			/* The call's own timeout covers silence; this covers a slow trickle. */
			log_warn("request deadline passed during the call", LS("request_id", r->id),
				 LS("endpoint", ep_name(r)));
			char msg[160];
			snprintf(msg, sizeof msg,
				 "endpoint '%s' did not finish before the request deadline",
				 ep_name(r));
			req_abort(r, 504, "upstream_timeout", msg);
		}
	}
	if (d->stopping && d->nactive == 0 &&
	    (d->live == 0 || now_us >= d->drain_deadline_us + ACK_GRACE_US)) {
		if (d->live > 0)
			log_warn("leaving with outputs not acknowledged", LI("requests", d->live));
		runtime_exit(d->rt);
	}
}

/* ---- runtime hooks ---- */

static void on_stop(void *arg)
{
	struct dispatcher *d = arg;
	d->stopping = 1;
	if (d->consumer.rk)
		consumer_pause(d, 1);
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

int dispatch_init(struct dispatcher *d, struct runtime *rt, const struct dispatch_config *cfg)
{
	char err[1024];
	memset(d, 0, sizeof *d);
	d->rt = rt;
	d->base = rt->base;
	d->cfg = *cfg;
	TAILQ_INIT(&d->active);
	rt->on_stop = on_stop;
	rt->ready = ready;
	rt->arg = d;

	if (registry_load(&d->reg, cfg->endpoints_file, err, sizeof err) != 0) {
		log_error("invalid endpoints file", LS("error", err));
		return -1;
	}
	d->dns = evdns_base_new(d->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
	if (!d->dns)
		log_warn("no DNS resolver configured: endpoint host names are resolved blocking");
	d->pools = calloc((size_t)d->reg.n, sizeof *d->pools);
	d->queues = calloc((size_t)d->reg.n, sizeof *d->queues);
	if (!d->pools || !d->queues) {
		log_error("out of memory");
		return -1;
	}
	for (int i = 0; i < d->reg.n; i++) {
		TAILQ_INIT(&d->queues[i].q);
		if (upstream_pool_init(&d->pools[i], d->base, d->dns, &d->reg.eps[i]) != 0)
			return -1;
		log_info("endpoint", LS("name", d->reg.eps[i].name), LS("url", d->reg.eps[i].url),
			 LI("models", d->reg.eps[i].nmodels),
			 LI("max_concurrent", d->reg.eps[i].max_concurrent));
	}
	d->loaded = 1;
	if (dedup_init(&d->dedup, (uint32_t)cfg->dedup) != 0) {
		log_error("cannot allocate the de-duplication table",
			  LI("GW_DISPATCHER_DEDUP", cfg->dedup));
		return -1;
	}
	d->m_upstream = metric_get(METRIC_HISTOGRAM, "gw_dispatcher_upstream_seconds", NULL,
				   "Duration of endpoint calls");
	d->m_ttft = metric_get(METRIC_HISTOGRAM, "gw_dispatcher_ttft_seconds", NULL,
			       "Time from taking a request to the endpoint's first answer byte");
	metric_gauge_fn("gw_dispatcher_inflight", NULL, "Endpoint calls in flight", gauge_calls, d);
	metric_gauge_fn("gw_dispatcher_waiting", NULL, "Requests waiting for an endpoint slot",
			gauge_waiting, d);
	metric_gauge_fn("gw_dispatcher_consumer_paused", NULL,
			"1 while the consumer is paused because too much is in flight",
			gauge_paused, d);

	d->janitor = event_new(d->base, -1, EV_PERSIST, janitor_cb, d);
	d->pump = event_new(d->base, -1, 0, pump_cb, d);
	struct timeval tv = {0, JANITOR_MS * 1000};
	if (!d->janitor || !d->pump || event_add(d->janitor, &tv) != 0) {
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
	log_info("dispatcher started", LS("group", cfg->group), LI("endpoints", d->reg.n),
		 LI("max_inflight", cfg->max_inflight));
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
	for (int i = 0; d->pools && i < d->reg.n; i++)
		upstream_pool_free(&d->pools[i]);
	free(d->pools);
	free(d->queues);
	for (int i = 0; i < d->nparts; i++)
		free(d->parts[i]);
	free(d->parts);
	if (d->dns)
		evdns_base_free(d->dns, 0);
	dedup_free(&d->dedup);
	registry_free(&d->reg);
	memset(d, 0, sizeof *d);
}
