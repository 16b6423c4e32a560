/* The mock compute endpoint's HTTP side: routes, authentication, failure injection,
 * and calls that answer after a delay or stream token by token on their own timer. */
#include "mock_server.h"

#include "log.h"
#include "mock_json.h"
#include "runtime.h"

#include <event2/buffer.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define MOCK_MAX_BODY        (8u << 20)
#define MOCK_MAX_HEADERS     65536
/* Idle keep-alive bound; also caps one stream's length (evhttp's read timeout runs
 * while it watches a streaming connection for close). */
#define MOCK_HTTP_TIMEOUT_S  300
#define MOCK_SPARE_MAX       1024 /* released calls kept for reuse */
#define MOCK_EMBED_ITEMS_MAX 2048
#define MOCK_DRAIN_TICK_MS   10
#define MOCK_DRAIN_MAX_TICKS 200 /* 2 s for written replies at shutdown */

enum api { API_CHAT, API_TEXT, API_EMBED, API_MODELS, API_HEALTH, API_STATS };

struct route {
	const char *path;
	enum evhttp_cmd_type method;
	const char *allow;
	enum api api;
};

static const struct route routes[] = {
    {"/v1/chat/completions", EVHTTP_REQ_POST, "POST", API_CHAT},
    {"/v1/completions", EVHTTP_REQ_POST, "POST", API_TEXT},
    {"/v1/embeddings", EVHTTP_REQ_POST, "POST", API_EMBED},
    {"/v1/models", EVHTTP_REQ_GET, "GET", API_MODELS},
    {"/health", EVHTTP_REQ_GET, "GET", API_HEALTH},
    {"/mock/stats", EVHTTP_REQ_GET, "GET", API_STATS},
};

static void stream_step(struct mock_call *c);

static const char *method_name(enum evhttp_cmd_type cmd)
{
	switch (cmd) {
	case EVHTTP_REQ_GET: return "GET";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_HEAD: return "HEAD";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	case EVHTTP_REQ_TRACE: return "TRACE";
	case EVHTTP_REQ_CONNECT: return "CONNECT";
	case EVHTTP_REQ_PATCH: return "PATCH";
	}
	return "UNKNOWN";
}

/* A reply handed to evhttp is counted in s->writing until it is fully written
 * (on_complete) or its connection dies (close callback), so a stop can wait for it.
 * evhttp serves one request per connection at a time, so the connection's single
 * close callback is ours for as long as this reply is. */
static void on_written(struct evhttp_request *req, void *arg)
{
	struct mock_server *s = arg;
	struct evhttp_connection *conn = evhttp_request_get_connection(req);

	if (conn)
		evhttp_connection_set_closecb(conn, NULL, NULL);
	s->writing--;
}

static void on_written_conn_close(struct evhttp_connection *conn, void *arg)
{
	struct mock_server *s = arg;

	s->writing--;
}

static void track(struct mock_server *s, struct evhttp_request *req)
{
	struct evhttp_connection *conn = evhttp_request_get_connection(req);

	if (!conn)
		return;
	s->writing++;
	evhttp_request_set_on_complete_cb(req, on_written, s);
	evhttp_connection_set_closecb(conn, on_written_conn_close, s);
}

/* A header evhttp could not add (out of memory) is logged; the reply still goes. */
static void add_header(struct evhttp_request *req, const char *name, const char *value)
{
	if (evhttp_add_header(evhttp_request_get_output_headers(req), name, value) < 0)
		log_error("cannot add a reply header (out of memory)", LS("header", name));
}

static void add_headers(struct mock_server *s, struct evhttp_request *req, const char *ctype)
{
	add_header(req, "Content-Type", ctype);
	if (s->stopping)
		add_header(req, "Connection", "close");
}

/* Sends s->scratch as the whole body; scratch is left empty for the next reply. */
static void send_scratch(struct mock_server *s, struct evhttp_request *req, int status,
			 const char *ctype)
{
	add_headers(s, req, ctype);
	track(s, req);
	evhttp_send_reply(req, status, NULL, s->scratch);
	evbuffer_drain(s->scratch, evbuffer_get_length(s->scratch));
}

