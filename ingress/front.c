/* The HTTP front end: routes, request checks, sealing the credential, publishing to
 * gw.requests, and the janitor that times requests out. */
#include "ingress.h"
#include "audit.h"
#include "config.h"
#include "log.h"
#include "openai.h"
#include "wire.h"

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct route {
	const char *path;     /* what the client calls */
	const char *upstream; /* gw-route: the path on the compute endpoint */
};

static const struct route routes[] = {
	{"/v1/chat/completions", "/v1/chat/completions"},
	{"/v1/completions", "/v1/completions"},
	{"/v1/embeddings", "/v1/embeddings"},
};

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[in[i] >> 4];
		out[2 * i + 1] = hex[in[i] & 15];
	}
	out[2 * n] = 0;
}

void front_count(struct ingress *ig, const char *route, int status)
{
	char labels[160];
	snprintf(labels, sizeof labels, "route=\"%s\",code=\"%d\"", route, status);
	metric_add(metric_get(METRIC_COUNTER, "gw_ingress_requests_total", labels,
			      "Requests answered, by route and status"),
		   1);
}

static void common_headers(struct evhttp_request *req, const char *id)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "X-Request-Id", id);
	evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(h, "Cache-Control", "no-store");
}

/* Answers an error no pending request exists for (rejected before it was accepted). */
static void reject(struct ingress *ig, struct evhttp_request *req, const char *id,
		   const char *route, int status, const char *message, const char *code,
		   int retry_after_s)
{
	char *body = openai_error_json(message, openai_error_type(status), code, id);
	struct evbuffer *b = evbuffer_new();
	common_headers(req, id);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
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

static void on_client_close(struct evhttp_connection *conn, void *arg)
{
	struct pending *p = arg;
	struct ingress *ig = p->ig;
	if (p->answered)
		return;
	log_info("client went away before its answer", LS("request_id", p->id),
		 LS("route", p->route), LI("streaming", p->started));
	p->req = NULL; /* evhttp frees it with the connection */
	front_completed(ig, p, 499, "client_closed");
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
		common_headers(req, p->id);
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
			front_fail(ig, p, 503, "the audit log is unavailable; the request was not served",
				   "audit_unavailable", 5);
	} else {
		p->audit_acked = 1;
		if (!p->answered)
			relay_release_held(ig, p);
	}
	pending_unref(p);
}

/* The principal hint (gw.requests key): an API key's public id for keys of the form
 * gw_<16 hex id>_<secret> (authz/apikey.h), otherwise a digest of the credential so
 * the same credential always lands on the same authz copy. */
static void principal_hint(const char *cred, size_t len, char out[65])
{
	if (len > 20 && memcmp(cred, "gw_", 3) == 0 && cred[19] == '_') {
		int ok = 1;
		for (int i = 3; i < 19; i++)
			if (!((cred[i] >= '0' && cred[i] <= '9') || (cred[i] >= 'a' && cred[i] <= 'f')))
				ok = 0;
		if (ok) {
			memcpy(out, cred + 3, 16);
			out[16] = 0;
			return;
		}
	}
	unsigned char md[32];
	unsigned int mdlen = 0;
	EVP_Digest(cred, len, md, &mdlen, EVP_sha256(), NULL);
	hex_encode(md, 16, out);
}

static int content_type_ok(const char *ct)
{
	if (!ct)
		return 1; /* absent: accept, the body is checked as JSON anyway */
	size_t n = strcspn(ct, ";");
	while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
		n--;
	return n == strlen("application/json") && strncasecmp(ct, "application/json", n) == 0;
}

static int model_ok(const char *m)
{
	size_t n = strlen(m);
	if (n == 0 || n > 255)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)m[i] < 0x20 || m[i] == 0x7f)
			return 0;
	return 1;
}

