/* An endpoint as the running dispatcher sees it: its configuration, connection pool,
 * circuit breaker, active health check, load and waiting queue. Reference counted so
 * a reload (SIGHUP) can replace the registry while old calls finish on old objects. */
#ifndef GW_DISPATCHER_BACKEND_H
#define GW_DISPATCHER_BACKEND_H

#include "breaker.h"
#include "metrics.h"
#include "registry.h"
#include "upstream.h"

#include <event2/http.h>
#include <stdint.h>
#include <sys/queue.h>

struct dreq;
TAILQ_HEAD(dreq_queue, dreq);

struct backend;

/* Health check results go back to the dispatcher (breaker, logs, audit). */
typedef void (*backend_health_fn)(struct backend *b, int ok, const char *why, void *arg);

/* Ownership: the dispatcher's live list holds one reference while the endpoint is in
 * the registry; a reload moves that reference to the dispatcher's retired list. Every
 * request bound to the backend (waiting in its queue, calling it, or holding a probe slot)
 * holds one more, and every upstream_call in flight points into b->pool and b->ep, so the
 * object outlives its calls. backend_unref frees it when the count reaches 0; the
 * dispatcher drops a retired backend's last list reference only from its janitor, so the
 * free never happens inside an evhttp callback of one of its own connections.
 * ep's models and api_key are owned (moved from a registry); live_models is malloc'd;
 * hconn is owned. */
struct backend {
	struct endpoint ep;
	struct upstream_pool pool;
	struct breaker br;
	int refs;                /* 1 while in the live list, +1 per request bound to it */
	int retired;             /* no longer in the registry: finishing its calls only */
	struct dreq_queue queue; /* requests waiting for a free slot, oldest first */
	int nqueue;
	/* Active health check: GET /v1/models on a connection of its own. */
	struct upstream_conn *hconn;
	struct evhttp_request *hreq;
	backend_health_fn health_fn;
	void *health_arg;
	int64_t next_check_us;
	int health_ok; /* -1 not checked yet, 0 failing, 1 passing */
	char health_why[128];
	char **live_models; /* what GET /v1/models listed last (live_known) */
	int nlive, live_known;
	int64_t busy_until_us; /* after a 429 with Retry-After: avoided until then */
	unsigned long long requests, failures;
	int64_t last_ok_us, last_fail_us;
};

/* Takes ownership of ep's allocations (ep is left empty). NULL (logged) on failure. */
struct backend *backend_new(struct event_base *base, struct evdns_base *dns, void *ssl_ctx,
			    const struct upstream_pool_config *pc, struct endpoint *ep,
			    int64_t now_us);

/* Out of the registry after a reload: no more health checks or reports; its calls in
 * flight finish. */
void backend_retire(struct backend *b);
void backend_ref(struct backend *b);
void backend_unref(struct backend *b);

/* Calls in flight plus requests waiting. */
static inline int backend_outstanding(const struct backend *b)
{
	return b->pool.inflight + b->nqueue;
}

/* Configured for model and, once a health check listed the endpoint's models, listed. */
int backend_serves(const struct backend *b, const char *model);

/* Starts a health check when one is due and none runs; timeout_ms bounds it. */
void backend_health_tick(struct backend *b, int64_t now_us, int interval_ms, int timeout_ms);

#endif
