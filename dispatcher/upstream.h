/* The HTTP(S) call to a compute endpoint, with libevent's evhttp client: one keep-alive
 * connection per call in flight (a per-endpoint stack of idle ones is reused), the
 * body relayed through callbacks as it arrives. https uses bufferevent_openssl with
 * certificate and host name verification. */
#ifndef GW_DISPATCHER_UPSTREAM_H
#define GW_DISPATCHER_UPSTREAM_H

#include "registry.h"

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdint.h>

/* The connections of one endpoint. Owned by the dispatcher (one per registry entry);
 * idle and auth are malloc'd, the connections are freed by upstream_pool_free. */
struct upstream_pool {
	struct event_base *base;
	struct evdns_base *dns;          /* borrowed */
	void *ssl_ctx;                   /* SSL_CTX, borrowed; used for https endpoints */
	const struct endpoint *ep;       /* borrowed from the registry */
	char *auth;                      /* "Bearer <key>" or NULL; a secret, never logged */
	struct evhttp_connection **idle; /* stack, at most ep->max_concurrent */
	int nidle;
	int inflight;
};

enum upstream_result {
	UPSTREAM_OK = 0,      /* the whole answer arrived */
	UPSTREAM_UNREACHABLE, /* no answer byte: refused, reset, DNS failure */
	UPSTREAM_CLOSED,      /* the answer started, then the connection broke */
	UPSTREAM_TIMEOUT,     /* nothing arrived within the call's timeout */
	UPSTREAM_PROTOCOL,    /* the answer was not valid HTTP */
};

struct upstream_call;

/* What a call reports; every callback runs on the loop thread. on_body gets the bytes
 * received so far, which it must consume (evbuffer_remove/drain/add_buffer). on_done
 * runs once, unless the call was cancelled. on_body may cancel the call. */
struct upstream_ops {
	/* retry_after_s: the Retry-After header in seconds, -1 when absent. */
	void (*on_head)(struct upstream_call *c, int status, const char *ctype, int retry_after_s);
	void (*on_body)(struct upstream_call *c, struct evbuffer *buf);
	void (*on_done)(struct upstream_call *c, enum upstream_result r);
};

/* One call; embedded in the request making it. conn is borrowed from the pool while the
 * call is in flight; req belongs to evhttp and is NULL when nothing is in flight. */
struct upstream_call {
	struct upstream_pool *pool;
	struct evhttp_connection *conn;
	struct evhttp_request *req;
	const struct upstream_ops *ops;
	int got_head;
	int http_error; /* enum evhttp_request_error from the error callback, -1 none */
	int starting;   /* inside upstream_start: completion is reported by its return */
	int sync_done;
	int64_t expires_us;                  /* when the call's evhttp timeout runs out */
	int failed;                          /* ended badly: its connection is closed, not reused */
	int64_t start_us, first_us, last_us; /* for the phase timeouts (upstream_expired) */
};

int upstream_pool_init(struct upstream_pool *p, struct event_base *base, struct evdns_base *dns,
		       void *ssl_ctx, const struct endpoint *ep);
void upstream_pool_free(struct upstream_pool *p);

/* A new connection to the endpoint (TLS for https); NULL (logged) on failure. */
struct evhttp_connection *upstream_connection_new(struct upstream_pool *p);

/* Builds the SSL_CTX for https endpoints: peer verification against ca_file (NULL:
 * the system store). NULL (logged) on failure. */
void *upstream_ssl_ctx_new(const char *ca_file);
void upstream_ssl_ctx_free(void *ctx);

/* POSTs body to the endpoint's base path + route. timeout_ms bounds connecting and each
 * wait for data (the endpoint's chunk timeout); the other phases are checked by
 * upstream_expired. Returns 0 when the call is under way, -1 when it failed at once (no
 * connection could be started: treat as unreachable; nothing is reported later). */
int upstream_start(struct upstream_call *c, struct upstream_pool *p, const struct upstream_ops *ops,
		   const char *route, const char *request_id, const void *body, size_t len,
		   int timeout_ms);

/* Aborts a call in flight and closes its connection (so the endpoint stops
 * generating); no callback follows. Safe from on_body. */
void upstream_cancel(struct upstream_call *c);

/* Which of the endpoint's timeouts a call in flight has exceeded at now: NULL none, else
 * "connect", "first_byte", "between_chunks" or "total". total_cap_us (> 0) further
 * bounds the total (the request deadline). */
const char *upstream_expired(const struct upstream_call *c, int64_t now_us);

#endif