/* OpenAI's error shape. message is plain text (escaped here); code NULL is JSON null. */
static void reply_error(struct mock_server *s, struct evhttp_request *req, int status,
			const char *message, const char *type, const char *code)
{
	char esc[1024];
	size_t n = 0;

	log_json_escape(esc, sizeof esc, &n, message);
	esc[n] = 0;
	evbuffer_drain(s->scratch, evbuffer_get_length(s->scratch));
	if (evbuffer_add_printf(
		s->scratch, "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"code\":%s%s%s}}", esc,
		type, code ? "\"" : "", code ? code : "null", code ? "\"" : "") < 0) {
		log_error("out of memory building an error reply", LI("status", status));
		evbuffer_drain(s->scratch, evbuffer_get_length(s->scratch));
		evhttp_send_error(req, 500, NULL);
		return;
	}
	send_scratch(s, req, status, "application/json");
}

static void reply_oom(struct mock_server *s, struct evhttp_request *req, const char *what)
{
	log_error("out of memory building a reply", LS("reply", what));
	reply_error(s, req, 500, "The mock endpoint ran out of memory.", "server_error", NULL);
}

static int authorized(const struct mock_server *s, struct evhttp_request *req)
{
	const struct mock_config *c = s->cfg;
	const char *h;
	unsigned char diff;
	size_t n;

	if (!c->api_key)
		return 1;
	h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (!h || strncasecmp(h, "Bearer ", 7) != 0)
		return 0;
	h += 7;
	while (*h == ' ')
		h++;
	n = strlen(h);
	/* Constant time in the key's length: no timing hint about how much matched. */
	diff = n != c->api_key_len;
	for (size_t i = 0; i < c->api_key_len; i++)
		diff |= (unsigned char)(c->api_key[i] ^ (i < n ? h[i] : 0));
	return diff == 0;
}

/* Answers a call's request now with its final (non-streamed) body. */
static void answer(struct mock_server *s, struct evhttp_request *req, enum mock_call_kind kind,
		   const struct mock_answer *a, unsigned long items)
{
	int rc;

	switch (kind) {
	case CALL_FAIL:
		reply_error(s, req, 503,
			    "The engine is currently overloaded, please try again later.",
			    "server_error", "service_unavailable");
		return;
	case CALL_EMBEDDINGS:
		rc = mock_gen_embeddings(s->scratch, a->hash, a->model_json, items,
					 a->prompt_tokens);
		break;
	default: rc = mock_gen_completion(s->scratch, a); break;
	}
	if (rc < 0) {
		reply_oom(s, req, kind == CALL_EMBEDDINGS ? "embeddings" : "completion");
		return;
	}
	send_scratch(s, req, 200, "application/json");
}

static void on_call_timer(evutil_socket_t fd, short what, void *arg);
static void on_call_conn_close(struct evhttp_connection *conn, void *arg);

static struct mock_call *call_get(struct mock_server *s, struct evhttp_request *req)
{
	struct evhttp_connection *conn;
	struct mock_call *c;

	if (s->nlive >= s->cfg->max_inflight)
		return NULL;
	c = s->spare;
	if (c) {
		s->spare = c->next;
		s->nspare--;
	} else {
		c = malloc(sizeof *c);
		if (!c) {
			log_error("out of memory for a delayed answer", LI("inflight", s->nlive));
			return NULL;
		}
	}
	memset(c, 0, sizeof *c);
	c->srv = s;
	c->req = req;
	if (event_assign(&c->timer, s->base, -1, 0, on_call_timer, c) < 0) {
		log_error("event_assign failed for a delayed answer");
		free(c);
		return NULL;
	}
	c->next = s->live;
	if (s->live)
		s->live->prev = c;
	s->live = c;
	s->nlive++;
	conn = evhttp_request_get_connection(req);
	if (conn)
		evhttp_connection_set_closecb(conn, on_call_conn_close, c);
	return c;
}

