/* The HTTP front end: routes, request checks, CORS, sealing the credential, publishing
 * to gw.requests, cancels when clients leave, and the janitor that times requests out. */
#include "ingress.h"
#include "audit.h"
#include "check.h"
#include "hint.h"
#include "config.h"
#include "hex.h"
#include "log.h"
#include "openai.h"
#include "wire.h"

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void front_count(struct ingress *ig, const char *route, int status)
{
	char labels[160];
	snprintf(labels, sizeof labels, "route=\"%s\",code=\"%d\"", route, status);
	metric_add(metric_get(METRIC_COUNTER, "gw_ingress_requests_total", labels,
			      "Requests answered, by route and status"),
		   1);
}

static int origin_allowed(struct ingress *ig, const char *origin)
{
	if (!origin || !*origin || !ig->cfg.cors_origins[0])
		return 0;
	size_t n = strlen(origin);
	const char *s = ig->cfg.cors_origins;
	while (*s) {
		size_t len = strcspn(s, ",");
		const char *e = s;
		size_t el = len;
		while (el && *e == ' ') {
			e++;
			el--;
		}
		while (el && e[el - 1] == ' ')
			el--;
		if (el == n && memcmp(e, origin, n) == 0)
			return 1;
		s += len;
		if (*s == ',')
			s++;
	}
	return 0;
}

void front_headers(struct ingress *ig, struct evhttp_request *req, const char *id)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "X-Request-Id", id);
	evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(h, "Cache-Control", "no-store");
	if (ig->tls) {
		char v[64];
		snprintf(v, sizeof v, "max-age=%lld", ig->cfg.hsts_max_age);
		evhttp_add_header(h, "Strict-Transport-Security", v);
	}
	const char *origin = evhttp_find_header(evhttp_request_get_input_headers(req), "Origin");
	if (origin_allowed(ig, origin)) {
		evhttp_add_header(h, "Access-Control-Allow-Origin", origin);
		evhttp_add_header(h, "Access-Control-Expose-Headers", "X-Request-Id, Retry-After");
		evhttp_add_header(h, "Vary", "Origin");
	}
}

/* Answers an error no pending request exists for (rejected before it was accepted). */
static void reject(struct ingress *ig, struct evhttp_request *req, const char *id,
		   const char *route, int status, const char *message, const char *code,
		   int retry_after_s)
{
	char *body = openai_error_json(message, openai_error_type(status), code, id);
	struct evbuffer *b = evbuffer_new();
	front_headers(ig, req, id);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	if (retry_after_s > 0) {
		char ra[16];
		snprintf(ra, sizeof ra, "%d", retry_after_s);
		evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", ra);
	}
	if (b && body)
		evbuffer_add(b, body, strlen(body));
	evhttp_send_reply(req, status, NULL, b);
	if (b)
		evbuffer_free(b);
	free(body);
	front_count(ig, route, status);

	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "request.rejected";
	ev.request_id = id;
	ev.outcome = "rejected";
	ev.status = status;
	ev.reason = message;
	char client[64] = "";
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	if (conn) {
		char *addr;
		ev_uint16_t port;
		evhttp_connection_get_peer(conn, &addr, &port);
		snprintf(client, sizeof client, "%s", addr ? addr : "");
		ev.client = client;
	}
	ev.route = route;
	audit_emit(&ig->producer, &ev, NULL, NULL);
}

static void send_cancel(struct ingress *ig, struct pending *p)
{
	struct gw_meta *m = calloc(1, sizeof *m);
	rd_kafka_headers_t *h = rd_kafka_headers_new(4);
	if (!m || !h) {
		free(m);
		if (h)
			rd_kafka_headers_destroy(h);
		log_error("out of memory: cancel not sent", LS("request_id", p->id));
		return;
	}
	memcpy(m->id, p->id, sizeof m->id);
	m->deadline_ms = p->deadline_ms;
	m->cancel = 1;
	int rc = wire_encode(m, GW_F_ID | GW_F_DEADLINE | GW_F_CANCEL, h);
	free(m);
	if (rc != 0) {
		rd_kafka_headers_destroy(h);
		log_error("cannot encode a cancel", LS("request_id", p->id));
		return;
	}
	/* Keyed by the request id: the same partition as the request on gw.authorized. */
	if (kafka_produce(&ig->producer, GW_TOPIC_AUTHORIZED, RD_KAFKA_PARTITION_UA, p->id,
			  GW_ID_HEX, NULL, 0, h, NULL, NULL) == 0)
		metric_add(ig->m_cancels, 1);
}

