/* The dispatcher stage: consumes gw.authorized, routes each request to an endpoint
 * (least outstanding relative to capacity, circuit breakers, retries with backoff to
 * another endpoint) and relays the answer, with bounded work in flight (consumer paused
 * when full), per-endpoint concurrency limits with bounded waiting queues, cancels,
 * de-duplication of redelivered requests, registry reload on SIGHUP and a graceful
 * drain on stop. */
#ifndef GW_DISPATCHER_DISPATCH_H
#define GW_DISPATCHER_DISPATCH_H

#include "backend.h"
#include "breaker.h"
#include "dedup.h"
#include "kafka.h"
#include "metrics.h"
#include "registry.h"
#include "relay.h"
#include "runtime.h"

#include <event2/dns.h>
#include <sys/queue.h>

#define DISPATCH_MAX_ATTEMPTS 10

/* Settings, read from the environment by dispatch_config_load. */
struct dispatch_config {
	char endpoints_file[512];
	char group[128];
	char ca_file[512]; /* "" = the system store */
	int fetch_wait_ms;
	int max_inflight;  /* requests held at once; the consumer pauses at this many */
	int dedup;         /* ids remembered */
	int cancel_memory; /* cancelled ids remembered */
	int max_response;  /* bytes of one non-streamed answer */
	int queue_max;     /* requests waiting per endpoint */
	int drain_ms;
	int sse_line_max;
	int max_attempts;
	int retry_base_ms, retry_max_ms;
	int health_interval_ms, health_timeout_ms;
	int saturated_status; /* 429 or 503 when every endpoint is full */
	struct breaker_config cb;
	struct upstream_pool_config pool;
	int coalesce_ms;    /* stream coalescing window; 0 off */
	int coalesce_bytes; /* largest coalesced message */
};

struct dreq;
TAILQ_HEAD(dreq_list, dreq);

/* The whole stage. Owned by main; everything inside is released by dispatch_free. */
struct dispatcher {
	struct runtime *rt; /* borrowed */
	struct event_base *base;
	struct dispatch_config cfg;
	struct evdns_base *dns;
	void *ssl_ctx;       /* SSL_CTX for https endpoints */
	struct backend **bs; /* the live registry; each holds one reference from here */
	int nb;
	/* Backends a reload removed or replaced while requests still held them; each holds
	 * one reference from here, dropped by the janitor once it is the last one. */
	struct backend **retired;
	int nretired, retired_cap;
	struct kafka_producer producer;
	struct kafka_consumer consumer;
	struct dedup dedup;
	struct dedup cancelled;  /* ids cancelled: a request arriving later is not sent */
	struct dreq_list active; /* requests before the end of their upstream phase */
	int nactive;
	int nwaiting; /* of which in an endpoint queue */
	int live;     /* requests allocated (until their outputs are acknowledged) */
	int calls;    /* upstream calls in flight */
	int paused;
	int loaded, subscribed;
	int stopping;
	unsigned rr;
	int64_t started_s;
	int64_t drain_deadline_us;
	struct event *janitor; /* one periodic timer: deadlines, phase timeouts, health, drain */
	struct event *pump;    /* deferred start of queued requests */
	struct event *retry;   /* the earliest retry after backoff */
	struct relay_flusher flusher; /* the timer sending coalesced stream bytes */
	struct metric *m_upstream, *m_ttft, *m_retries, *m_cancelled;
};

/* Reads GW_DISPATCHER_* and related settings; -1 (logged) on a bad value. */
int dispatch_config_load(struct dispatch_config *cfg);

/* Loads the registry, connects to Kafka and subscribes. Returns -1 (logged with what to
 * fix) on failure; dispatch_free still has to be called. */
int dispatch_init(struct dispatcher *d, struct runtime *rt, const struct dispatch_config *cfg);

/* Re-reads GW_ENDPOINTS_FILE (SIGHUP). A bad file keeps the current registry. */
int dispatch_reload(struct dispatcher *d);

/* Final flush and close after the loop has ended; then frees everything. */
void dispatch_free(struct dispatcher *d);

#endif