/* Releases the call; its request must already be answered, ended or freed. */
static void call_put(struct mock_call *c)
{
	struct mock_server *s = c->srv;

	event_del(&c->timer);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->live = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nlive--;
	if (s->nspare < MOCK_SPARE_MAX) {
		c->next = s->spare;
		s->spare = c;
		s->nspare++;
	} else {
		free(c);
	}
}

/* The call no longer needs to hear about its connection closing. */
static void call_detach_conn(struct mock_call *c)
{
	struct evhttp_connection *conn = evhttp_request_get_connection(c->req);

	if (conn)
		evhttp_connection_set_closecb(conn, NULL, NULL);
}

static void on_call_conn_close(struct evhttp_connection *conn, void *arg)
{
	struct mock_call *c = arg;
	struct mock_server *s = c->srv;

	s->stats.cancelled++;
	log_debug("client left before its answer ended", LI("tokens_sent", c->sent),
		  LI("streaming", c->kind == CALL_STREAM));
	/* On a network error evhttp detaches the unanswered request from the dying
	 * connection and leaves it to us: ending it frees it. Otherwise evhttp frees it
	 * with the connection. */
	if (evhttp_request_get_connection(c->req) == NULL)
		evhttp_send_reply_end(c->req);
	call_put(c);
}

static void call_answer(struct mock_call *c)
{
	struct mock_server *s = c->srv;

	call_detach_conn(c);
	answer(s, c->req, c->kind, &c->answer, c->items);
	call_put(c);
}

static void on_call_timer(evutil_socket_t fd, short what, void *arg)
{
	struct mock_call *c = arg;

	if (c->kind == CALL_STREAM)
		stream_step(c);
	else
		call_answer(c);
}

static void stream_chunk(struct mock_server *s, struct evhttp_request *req)
{
	evhttp_send_reply_chunk(req, s->scratch);
	/* evhttp leaves the buffer alone when the connection is gone. */
	evbuffer_drain(s->scratch, evbuffer_get_length(s->scratch));
}

static void stream_end(struct mock_call *c)
{
	struct mock_server *s = c->srv;

	call_detach_conn(c);
	track(s, c->req);
	evhttp_send_reply_end(c->req);
	call_put(c);
}

/* Sends the next token (all of them when GW_MOCK_TOKEN_MS is 0 or while stopping),
 * then the final chunk and [DONE]; otherwise re-arms the call's timer. */
static void stream_step(struct mock_call *c)
{
	struct mock_server *s = c->srv;
	const struct mock_config *cfg = s->cfg;
	unsigned long n = (unsigned long)cfg->completion_tokens;
	int all = cfg->token_ms == 0 || s->stopping;

	if (!c->started) {
		add_headers(s, c->req, "text/event-stream");
		add_header(c->req, "Cache-Control", "no-cache");
		evhttp_send_reply_start(c->req, 200, NULL);
		c->started = 1;
		c->rng = c->answer.hash;
		s->stats.streams++;
	}
	do {
		if (c->sent < n) {
			if (mock_gen_chunk(s->scratch, &c->answer, &c->rng, c->sent) < 0)
				goto oom;
			c->sent++;
			stream_chunk(s, c->req);
		}
		if (c->sent == n) {
			if (mock_gen_final(s->scratch, &c->answer, c->sent) < 0)
				goto oom;
			stream_chunk(s, c->req);
			stream_end(c);
			return;
		}
	} while (all);
	struct timeval tv = {cfg->token_ms / 1000, (cfg->token_ms % 1000) * 1000};

	if (event_add(&c->timer, &tv) < 0) {
		log_error("cannot arm the stream timer; ending the stream early",
			  LI("tokens_sent", c->sent));
		stream_end(c);
	}
	return;
oom:
	/* Headers are out: all that is left is to end the stream short. */
	log_error("out of memory building a stream chunk; ending the stream early",
		  LI("tokens_sent", c->sent));
	evbuffer_drain(s->scratch, evbuffer_get_length(s->scratch));
	stream_end(c);
}