void front_client_gone(struct ingress *ig, struct pending *p, const char *why)
{
	if (p->answered)
		return;
	log_info("client went away before its answer", LS("request_id", p->id),
		 LS("route", p->route), LI("streaming", p->started), LS("why", why));
	p->req = NULL; /* evhttp frees it with the connection */
	if (p->published)
		send_cancel(ig, p);
	front_completed(ig, p, 499, "client_closed");
}

/* evhttp is freeing the connection (write error, timeout) with p unanswered. */
static void on_client_close(struct evhttp_connection *conn, void *arg)
{
	struct pending *p = arg;
	struct evhttp_request *req = p->req;
	front_client_gone(p->ig, p, "connection closed");
	/* A request evhttp detached from its failed connection is ours to free. */
	if (req && !evhttp_request_get_connection(req))
		evhttp_request_free(req);
}

void front_completed(struct ingress *ig, struct pending *p, int status, const char *outcome)
{
	if (p->answered)
		return;
	int64_t now = wire_now_us();
	p->status = status;
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "request.completed";
	ev.request_id = p->id;
	ev.outcome = outcome;
	ev.status = status;
	ev.client = p->client;
	ev.route = p->route;
	ev.model = p->model;
	ev.latency_us = now - p->start_us;
	audit_emit(&ig->producer, &ev, NULL, NULL);
	metric_observe(ig->m_latency, (double)(now - p->start_us) / 1e6);
	front_count(ig, p->route, status);
	if (p->started)
		metric_add(ig->m_streams, -1);
	if (p->conn)
		evhttp_connection_set_closecb(p->conn, NULL, NULL);
	conn_detach(p);
	pending_finish(&ig->pending, p);
}

void front_fail(struct ingress *ig, struct pending *p, int status, const char *message,
		const char *code, int retry_after_s)
{
	if (p->answered)
		return;
	struct evhttp_request *req = p->req;
	if (req && p->started) {
		/* The status line is gone: the error travels inside the stream. */
		char *err = openai_error_json(message, openai_error_type(status), code, p->id);
		struct evbuffer *b = evbuffer_new();
		if (b && err) {
			evbuffer_add_printf(b, "data: %s\n\ndata: [DONE]\n\n", err);
			evhttp_send_reply_chunk(req, b);
		}
		if (b)
			evbuffer_free(b);
		free(err);
		evhttp_send_reply_end(req);
	} else if (req) {
		char *body = openai_error_json(message, openai_error_type(status), code, p->id);
		struct evbuffer *b = evbuffer_new();
		struct evkeyvalq *h = evhttp_request_get_output_headers(req);
		front_headers(ig, req, p->id);
		evhttp_add_header(h, "Content-Type", "application/json");
		if (retry_after_s > 0) {
			char ra[16];
			snprintf(ra, sizeof ra, "%d", retry_after_s);
			evhttp_add_header(h, "Retry-After", ra);
		}
		if (b && body)
			evbuffer_add(b, body, strlen(body));
		evhttp_send_reply(req, status, NULL, b);
		if (b)
			evbuffer_free(b);
		free(body);
	}
	p->req = NULL;
	front_completed(ig, p, status, status == 504 ? "expired" : "error");
}

static void on_audit_done(struct kafka_done *d, rd_kafka_resp_err_t err)
{
	struct pending *p = (struct pending *)((char *)d - offsetof(struct pending, audit_done));
	struct ingress *ig = p->ig;
	if (err) {
		p->audit_failed = 1;
		if (!p->answered)
			front_fail(ig, p, 503,
				   "the audit log is unavailable; the request was not served",
				   "audit_unavailable", 5);
	} else {
		p->audit_acked = 1;
		if (!p->answered)
			relay_release_held(ig, p);
	}
	pending_unref(p);
}