static void front_request(struct evhttp_request *req, void *arg)
{
	struct ingress *ig = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	char id[GW_ID_HEX + 1];
	const char *given = evhttp_find_header(in, "X-Request-Id");
	if (given && wire_id_valid(given))
		memcpy(id, given, sizeof id);
	else if (wire_id_new(id) != 0) {
		evhttp_send_error(req, 500, NULL);
		return;
	}

	const struct route *rt = NULL;
	for (size_t i = 0; path && i < sizeof routes / sizeof routes[0]; i++)
		if (strcmp(path, routes[i].path) == 0)
			rt = &routes[i];
	if (!rt) {
		reject(ig, req, id, "other", 404, "unknown route", "not_found", 0);
		return;
	}
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
		reject(ig, req, id, rt->path, 405, "method not allowed; use POST", "method_not_allowed", 0);
		return;
	}
	if (ig->rt.stopping) {
		reject(ig, req, id, rt->path, 503, "the gateway is shutting down", "shutting_down", 1);
		return;
	}
	if ((long long)ig->pending.count >= ig->cfg.max_inflight) {
		reject(ig, req, id, rt->path, 503, "too many requests in flight", "overloaded", 1);
		return;
	}
	if (!ig->producer.broker_up || ig->producer.fatal) {
		reject(ig, req, id, rt->path, 503, "the message broker is unreachable",
		       "broker_unavailable", 2);
		return;
	}
	if (!content_type_ok(evhttp_find_header(in, "Content-Type"))) {
		reject(ig, req, id, rt->path, 415, "Content-Type must be application/json",
		       "unsupported_media_type", 0);
		return;
	}
	const char *auth = evhttp_find_header(in, "Authorization");
	if (!auth || strncasecmp(auth, "Bearer ", 7) != 0 || !auth[7]) {
		reject(ig, req, id, rt->path, 401,
		       "missing credential: send Authorization: Bearer <API key or token>",
		       "missing_credential", 0);
		return;
	}
	const char *cred = auth + 7;
	size_t credlen = strlen(cred);
	if (credlen + SEAL_OVERHEAD > GW_CRED_MAX) {
		reject(ig, req, id, rt->path, 401, "credential too long", "invalid_credential", 0);
		return;
	}

	struct evbuffer *body = evhttp_request_get_input_buffer(req);
	size_t blen = evbuffer_get_length(body);
	const unsigned char *bytes = blen ? evbuffer_pullup(body, -1) : (const unsigned char *)"";
	json_error_t jerr;
	json_t *doc = json_loadb((const char *)bytes, blen, JSON_REJECT_DUPLICATES, &jerr);
	if (!doc) {
		char msg[300];
		snprintf(msg, sizeof msg, "request body is not valid JSON: %s", jerr.text);
		reject(ig, req, id, rt->path, 400, msg, "invalid_json", 0);
		return;
	}
	json_t *model = json_object_get(doc, "model");
	json_t *stream = json_object_get(doc, "stream");
	const char *problem = NULL;
	if (!json_is_object(doc))
		problem = "request body must be a JSON object";
	else if (!json_is_string(model))
		problem = "'model' is required and must be a string";
	else if (!model_ok(json_string_value(model)))
		problem = "'model' must be 1-255 printable characters";
	else if (stream && !json_is_boolean(stream) && !json_is_null(stream))
		problem = "'stream' must be a boolean";
	if (problem) {
		json_decref(doc);
		reject(ig, req, id, rt->path, 400, problem, "invalid_request", 0);
		return;
	}

	struct pending *p = pending_find(&ig->pending, id);
	if (p) {
		json_decref(doc);
		reject(ig, req, id, rt->path, 409, "a request with this X-Request-Id is in flight",
		       "duplicate_request_id", 0);
		return;
	}
	p = pending_new(&ig->pending, ig, id);
	if (!p) {
		json_decref(doc);
		reject(ig, req, id, rt->path, 503, "out of memory", "overloaded", 1);
		return;
	}
	p->req = req;
	p->conn = evhttp_request_get_connection(req);
	p->start_us = wire_now_us();
	p->deadline_ms = p->start_us / 1000 + ig->cfg.request_timeout_s * 1000;
	p->stream = json_is_true(stream);
	p->audit_done.fn = on_audit_done;
	snprintf(p->route, sizeof p->route, "%s", rt->path);
	snprintf(p->model, sizeof p->model, "%s", json_string_value(model));
	json_decref(doc);
	if (p->conn) {
		char *addr = NULL;
		ev_uint16_t port = 0;
		evhttp_connection_get_peer(p->conn, &addr, &port);
		snprintf(p->client, sizeof p->client, "%s", addr ? addr : "");
		evhttp_connection_set_closecb(p->conn, on_client_close, p);
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
	ev.model = p->model;
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
	snprintf(m->route, sizeof m->route, "%s", rt->upstream);
	snprintf(m->model, sizeof m->model, "%s", p->model);
	m->stream = p->stream;
	snprintf(m->client, sizeof m->client, "%s", p->client);
	char hint[65];
	principal_hint(cred, credlen, hint);
	int sealed = seal_encrypt(ig->seal_key, cred, credlen, id, m->cred, sizeof m->cred,
				  &m->cred_len);
	rd_kafka_headers_t *h = rd_kafka_headers_new(10);
	unsigned fields = GW_F_ID | GW_F_DEADLINE | GW_F_REPLY | GW_F_ROUTE | GW_F_MODEL |
			  GW_F_STREAM | GW_F_CLIENT | GW_F_CRED;
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
	rd_kafka_resp_err_t err = kafka_produce(&ig->producer, GW_TOPIC_REQUESTS,
						RD_KAFKA_PARTITION_UA, hint, strlen(hint), bytes,
						blen, h, NULL, NULL);
	if (err) {
		front_fail(ig, p, 503, "the message broker is not accepting requests",
			   "broker_unavailable", 2);
		return;
	}
	metric_set(ig->m_inflight, (double)ig->pending.count);
}