static void on_api(struct mock_server *s, struct evhttp_request *req, enum api api)
{
	const struct mock_config *cfg = s->cfg;
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	const char *body = "";
	struct mock_json_req jr;
	int m, fail = 0;
	enum mock_call_kind kind;
	unsigned long items = 0;

	s->stats.requests++;
	if (!authorized(s, req)) {
		s->stats.rejected++;
		reply_error(s, req, 401, "Incorrect API key provided.", "invalid_request_error",
			    "invalid_api_key");
		return;
	}
	if (len) {
		/* One contiguous body for the scanner and the hash; evhttp already holds it. */
		body = (const char *)evbuffer_pullup(in, -1);
		if (!body) {
			reply_oom(s, req, "request body");
			return;
		}
	}
	switch (mock_json_scan(body, len, &jr)) {
	case MOCK_JSON_OK: break;
	case MOCK_JSON_NOT_OBJECT:
		s->stats.rejected++;
		reply_error(s, req, 400, "The request body must be a JSON object.",
			    "invalid_request_error", NULL);
		return;
	default:
		s->stats.rejected++;
		reply_error(s, req, 400,
			    "We could not parse the JSON body of your request. (HINT: This likely "
			    "means you aren't using your HTTP library correctly. The OpenAI API "
			    "expects a JSON payload.)",
			    "invalid_request_error", NULL);
		return;
	}
	if (!jr.has_model || !jr.model_string) {
		s->stats.rejected++;
		reply_error(s, req, 400,
			    jr.has_model ? "'model' must be a string."
					 : "You must provide a model parameter.",
			    "invalid_request_error", NULL);
		return;
	}
	m = jr.model_bad ? -1 : mock_config_find_model(cfg, jr.model);
	if (m < 0) {
		char msg[MOCK_JSON_MODEL_MAX + 80];

		snprintf(msg, sizeof msg,
			 "The model `%s` does not exist or you do not have access to it.",
			 jr.model_bad ? "(invalid)" : jr.model);
		s->stats.rejected++;
		reply_error(s, req, 404, msg, "invalid_request_error", "model_not_found");
		return;
	}
	if (api == API_EMBED) {
		items = jr.input_items;
		if (!jr.has_input || items == 0 || items > MOCK_EMBED_ITEMS_MAX) {
			s->stats.rejected++;
			reply_error(s, req, 400,
				    !jr.has_input ? "Missing required parameter: 'input'."
				    : items == 0  ? "'input' must not be empty."
						  : "'input' holds more than 2048 items.",
				    "invalid_request_error", NULL);
			return;
		}
	}
	if (cfg->fail_ppm) {
		s->fail_acc += cfg->fail_ppm;
		if (s->fail_acc >= 1000000) {
			s->fail_acc -= 1000000;
			fail = 1;
			s->stats.failed++;
		}
	}
	struct mock_answer a = {
	    .kind = api == API_CHAT ? MOCK_CHAT : MOCK_TEXT,
	    .hash = mock_gen_hash(body, len),
	    .model_json = cfg->models[m].json,
	    .prompt_tokens = jr.words ? jr.words : 1,
	    .completion_tokens = api == API_EMBED ? 0 : (unsigned long)cfg->completion_tokens,
	};

	if (fail)
		kind = CALL_FAIL;
	else if (api == API_EMBED)
		kind = CALL_EMBEDDINGS;
	else if (jr.stream)
		kind = CALL_STREAM;
	else
		kind = CALL_COMPLETION;
	if (kind != CALL_STREAM && cfg->latency_ms == 0) {
		answer(s, req, kind, &a, items);
		return;
	}

	struct mock_call *c = call_get(s, req);

	if (!c) {
		s->stats.rejected++;
		reply_error(s, req, 503, "The mock endpoint has too many requests in flight.",
			    "server_error", "overloaded");
		return;
	}
	c->kind = kind;
	c->answer = a;
	c->items = items;
	if (cfg->latency_ms == 0) {
		stream_step(c);
		return;
	}
	struct timeval tv = {cfg->latency_ms / 1000, (cfg->latency_ms % 1000) * 1000};

	if (event_add(&c->timer, &tv) < 0) {
		log_error("cannot arm the latency timer; answering now");
		on_call_timer(-1, 0, c);
	}
}