/* CORS preflight: answered for allowed origins, with nothing CORS for the others. */
static void preflight(struct ingress *ig, struct evhttp_request *req, const char *id,
		      const struct route_match *rm)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	char allow[32];
	snprintf(allow, sizeof allow, "%s, OPTIONS", rm->allow);
	front_headers(ig, req, id);
	evhttp_add_header(out, "Allow", allow);
	if (origin_allowed(ig, evhttp_find_header(in, "Origin"))) {
		const char *want = evhttp_find_header(in, "Access-Control-Request-Headers");
		int ok = want && strlen(want) < 1024;
		for (const char *c = want; ok && *c; c++)
			if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
			      (*c >= '0' && *c <= '9') || *c == '-' || *c == '_' || *c == ',' ||
			      *c == ' '))
				ok = 0;
		evhttp_add_header(out, "Access-Control-Allow-Methods", allow);
		evhttp_add_header(out, "Access-Control-Allow-Headers",
				  ok ? want : "Authorization, Content-Type, X-Request-Id");
		evhttp_add_header(out, "Access-Control-Max-Age", "600");
	}
	evhttp_send_reply(req, 204, "No Content", NULL);
	front_count(ig, rm->label, 204);
}

static void front_request(struct evhttp_request *req, void *arg)
{
	struct ingress *ig = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	enum evhttp_cmd_type method = evhttp_request_get_command(req);
	char id[GW_ID_HEX + 1];
	const char *given = evhttp_find_header(in, "X-Request-Id");
	if (given && wire_id_valid(given))
		memcpy(id, given, sizeof id);
	else if (wire_id_new(id) != 0) {
		evhttp_send_error(req, 500, NULL);
		return;
	}

	struct route_match rm;
	if (check_route(path, &rm) != 0) {
		reject(ig, req, id, "other", 404, "unknown route", "not_found", 0);
		return;
	}
	int want_get = rm.kind != ROUTE_OPENAI;
	if (method == EVHTTP_REQ_OPTIONS) {
		preflight(ig, req, id, &rm);
		return;
	}
	if (method != (want_get ? EVHTTP_REQ_GET : EVHTTP_REQ_POST)) {
		char msg[64];
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", rm.allow);
		snprintf(msg, sizeof msg, "method not allowed; use %s", rm.allow);
		reject(ig, req, id, rm.label, 405, msg, "method_not_allowed", 0);
		return;
	}
	if (ig->rt.stopping) {
		reject(ig, req, id, rm.label, 503, "the gateway is shutting down", "shutting_down",
		       1);
		return;
	}
	if ((long long)ig->pending.count >= ig->cfg.max_inflight) {
		reject(ig, req, id, rm.label, 503, "too many requests in flight", "overloaded", 1);
		return;
	}
	if (!probe_up(&ig->probe) || ig->producer.fatal) {
		reject(ig, req, id, rm.label, 503, "the message broker is unreachable",
		       "broker_unavailable", 2);
		return;
	}
	if (!want_get && !check_content_type(evhttp_find_header(in, "Content-Type"))) {
		reject(ig, req, id, rm.label, 415, "Content-Type must be application/json",
		       "unsupported_media_type", 0);
		return;
	}
	const char *auth = evhttp_find_header(in, "Authorization");
	if (!auth || strncasecmp(auth, "Bearer ", 7) != 0 || !auth[7]) {
		reject(ig, req, id, rm.label, 401,
		       "missing credential: send Authorization: Bearer <API key or token>",
		       "missing_credential", 0);
		return;
	}
	const char *cred = auth + 7;
	size_t credlen = strlen(cred);
	if (credlen + SEAL_OVERHEAD > GW_CRED_MAX) {
		reject(ig, req, id, rm.label, 401, "credential too long", "invalid_credential", 0);
		return;
	}

	struct evbuffer *body = evhttp_request_get_input_buffer(req);
	size_t blen = want_get ? 0 : evbuffer_get_length(body);
	if ((long long)blen > ig->cfg.max_body) {
		reject(ig, req, id, rm.label, 413, "request body is too large", "body_too_large",
		       0);
		return;
	}
	const unsigned char *bytes = blen ? evbuffer_pullup(body, -1) : (const unsigned char *)"";
	struct body_result br;
	memset(&br, 0, sizeof br);
	if (!want_get) {
		struct body_limits lim = {(int)ig->cfg.max_json_depth};
		if (check_body(bytes, blen, &lim, &br) != 0) {
			reject(ig, req, id, rm.label, br.status, br.message, br.code, 0);
			return;
		}
	}

	struct pending *p = pending_find(&ig->pending, id);
	if (p) {
		reject(ig, req, id, rm.label, 409, "a request with this X-Request-Id is in flight",
		       "duplicate_request_id", 0);
		return;
	}
	p = pending_new(&ig->pending, ig, id);
	if (!p) {
		reject(ig, req, id, rm.label, 503, "out of memory", "overloaded", 1);
		return;
	}
	p->req = req;
	p->conn = evhttp_request_get_connection(req);
	p->start_us = wire_now_us();
	p->deadline_ms = p->start_us / 1000 + ig->cfg.request_timeout_s * 1000;
	p->stream = br.stream;
	p->audit_done.fn = on_audit_done;
	snprintf(p->route, sizeof p->route, "%s", rm.label);
	snprintf(p->model, sizeof p->model, "%s", br.model);
	if (p->conn) {
		char *addr = NULL;
		ev_uint16_t port = 0;
		evhttp_connection_get_peer(p->conn, &addr, &port);
		snprintf(p->client, sizeof p->client, "%s", addr ? addr : "");
		evhttp_connection_set_closecb(p->conn, on_client_close, p);
		struct conn *c = conn_of(ig, req);
		if (c)
			conn_attach(c, p, p->conn);
	}

	/* request.received first: the answer waits for its acknowledgement. */
	unsigned char md[32];
	unsigned int mdlen = 0;
	char body_sha[65];
	EVP_Digest(bytes, blen, md, &mdlen, EVP_sha256(), NULL);
	hex_encode(md, 32, body_sha);
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "request.received";
	ev.request_id = id;
	ev.outcome = "accepted";
	ev.client = p->client;
	ev.route = p->route;
	ev.model = p->model[0] ? p->model : NULL;
	ev.body_sha256 = body_sha;
	ev.body_size = (long long)blen;
	p->refs++;
	if (audit_emit(&ig->producer, &ev, NULL, &p->audit_done) != 0) {
		p->refs--;
		front_fail(ig, p, 503, "the audit log is unavailable", "audit_unavailable", 2);
		return;
	}

	struct gw_meta *m = calloc(1, sizeof *m);
	if (!m) {
		front_fail(ig, p, 503, "out of memory", "overloaded", 1);
		return;
	}
	memcpy(m->id, id, sizeof m->id);
	m->deadline_ms = p->deadline_ms;
	m->reply_partition = (int32_t)ig->cfg.reply_partition;
	snprintf(m->route, sizeof m->route, "%s", rm.upstream);
	snprintf(m->model, sizeof m->model, "%s", p->model);
	m->stream = p->stream;
	snprintf(m->client, sizeof m->client, "%s", p->client);
	snprintf(m->cluster, sizeof m->cluster, "%s", rm.cluster);
	snprintf(m->framework, sizeof m->framework, "%s", rm.framework);
	char hint[HINT_MAX];
	hint_derive(cred, credlen, hint);
	int sealed =
	    seal_encrypt(ig->seal_key, cred, credlen, id, m->cred, sizeof m->cred, &m->cred_len);
	rd_kafka_headers_t *h = rd_kafka_headers_new(12);
	unsigned fields = GW_F_ID | GW_F_DEADLINE | GW_F_REPLY | GW_F_ROUTE | GW_F_STREAM |
			  GW_F_CLIENT | GW_F_CRED;
	if (m->model[0])
		fields |= GW_F_MODEL;
	if (m->cluster[0])
		fields |= GW_F_CLUSTER;
	if (m->framework[0])
		fields |= GW_F_FRAMEWORK;
	if (sealed != 0 || wire_encode(m, fields, h) != 0) {
		OPENSSL_cleanse(m, sizeof *m);
		free(m);
		rd_kafka_headers_destroy(h);
		log_error("cannot encode request", LS("request_id", id));
		front_fail(ig, p, 500, "internal error encoding the request", "internal_error", 0);
		return;
	}
	OPENSSL_cleanse(m, sizeof *m);
	free(m);
	rd_kafka_resp_err_t err =
	    kafka_produce(&ig->producer, GW_TOPIC_REQUESTS, RD_KAFKA_PARTITION_UA, hint,
			  strlen(hint), bytes, blen, h, NULL, NULL);
	if (err) {
		front_fail(ig, p, 503, "the message broker is not accepting requests",
			   "broker_unavailable", 2);
		return;
	}
	p->published = 1;
	metric_set(ig->m_inflight, (double)ig->pending.count);
}