static void finish_shutdown(struct ingress *ig)
{
	event_del(ig->janitor);
	kafka_producer_close(&ig->producer, 5000);
	kafka_consumer_close(&ig->replies);
	runtime_exit(&ig->rt);
}

static void janitor_tick(evutil_socket_t fd, short what, void *arg)
{
	struct ingress *ig = arg;
	int64_t now = wire_now_ms();
	while (ig->pending.head && ig->pending.head->deadline_ms <= now)
		front_fail(ig, ig->pending.head, 504, "the request timed out", "timeout", 0);
	metric_set(ig->m_inflight, (double)ig->pending.count);
	if (!ig->rt.stopping)
		return;
	if (ig->pending.count > 0 && now < ig->stop_deadline_ms)
		return;
	while (ig->pending.head)
		front_fail(ig, ig->pending.head, 503, "the gateway is shutting down", "shutting_down", 1);
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

static int ready(void *arg, char *why, size_t cap)
{
	struct ingress *ig = arg;
	if (ig->producer.fatal) {
		snprintf(why, cap, "Kafka producer failed fatally");
		return 0;
	}
	if (!ig->producer.broker_up) {
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
	evhttp_set_max_body_size(ig->http, (ev_ssize_t)ig->cfg.max_body);
	evhttp_set_max_headers_size(ig->http, 65536);
	evhttp_set_timeout(ig->http, 60);
	evhttp_set_allowed_methods(ig->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
						     EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
						     EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
	runtime_admin_routes(&ig->rt, ig->http);
	evhttp_set_gencb(ig->http, front_request, ig);
	ig->listener = evhttp_bind_socket_with_handle(ig->http, host, port);
	if (!ig->listener) {
		log_error("cannot listen: is the address in use? set GW_HTTP_LISTEN",
			  LS("address", ig->cfg.listen));
		return -1;
	}
	ig->rt.on_stop = on_stop;
	ig->rt.ready = ready;
	ig->rt.arg = ig;
	ig->janitor = event_new(ig->rt.base, -1, EV_PERSIST, janitor_tick, ig);
	struct timeval tv = {0, 50 * 1000};
	if (!ig->janitor || event_add(ig->janitor, &tv) != 0)
		return -1;
	ig->m_inflight = metric_gauge_fn("gw_ingress_inflight", NULL, "Requests waiting for an answer",
					 inflight_fn, ig);
	ig->m_latency = metric_get(METRIC_HISTOGRAM, "gw_ingress_request_seconds", NULL,
				   "Time from request to answer as seen by ingress");
	ig->m_streams = metric_get(METRIC_GAUGE, "gw_ingress_streams_open", NULL,
				   "Streamed answers in progress");
	log_info("ingress listening", LS("address", ig->cfg.listen));
	return 0;
}
