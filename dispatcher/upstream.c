/* The HTTP call to an endpoint. evhttp runs one request at a time per connection, so a
 * call takes a connection of its own from the endpoint's idle stack (or opens one) and
 * gives it back when done: the per-call timeout then applies to that call alone. A
 * connection evhttp has reset is never reused (see struct upstream_conn): evhttp would
 * reconnect it in place, which a TLS bufferevent cannot do safely. */
#include "upstream.h"

#include "log.h"
#include "tls.h"
#include "wire.h"

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/keyvalq_struct.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#define UPSTREAM_MAX_HEADERS (64 * 1024)

void *upstream_ssl_ctx_new(const char *ca_file)
{
	SSL_CTX *ctx = tls_client_ctx_new(ca_file);
	if (!ctx) {
		char e[256];
		ERR_error_string_n(ERR_get_error(), e, sizeof e);
		log_error("cannot load CA certificates for https endpoints: check "
			  "GW_DISPATCHER_CA_FILE",
			  LS("ca_file", ca_file ? ca_file : "(system store)"), LS("error", e));
		return NULL;
	}
	return ctx;
}

void upstream_ssl_ctx_free(void *ctx)
{
	SSL_CTX_free(ctx);
}

int upstream_pool_init(struct upstream_pool *p, struct event_base *base, struct evdns_base *dns,
		       void *ssl_ctx, const struct endpoint *ep,
		       const struct upstream_pool_config *cfg)
{
	memset(p, 0, sizeof *p);
	p->base = base;
	p->dns = dns;
	p->ssl_ctx = ssl_ctx;
	if (ep->https && !ssl_ctx) {
		log_error("https endpoint without a TLS context", LS("endpoint", ep->name));
		return -1;
	}
	p->ep = ep;
	p->idle_cap = cfg->idle_max < ep->max_concurrent ? cfg->idle_max : ep->max_concurrent;
	p->idle_ms = cfg->idle_ms;
	p->idle = calloc((size_t)(p->idle_cap > 0 ? p->idle_cap : 1), sizeof *p->idle);
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
		upstream_conn_free(p->idle[i]);
	free(p->idle);
	if (p->auth) {
		explicit_bzero(p->auth, strlen(p->auth));
		free(p->auth);
	}
	memset(p, 0, sizeof *p);
}