static void finish_shutdown(struct ingress *ig)
{
	event_del(ig->janitor);
	probe_stop(&ig->probe);
	kafka_producer_close(&ig->producer, 5000);
	kafka_consumer_close(&ig->replies);
	runtime_exit(&ig->rt);
}

static void janitor_tick(evutil_socket_t fd, short what, void *arg)
{
	struct ingress *ig = arg;
	int64_t now = wire_now_ms();
	if (++ig->ticks % 4 == 0)
		conn_sweep(ig, now);
	while (ig->pending.head && ig->pending.head->deadline_ms <= now)
		front_fail(ig, ig->pending.head, 504, "the request timed out", "timeout", 0);
	metric_set(ig->m_inflight, (double)ig->pending.count);
	if (!ig->rt.stopping)
		return;
	if (ig->pending.count > 0 && now < ig->stop_deadline_ms)
		return;
	while (ig->pending.head)
		front_fail(ig, ig->pending.head, 503, "the gateway is shutting down",
			   "shutting_down", 1);
	/* One more tick lets evhttp write the last answers before the loop ends. */
	if (ig->stop_deadline_ms > 0) {
		ig->stop_deadline_ms = 0;
		return;
	}
	finish_shutdown(ig);
}

static void on_stop(void *arg)
{
	struct ingress *ig = arg;
	if (ig->listener) {
		evhttp_del_accept_socket(ig->http, ig->listener);
		ig->listener = NULL;
	}
	ig->stop_deadline_ms = wire_now_ms() + ig->cfg.shutdown_grace_ms;
	log_info("stopped accepting; waiting for requests in flight",
		 LI("inflight", (long long)ig->pending.count));
}

