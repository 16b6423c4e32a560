/* The HTTP call to an endpoint. evhttp runs one request at a time per connection, so a
 * call takes a connection of its own from the endpoint's idle stack (or opens one) and
 * gives it back when done: the per-call timeout then applies to that call alone. */
#include "upstream.h"

#include "log.h"
#include "wire.h"

#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UPSTREAM_MAX_HEADERS (64 * 1024)

int upstream_pool_init(struct upstream_pool *p, struct event_base *base, struct evdns_base *dns,
		       const struct endpoint *ep)
{
	memset(p, 0, sizeof *p);
	p->base = base;
	p->dns = dns;
	p->ep = ep;
	p->idle = calloc((size_t)ep->max_concurrent, sizeof *p->idle);
	if (!p->idle) {
		log_error("out of memory for endpoint connections", LS("endpoint", ep->name));
		return -1;
	}
	if (ep->api_key) {
		size_t n = strlen(ep->api_key) + sizeof "Bearer ";
		p->auth = malloc(n);
		if (!p->auth) {
			log_error("out of memory for endpoint key", LS("endpoint", ep->name));
			return -1;
		}
		snprintf(p->auth, n, "Bearer %s", ep->api_key);
	}
	return 0;
}

void upstream_pool_free(struct upstream_pool *p)
{
	for (int i = 0; i < p->nidle; i++)
		evhttp_connection_free(p->idle[i]);
	free(p->idle);
	if (p->auth) {
		explicit_bzero(p->auth, strlen(p->auth));
		free(p->auth);
	}
	memset(p, 0, sizeof *p);
}

static struct evhttp_connection *pool_take(struct upstream_pool *p)
{
	if (p->nidle > 0)
		return p->idle[--p->nidle];
	struct evhttp_connection *c =
	    evhttp_connection_base_new(p->base, p->dns, p->ep->host, p->ep->port);
	if (!c) {
		log_error("cannot create endpoint connection", LS("endpoint", p->ep->name));
		return NULL;
	}
	evhttp_connection_set_max_headers_size(c, UPSTREAM_MAX_HEADERS);
	/* A POST is never resent by the library: failover is the dispatcher's decision. */
	evhttp_connection_set_retries(c, 0);
	return c;
}

/* The caller guarantees inflight <= max_concurrent, so the stack never overflows. */
static void pool_give(struct upstream_pool *p, struct evhttp_connection *c)
{
	if (p->nidle < p->ep->max_concurrent)
		p->idle[p->nidle++] = c;
	else
		evhttp_connection_free(c);
}

static void call_end(struct upstream_call *c)
{
	c->req = NULL;
	if (c->conn) {
		pool_give(c->pool, c->conn);
		c->conn = NULL;
		c->pool->inflight--;
	}
}

static int header_cb(struct evhttp_request *req, void *arg)
{
	struct upstream_call *c = arg;
	int status = evhttp_request_get_response_code(req);
	if (status < 200)
		return 0; /* an interim 1xx; the real head follows */
	c->got_head = 1;
	const char *ctype =
	    evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
	c->ops->on_head(c, status, ctype);
	return 0;
}

static void chunk_cb(struct evhttp_request *req, void *arg)
{
	struct upstream_call *c = arg;
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	if (c->req && evbuffer_get_length(in) > 0)
		c->ops->on_body(c, in);
}

static void error_cb(enum evhttp_request_error e, void *arg)
{
	struct upstream_call *c = arg;
	/* A cancel comes from upstream_cancel, which has already finished the call. */
	if (e != EVREQ_HTTP_REQUEST_CANCEL)
		c->http_error = (int)e;
}