/* A TLS bufferevent that verifies the certificate chain and the host name. */
static struct bufferevent *tls_bev(struct upstream_pool *p)
{
	struct bufferevent *bev =
	    tls_client_bev(p->base, p->ssl_ctx, p->ep->host, BEV_OPT_CLOSE_ON_FREE);
	/* Some servers close without close_notify; the HTTP framing tells a short body. */
	if (bev)
		bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

/* evhttp reports every reset of a connection that was up (peer close while idle, errors,
 * Connection: close, free) here. */
static void conn_closed(struct evhttp_connection *evcon, void *arg)
{
	struct upstream_conn *c = arg;
	c->dead = 1;
}

void upstream_conn_free(struct upstream_conn *c)
{
	if (!c)
		return;
	evhttp_connection_free(c->evcon);
	free(c);
}

struct upstream_conn *upstream_conn_new(struct upstream_pool *p)
{
	struct upstream_conn *uc = calloc(1, sizeof *uc);
	if (!uc) {
		log_error("out of memory for an endpoint connection", LS("endpoint", p->ep->name));
		return NULL;
	}
	struct evhttp_connection *c;
	if (p->ep->https) {
		struct bufferevent *bev = tls_bev(p);
		c = bev ? evhttp_connection_base_bufferevent_new(p->base, p->dns, bev, p->ep->host,
								 p->ep->port)
			: NULL;
		if (bev && !c)
			bufferevent_free(bev);
	} else {
		c = evhttp_connection_base_new(p->base, p->dns, p->ep->host, p->ep->port);
	}
	if (!c) {
		log_error("cannot create endpoint connection", LS("endpoint", p->ep->name));
		free(uc);
		return NULL;
	}
	uc->evcon = c;
	evhttp_connection_set_max_headers_size(c, UPSTREAM_MAX_HEADERS);
	/* A POST is never resent by the library: failover is the dispatcher's decision. */
	evhttp_connection_set_retries(c, 0);
	evhttp_connection_set_closecb(c, conn_closed, uc);
	return uc;
}

/* A request is written in more than one piece (headers, body; over TLS one record each).
 * On a connection past its first exchange, Nagle's algorithm would hold the second piece
 * until the endpoint's delayed ACK (~40 ms), so kept-alive connections turn it off (as
 * curl does). Set once, when the connection first goes idle: its socket exists then. */
static void nodelay(struct upstream_conn *c)
{
	if (c->nodelay)
		return;
	struct bufferevent *bev = evhttp_connection_get_bufferevent(c->evcon);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	int one = 1;
	if (fd >= 0 && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0)
		c->nodelay = 1;
}

/* The newest live idle connection, else a new one (fresh: never a kept-alive one). Dead
 * ones met on the way are closed: no callback of theirs is running here. */
static struct upstream_conn *pool_take(struct upstream_pool *p, int fresh)
{
	while (!fresh && p->nidle > 0) {
		struct upstream_conn *c = p->idle[--p->nidle];
		if (!c->dead)
			return c;
		upstream_conn_free(c);
	}
	struct upstream_conn *c = upstream_conn_new(p);
	if (c)
		p->opened++;
	return c;
}

/* A connection that failed, was cancelled or was closed by either side is freed rather
 * than kept; so is one beyond the idle cap. */
static void pool_give(struct upstream_pool *p, struct upstream_conn *c, int failed)
{
	if (!failed && !c->dead && p->nidle < p->idle_cap) {
		c->idle_since_us = wire_now_us();
		nodelay(c);
		p->idle[p->nidle++] = c;
	} else {
		upstream_conn_free(c);
	}
}

void upstream_pool_adopt(struct upstream_pool *to, struct upstream_pool *from)
{
	int k = 0;
	for (int i = 0; i < from->nidle; i++) {
		if (to->nidle < to->idle_cap)
			to->idle[to->nidle++] = from->idle[i];
		else
			from->idle[k++] = from->idle[i];
	}
	from->nidle = k;
}

void upstream_pool_tick(struct upstream_pool *p, int64_t now_us)
{
	int k = 0;
	for (int i = 0; i < p->nidle; i++) {
		struct upstream_conn *c = p->idle[i];
		if (c->dead || now_us - c->idle_since_us >= (int64_t)p->idle_ms * 1000)
			upstream_conn_free(c);
		else
			p->idle[k++] = c;
	}
	p->nidle = k;
}

static void call_end(struct upstream_call *c)
{
	c->req = NULL;
	if (c->conn) {
		pool_give(c->pool, c->conn, c->failed);
		c->conn = NULL;
		c->pool->inflight--;
	}
}

int upstream_retry_after(const char *value, time_t now)
{
	while (*value == ' ' || *value == '\t')
		value++;
	char *end;
	errno = 0;
	long v = strtol(value, &end, 10);
	if (end != value && value[0] != '-' && value[0] != '+') {
		while (*end == ' ' || *end == '\t')
			end++;
		if (*end || errno)
			return -1;
		return v > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : (int)v;
	}
	/* RFC 9110's IMF-fixdate, the one HTTP-date form a sender may generate. */
	struct tm tm;
	memset(&tm, 0, sizeof tm);
	const char *rest = strptime(value, "%a, %d %b %Y %H:%M:%S GMT", &tm);
	if (!rest)
		return -1;
	while (*rest == ' ' || *rest == '\t')
		rest++;
	if (*rest)
		return -1;
	time_t at = timegm(&tm);
	if (at == (time_t)-1)
		return -1;
	if (at <= now)
		return 0;
	return at - now > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : (int)(at - now);
}

static int header_cb(struct evhttp_request *req, void *arg)
{
	struct upstream_call *c = arg;
	int status = evhttp_request_get_response_code(req);
	if (status < 200)
		return 0; /* an interim 1xx; the real head follows */
	c->got_head = 1;
	c->first_us = c->last_us = wire_now_us();
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *ctype = evhttp_find_header(in, "Content-Type");
	const char *ra = evhttp_find_header(in, "Retry-After");
	int retry_after = ra ? upstream_retry_after(ra, time(NULL)) : -1;
	c->ops->on_head(c, status, ctype, retry_after);
	return 0;
}

static void chunk_cb(struct evhttp_request *req, void *arg)
{
	struct upstream_call *c = arg;
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	c->last_us = wire_now_us();
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

static int call_send(struct upstream_call *c, int fresh);

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
	c->failed = r != UPSTREAM_OK;
	if (r == UPSTREAM_UNREACHABLE && c->reused && !c->resent && !c->starting) {
		/* The endpoint closed the kept-alive connection before answering anything (an
		 * idle timeout racing this request): not the endpoint's failure. Once more on a
		 * fresh connection; only that outcome counts. */
		c->resent = 1;
		c->pool->stale++;
		call_end(c);
		log_debug("kept-alive connection was closed by the endpoint: resending on a new "
			  "one",
			  LS("request_id", c->request_id), LS("endpoint", c->pool->ep->name));
		c->http_error = -1;
		c->got_head = 0;
		if (call_send(c, 1) == 0)
			return;
		/* The fresh connection failed at once (its nested done_cb left the report). */
		c->sync_done = 0;
		c->ops->on_done(c, UPSTREAM_UNREACHABLE);
		return;
	}
	if (r == UPSTREAM_OK) {
		/* Keep-alive only when the endpoint did not ask to close. */
		const char *conn =
		    evhttp_find_header(evhttp_request_get_input_headers(req), "Connection");
		if (conn && strcasecmp(conn, "close") == 0)
			c->failed = 1;
	}
	call_end(c);
	if (c->starting) {
		c->sync_done = 1;
		return;
	}
	c->ops->on_done(c, r);
}

/* Takes a connection (a fresh one when asked) and sends the request on it. 0 when under
 * way; -1 when it failed at once (nothing in flight, no callback follows). */
static int call_send(struct upstream_call *c, int fresh)
{
	struct upstream_pool *p = c->pool;
	c->start_us = wire_now_us();
	c->expires_us = c->start_us + (int64_t)c->timeout_ms * 1000;
	c->conn = pool_take(p, fresh);
	if (!c->conn)
		return -1;
	c->reused = c->conn->uses > 0;
	if (c->reused)
		p->reused++;
	c->conn->uses++;
	p->inflight++;
	struct timeval tv = {c->timeout_ms / 1000, (c->timeout_ms % 1000) * 1000};
	evhttp_connection_set_timeout_tv(c->conn->evcon, &tv);

	struct evhttp_request *req = evhttp_request_new(done_cb, c);
	if (!req) {
		log_error("cannot create upstream request", LS("request_id", c->request_id));
		c->failed = 1;
		call_end(c);
		return -1;
	}
	evhttp_request_set_header_cb(req, header_cb);
	evhttp_request_set_chunked_cb(req, chunk_cb);
	evhttp_request_set_error_cb(req, error_cb);
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	if (evhttp_add_header(h, "Host", p->ep->host_header) ||
	    evhttp_add_header(h, "Content-Type", "application/json") ||
	    evhttp_add_header(h, "X-Request-Id", c->request_id) ||
	    (p->auth && evhttp_add_header(h, "Authorization", p->auth)) ||
	    evbuffer_add(evhttp_request_get_output_buffer(req), c->body, c->len)) {
		log_error("cannot build upstream request", LS("request_id", c->request_id),
			  LS("endpoint", p->ep->name));
		evhttp_request_free(req);
		c->failed = 1;
		call_end(c);
		return -1;
	}
	c->req = req;
	c->starting = 1;
	c->sync_done = 0;
	/* A connect that fails at once completes the request inside this call. On -1 the
	 * library may or may not have freed req, so it is left alone (a rare leak beats a
	 * double free). */
	int rc = evhttp_make_request(c->conn->evcon, req, EVHTTP_REQ_POST, c->uri);
	c->starting = 0;
	if (rc != 0) {
		log_error("cannot send upstream request", LS("request_id", c->request_id),
			  LS("endpoint", p->ep->name));
		c->failed = 1;
		call_end(c);
		return -1;
	}
	if (c->sync_done)
		return -1;
	return 0;
}

int upstream_start(struct upstream_call *c, struct upstream_pool *p, const struct upstream_ops *ops,
		   const char *route, const char *request_id, const void *body, size_t len,
		   int timeout_ms)
{
	memset(c, 0, sizeof *c);
	c->pool = p;
	c->ops = ops;
	c->http_error = -1;
	c->timeout_ms = timeout_ms;
	c->request_id = request_id;
	c->body = body;
	c->len = len;
	int n = snprintf(c->uri, sizeof c->uri, "%s%s", p->ep->base_path, route);
	if (n < 0 || (size_t)n >= sizeof c->uri) {
		log_error("upstream path too long", LS("request_id", request_id),
			  LS("endpoint", p->ep->name));
		return -1;
	}
	return call_send(c, 0);
}

void upstream_cancel(struct upstream_call *c)
{
	struct evhttp_request *req = c->req;
	if (!req)
		return;
	/* Cleared first: the cancel reports back through error_cb, which must not act. */
	c->req = NULL;
	c->failed = 1;
	evhttp_cancel_request(req);
	call_end(c);
}

/* evhttp does not report when its connection is up; the socket knows. */
static int conn_up(const struct upstream_call *c)
{
	struct bufferevent *bev =
	    c->conn ? evhttp_connection_get_bufferevent(c->conn->evcon) : NULL;
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	return fd >= 0 && getpeername(fd, (struct sockaddr *)&ss, &len) == 0;
}

const char *upstream_expired(const struct upstream_call *c, int64_t now_us)
{
	const struct endpoint *ep = c->pool->ep;
	if (!c->req)
		return NULL;
	if (now_us - c->start_us >= (int64_t)ep->timeout_ms * 1000)
		return "total";
	if (!c->got_head) {
		if (now_us - c->start_us >= (int64_t)ep->connect_timeout_ms * 1000 && !conn_up(c))
			return "connect";
		if (now_us - c->start_us >= (int64_t)ep->first_byte_timeout_ms * 1000)
			return "first_byte";
		return NULL;
	}
	if (now_us - c->last_us >= (int64_t)ep->chunk_timeout_ms * 1000)
		return "between_chunks";
	return NULL;
}
