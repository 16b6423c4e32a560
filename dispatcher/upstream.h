/* The HTTP(S) call to a compute endpoint, with libevent's evhttp client: one keep-alive
 * connection per call in flight (a bounded per-endpoint stack of idle ones is reused, for
 * http and https alike), the body relayed through callbacks as it arrives. https uses
 * bufferevent_openssl with certificate and host name verification on every new
 * connection. */
#ifndef GW_DISPATCHER_UPSTREAM_H
#define GW_DISPATCHER_UPSTREAM_H

#include "registry.h"

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdint.h>
#include <time.h>

/* One connection to an endpoint. Owned by the pool's idle stack while idle, by the call
 * (or health check) using it otherwise; upstream_conn_free releases it and its evhttp
 * connection. dead is set by evhttp's close callback (the peer closed it, or evhttp reset
 * it after an error): a dead connection is never given another request, because evhttp
 * would reconnect the same bufferevent and, for TLS, the same spent SSL object. */
struct upstream_conn {
	struct evhttp_connection *evcon;
	int dead;
	int nodelay;           /* TCP_NODELAY set on its socket */
	unsigned uses;         /* requests started on it */
	int64_t idle_since_us; /* when it went back to the idle stack */
};

/* Keep-alive settings shared by every endpoint's pool. */
struct upstream_pool_config {
	int idle_max; /* idle connections kept per endpoint (capped at max_concurrent); 0: none */
	int idle_ms;  /* an idle connection older than this is closed by upstream_pool_tick */
};

/* The connections of one endpoint. Embedded in its backend; idle (the stack) and auth are
 * malloc'd, the idle connections are freed by upstream_pool_free. Connections in use
 * belong to their calls. */
struct upstream_pool {
	struct event_base *base;
	struct evdns_base *dns;      /* borrowed */
	void *ssl_ctx;               /* SSL_CTX, borrowed; used for https endpoints */
	const struct endpoint *ep;   /* borrowed from the backend */
	char *auth;                  /* "Bearer <key>" or NULL; a secret, never logged */
	struct upstream_conn **idle; /* stack, newest on top, at most idle_cap */
	int nidle, idle_cap;
	int idle_ms;
	int inflight;
	/* Counters for the admin view and the tests. */
	unsigned long long opened; /* connections opened for calls */
	unsigned long long reused; /* calls sent on a kept-alive connection */
	unsigned long long stale;  /* calls resent on a fresh connection after a dead reuse */
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

/* One call; embedded in the request making it. conn is taken from the pool while the
 * call is in flight and given back (or freed) when it ends; req belongs to evhttp and is
 * NULL when nothing is in flight. request_id and body are borrowed from the request,
 * which keeps them until the call ends (a dead kept-alive connection resends them). */
struct upstream_call {
	struct upstream_pool *pool;
	struct upstream_conn *conn;
	struct evhttp_request *req;
	const struct upstream_ops *ops;
	int got_head;
	int http_error; /* enum evhttp_request_error from the error callback, -1 none */
	int starting;   /* inside upstream_start: completion is reported by its return */
	int sync_done;
	int64_t expires_us;                  /* when the call's evhttp timeout runs out */
	int failed;                          /* ended badly: its connection is closed, not reused */
	int64_t start_us, first_us, last_us; /* for the phase timeouts (upstream_expired) */
	int reused;                          /* conn had served a call before this one */
	int resent;                          /* already resent once on a fresh connection */
	int timeout_ms;
	const char *request_id;
	const void *body;
	size_t len;
	char uri[512];
};

int upstream_pool_init(struct upstream_pool *p, struct event_base *base, struct evdns_base *dns,
		       void *ssl_ctx, const struct endpoint *ep,
		       const struct upstream_pool_config *cfg);
void upstream_pool_free(struct upstream_pool *p);

/* Moves from's idle connections to `to` (same URL, after a reload), as many as fit. */
void upstream_pool_adopt(struct upstream_pool *to, struct upstream_pool *from);

/* Closes idle connections that died or sat idle longer than idle_ms (the janitor's job:
 * never from inside an evhttp callback). */
void upstream_pool_tick(struct upstream_pool *p, int64_t now_us);

/* A new connection to the endpoint (TLS for https, verified); NULL (logged) on failure. */
struct upstream_conn *upstream_conn_new(struct upstream_pool *p);
void upstream_conn_free(struct upstream_conn *c);

/* Builds the SSL_CTX for https endpoints: peer verification against ca_file (NULL:
 * the system store). NULL (logged) on failure. */
void *upstream_ssl_ctx_new(const char *ca_file);
void upstream_ssl_ctx_free(void *ctx);

/* POSTs body to the endpoint's base path + route. timeout_ms bounds connecting and each
 * wait for data (the endpoint's chunk timeout); the other phases are checked by
 * upstream_expired. Returns 0 when the call is under way, -1 when it failed at once (no
 * connection could be started: treat as unreachable; nothing is reported later).
 * request_id and body must stay valid until the call ends. When a kept-alive connection
 * turns out dead before any byte of the answer (the endpoint closed it while idle), the
 * call is resent once on a fresh connection; only that second outcome is reported. */
int upstream_start(struct upstream_call *c, struct upstream_pool *p, const struct upstream_ops *ops,
		   const char *route, const char *request_id, const void *body, size_t len,
		   int timeout_ms);

/* Aborts a call in flight and closes its connection (so the endpoint stops
 * generating); no callback follows. Safe from on_body. */
void upstream_cancel(struct upstream_call *c);
/* Seconds a Retry-After value asks for at `now`: delta-seconds or an IMF-fixdate, capped
 * at RETRY_AFTER_MAX_S, 0 for a date already past; -1 when it is neither. */
#define RETRY_AFTER_MAX_S 3600
int upstream_retry_after(const char *value, time_t now);

/* Which of the endpoint's timeouts a call in flight has exceeded at now: NULL none, else
 * "connect", "first_byte", "between_chunks" or "total". total_cap_us (> 0) further
 * bounds the total (the request deadline). */
const char *upstream_expired(const struct upstream_call *c, int64_t now_us);

#endif