static void on_reload(void *arg)
{
	conn_tls_reload(arg);
}

static int ready(void *arg, char *why, size_t cap)
{
	struct ingress *ig = arg;
	if (ig->producer.fatal) {
		snprintf(why, cap, "Kafka producer failed fatally");
		return 0;
	}
	if (!probe_up(&ig->probe)) {
		snprintf(why, cap, "message broker unreachable");
		return 0;
	}
	return 1;
}

static double inflight_fn(void *arg)
{
	struct ingress *ig = arg;
	return (double)ig->pending.count;
}

int front_init(struct ingress *ig)
{
	char host[256];
	unsigned short port;
	if (runtime_parse_hostport(ig->cfg.listen, host, sizeof host, &port) != 0) {
		log_error("GW_HTTP_LISTEN must be host:port", LS("value", ig->cfg.listen));
		return -1;
	}
	ig->http = evhttp_new(ig->rt.base);
	if (!ig->http)
		return -1;
	/* The connection layer (conn.c) enforces the limits first, in OpenAI's shape; these
	 * are evhttp's own backstops, set no tighter. */
	evhttp_set_max_body_size(ig->http, (ev_ssize_t)ig->cfg.max_body);
	evhttp_set_max_headers_size(ig->http, (ev_ssize_t)ig->cfg.max_header_bytes * 2);
	struct timeval idle = {ig->cfg.keepalive_ms / 1000, (ig->cfg.keepalive_ms % 1000) * 1000};
	evhttp_set_timeout_tv(ig->http, &idle);
	evhttp_set_allowed_methods(ig->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
						 EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
						 EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH |
						 EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT);
	if (conn_init(ig) != 0)
		return -1;
	runtime_admin_routes(&ig->rt, ig->http);
	evhttp_set_gencb(ig->http, front_request, ig);
	ig->listener = evhttp_bind_socket_with_handle(ig->http, host, port);
	if (!ig->listener) {
		log_error("cannot listen: is the address in use? set GW_HTTP_LISTEN",
			  LS("address", ig->cfg.listen));
		return -1;
	}
	ig->rt.on_stop = on_stop;
	ig->rt.on_reload = on_reload;
	ig->rt.ready = ready;
	ig->rt.arg = ig;
	ig->janitor = event_new(ig->rt.base, -1, EV_PERSIST, janitor_tick, ig);
	struct timeval tv = {0, 50 * 1000};
	if (!ig->janitor || event_add(ig->janitor, &tv) != 0)
		return -1;
	ig->m_inflight = metric_gauge_fn("gw_ingress_inflight", NULL,
					 "Requests waiting for an answer", inflight_fn, ig);
	ig->m_latency = metric_get(METRIC_HISTOGRAM, "gw_ingress_request_seconds", NULL,
				   "Time from request to answer as seen by ingress");
	ig->m_streams = metric_get(METRIC_GAUGE, "gw_ingress_streams_open", NULL,
				   "Streamed answers in progress");
	ig->m_cancels =
	    metric_get(METRIC_COUNTER, "gw_ingress_cancels_total", NULL,
		       "Cancels sent upstream for clients that left before their answer");
	log_info("ingress listening", LS("address", ig->cfg.listen),
		 LS("tls", ig->tls ? "on" : "off"));
	return 0;
}