static enum upstream_result classify(struct upstream_call *c, struct evhttp_request *req)
{
	if (req && evhttp_request_get_response_code(req) > 0 && c->http_error < 0 && c->got_head)
		return UPSTREAM_OK;
	switch (c->http_error) {
	case EVREQ_HTTP_TIMEOUT: return UPSTREAM_TIMEOUT;
	case EVREQ_HTTP_INVALID_HEADER:
	case EVREQ_HTTP_DATA_TOO_LONG:
	case EVREQ_HTTP_BUFFER_ERROR: return UPSTREAM_PROTOCOL;
	default: break;
	}
	if (c->got_head)
		return UPSTREAM_CLOSED;
	/* A failed connect reports no error kind; a connect timeout looks the same. */
	if (c->http_error < 0 && wire_now_us() >= c->expires_us)
		return UPSTREAM_TIMEOUT;
	return UPSTREAM_UNREACHABLE;
}

static void done_cb(struct evhttp_request *req, void *arg)
{
	struct upstream_call *c = arg;
	if (!c->req)
		return; /* cancelled */
	if (req && c->got_head) {
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		if (evbuffer_get_length(in) > 0)
			c->ops->on_body(c, in);
		if (!c->req)
			return; /* cancelled by on_body */
	}
	enum upstream_result r = classify(c, req);
	call_end(c);
	if (c->starting) {
		c->sync_done = 1;
		return;
	}
	c->ops->on_done(c, r);
}

int upstream_start(struct upstream_call *c, struct upstream_pool *p, const struct upstream_ops *ops,
		   const char *route, const char *request_id, const void *body, size_t len,
		   int timeout_ms)
{
	memset(c, 0, sizeof *c);
	c->pool = p;
	c->ops = ops;
	c->http_error = -1;
	c->expires_us = wire_now_us() + (int64_t)timeout_ms * 1000;

	char uri[512];
	int n = snprintf(uri, sizeof uri, "%s%s", p->ep->base_path, route);
	if (n < 0 || (size_t)n >= sizeof uri) {
		log_error("upstream path too long", LS("request_id", request_id),
			  LS("endpoint", p->ep->name));
		return -1;
	}
	c->conn = pool_take(p);
	if (!c->conn)
		return -1;
	p->inflight++;
	struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
	evhttp_connection_set_timeout_tv(c->conn, &tv);

	struct evhttp_request *req = evhttp_request_new(done_cb, c);
	if (!req) {
		log_error("cannot create upstream request", LS("request_id", request_id));
		call_end(c);
		return -1;
	}
	evhttp_request_set_header_cb(req, header_cb);
	evhttp_request_set_chunked_cb(req, chunk_cb);
	evhttp_request_set_error_cb(req, error_cb);
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	if (evhttp_add_header(h, "Host", p->ep->host_header) ||
	    evhttp_add_header(h, "Content-Type", "application/json") ||
	    evhttp_add_header(h, "X-Request-Id", request_id) ||
	    (p->auth && evhttp_add_header(h, "Authorization", p->auth)) ||
	    evbuffer_add(evhttp_request_get_output_buffer(req), body, len)) {
		log_error("cannot build upstream request", LS("request_id", request_id),
			  LS("endpoint", p->ep->name));
		evhttp_request_free(req);
		call_end(c);
		return -1;
	}
	c->req = req;
	c->starting = 1;
	/* A connect that fails at once completes the request inside this call. On -1 the
	 * library may or may not have freed req, so it is left alone (a rare leak beats a
	 * double free). */
	int rc = evhttp_make_request(c->conn, req, EVHTTP_REQ_POST, uri);
	c->starting = 0;
	if (rc != 0) {
		log_error("cannot send upstream request", LS("request_id", request_id),
			  LS("endpoint", p->ep->name));
		call_end(c);
		return -1;
	}
	if (c->sync_done)
		return -1;
	return 0;
}

void upstream_cancel(struct upstream_call *c)
{
	struct evhttp_request *req = c->req;
	if (!req)
		return;
	/* Cleared first: the cancel reports back through error_cb, which must not act. */
	c->req = NULL;
	evhttp_cancel_request(req);
	call_end(c);
}