static void on_models(struct mock_server *s, struct evhttp_request *req)
{
	const struct mock_config *cfg = s->cfg;

	if (!authorized(s, req)) {
		reply_error(s, req, 401, "Incorrect API key provided.", "invalid_request_error",
			    "invalid_api_key");
		return;
	}
	if (evbuffer_add_printf(s->scratch, "{\"object\":\"list\",\"data\":[") < 0)
		goto oom;
	for (int i = 0; i < cfg->nmodels; i++)
		if (evbuffer_add_printf(
			s->scratch,
			"%s{\"id\":\"%s\",\"object\":\"model\",\"created\":1700000000,"
			"\"owned_by\":\"gw-mock\"}",
			i ? "," : "", cfg->models[i].json) < 0)
			goto oom;
	if (evbuffer_add(s->scratch, "]}", 2) < 0)
		goto oom;
	send_scratch(s, req, 200, "application/json");
	return;
oom:
	evbuffer_drain(s->scratch, evbuffer_get_length(s->scratch));
	reply_oom(s, req, "models");
}

static void on_stats(struct mock_server *s, struct evhttp_request *req)
{
	const struct mock_stats *st = &s->stats;

	if (evbuffer_add_printf(s->scratch,
				"{\"requests\":%llu,\"streams\":%llu,\"cancelled\":%llu,"
				"\"failed\":%llu,\"rejected\":%llu,\"inflight\":%lld}",
				st->requests, st->streams, st->cancelled, st->failed, st->rejected,
				s->nlive) < 0) {
		evbuffer_drain(s->scratch, evbuffer_get_length(s->scratch));
		reply_oom(s, req, "stats");
		return;
	}
	send_scratch(s, req, 200, "application/json");
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct mock_server *s = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const struct route *r = NULL;

	for (size_t i = 0; path && i < sizeof routes / sizeof routes[0]; i++) {
		if (strcmp(path, routes[i].path) == 0) {
			r = &routes[i];
			break;
		}
	}
	if (!r) {
		char msg[600];

		snprintf(msg, sizeof msg, "Unknown request URL: %s %.512s.", method_name(cmd),
			 path ? path : "");
		reply_error(s, req, 404, msg, "invalid_request_error", "unknown_url");
		return;
	}
	if (cmd != r->method) {
		char msg[128];

		snprintf(msg, sizeof msg, "Method %s is not allowed on %s; use %s.",
			 method_name(cmd), r->path, r->allow);
		add_header(req, "Allow", r->allow);
		reply_error(s, req, 405, msg, "invalid_request_error", "method_not_allowed");
		return;
	}
	if (s->stopping && r->api != API_HEALTH && r->api != API_STATS) {
		reply_error(s, req, 503, "The mock endpoint is shutting down.", "server_error",
			    "shutting_down");
		return;
	}
	switch (r->api) {
	case API_MODELS: on_models(s, req); break;
	case API_HEALTH:
		if (evbuffer_add(s->scratch, "ok", 2) < 0) {
			reply_oom(s, req, "health");
			return;
		}
		send_scratch(s, req, 200, "text/plain");
		break;
	case API_STATS: on_stats(s, req); break;
	default: on_api(s, req, r->api); break;
	}
}

static void log_listening(struct mock_server *s)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	char addr[64] = "";
	int port = 0;
	evutil_socket_t fd = evhttp_bound_socket_get_fd(s->listener);

	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *in = (struct sockaddr_in *)&ss;

			evutil_inet_ntop(AF_INET, &in->sin_addr, addr, sizeof addr);
			port = ntohs(in->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

			evutil_inet_ntop(AF_INET6, &in6->sin6_addr, addr, sizeof addr);
			port = ntohs(in6->sin6_port);
		}
	}
	log_info("mock endpoint listening", LS("address", addr), LI("port", port),
		 LI("models", s->cfg->nmodels), LI("latency_ms", s->cfg->latency_ms),
		 LI("token_ms", s->cfg->token_ms),
		 LI("completion_tokens", s->cfg->completion_tokens),
		 LI("fail_ppm", s->cfg->fail_ppm), LI("api_key_required", s->cfg->api_key != NULL));
}

int mock_server_start(struct mock_server *s, struct event_base *base, const struct mock_config *cfg)
{
	char host[256];
	unsigned short port;

	memset(s, 0, sizeof *s);
	s->base = base;
	s->cfg = cfg;
	if (runtime_parse_hostport(cfg->listen, host, sizeof host, &port) < 0) {
		log_error("GW_MOCK_LISTEN must be host:port", LS("value", cfg->listen));
		return -1;
	}
	s->scratch = evbuffer_new();
	s->http = evhttp_new(base);
	if (!s->scratch || !s->http) {
		log_error("out of memory creating the HTTP server");
		return -1;
	}
	evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
						EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
						EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
						EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_max_body_size(s->http, MOCK_MAX_BODY);
	evhttp_set_max_headers_size(s->http, MOCK_MAX_HEADERS);
	evhttp_set_timeout(s->http, MOCK_HTTP_TIMEOUT_S);
	evhttp_set_gencb(s->http, on_request, s);
	s->listener = evhttp_bind_socket_with_handle(s->http, host, port);
	if (!s->listener) {
		log_error("cannot listen: is the address in use? set GW_MOCK_LISTEN",
			  LS("address", cfg->listen));
		return -1;
	}
	log_listening(s);
	return 0;
}

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
	struct mock_server *s = arg;

	if (s->writing > 0 && ++s->drain_ticks < MOCK_DRAIN_MAX_TICKS)
		return;
	event_del(&s->drain);
	if (s->writing > 0)
		log_warn("stopping with replies not fully written", LI("replies", s->writing));
	s->stopped(s->stopped_arg);
}

void mock_server_stop(struct mock_server *s, void (*stopped)(void *arg), void *arg)
{
	struct timeval tick = {0, MOCK_DRAIN_TICK_MS * 1000};

	if (s->stopping)
		return;
	s->stopping = 1;
	s->stopped = stopped;
	s->stopped_arg = arg;
	if (s->listener) {
		evhttp_del_accept_socket(s->http, s->listener);
		s->listener = NULL;
	}
	log_info("stopping: answering waiting requests now", LI("inflight", s->nlive));
	/* Each step below releases its call, so the list shrinks to empty. */
	while (s->live) {
		if (s->live->kind == CALL_STREAM)
			stream_step(s->live);
		else
			call_answer(s->live);
	}
	if (event_assign(&s->drain, s->base, -1, EV_PERSIST, on_drain_tick, s) == 0)
		s->drain_set = 1;
	if (!s->drain_set || event_add(&s->drain, &tick) < 0) {
		log_error("cannot arm the shutdown timer; stopping without waiting");
		stopped(arg);
	}
}

void mock_server_free(struct mock_server *s)
{
	struct mock_call *c;

	if (s->drain_set)
		event_del(&s->drain);
	/* Closing the connections releases any call still waiting (close callbacks). */
	if (s->http)
		evhttp_free(s->http);
	while ((c = s->live) != NULL) {
		s->live = c->next;
		event_del(&c->timer);
		free(c);
	}
	while ((c = s->spare) != NULL) {
		s->spare = c->next;
		free(c);
	}
	if (s->scratch)
		evbuffer_free(s->scratch);
	memset(s, 0, sizeof *s);
}
