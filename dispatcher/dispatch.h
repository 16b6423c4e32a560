/* The dispatcher stage: consumes gw.authorized, sends each request to an endpoint and
 * relays the answer, with bounded work in flight (consumer paused when full), per
 * endpoint concurrency limits with bounded waiting queues, de-duplication of
 * redelivered requests and a graceful drain on stop. */
#ifndef GW_DISPATCHER_DISPATCH_H
#define GW_DISPATCHER_DISPATCH_H

#include "dedup.h"
#include "kafka.h"
#include "metrics.h"
#include "registry.h"
#include "runtime.h"
#include "upstream.h"

#include <event2/dns.h>
#include <sys/queue.h>

/* Settings, read from the environment by dispatch_config_load. */
struct dispatch_config {
	char endpoints_file[512];
	char group[128];
	int fetch_wait_ms;
	int max_inflight; /* requests held at once; the consumer pauses at this many */
	int dedup;        /* ids remembered */
	int max_response; /* bytes of one non-streamed answer */
	int queue_max;    /* requests waiting per endpoint */
	int drain_ms;
	int sse_line_max;
};

struct dreq;
struct part_live;
TAILQ_HEAD(dreq_list, dreq);

/* Requests waiting for a free slot at one endpoint, oldest first. */
struct ep_queue {
	struct dreq_list q;
	int n;
};

/* The whole stage. Owned by main; everything inside is released by dispatch_free. */
struct dispatcher {
	struct runtime *rt; /* borrowed */
	struct event_base *base;
	struct dispatch_config cfg;
	struct registry reg;
	struct evdns_base *dns;
	struct upstream_pool *pools; /* one per endpoint, reg.n */
	struct ep_queue *queues;     /* one per endpoint, reg.n */
	struct kafka_producer producer;
	struct kafka_consumer consumer;
	struct dedup dedup;
	struct part_live **parts; /* per gw.authorized partition seen; array and entries owned */
	int nparts, capparts;
	struct dreq_list active; /* requests before the end of their upstream phase */
	int nactive;
	int nwaiting; /* of which in an endpoint queue */
	int live;     /* requests allocated (until their outputs are acknowledged) */
	int calls;    /* upstream calls in flight */
	int paused;
	int loaded, subscribed;
	int stopping;
	int64_t drain_deadline_us;
	struct event *janitor; /* one periodic timer: deadlines, drain */
	struct event *pump;    /* deferred start of queued requests */
	struct metric *m_upstream, *m_ttft;
};

/* Reads GW_DISPATCHER_* and related settings; -1 (logged) on a bad value. */
int dispatch_config_load(struct dispatch_config *cfg);

/* Loads the registry, connects to Kafka and subscribes. Returns -1 (logged with what to
 * fix) on failure; dispatch_free still has to be called. */
int dispatch_init(struct dispatcher *d, struct runtime *rt, const struct dispatch_config *cfg);

/* Final flush and close after the loop has ended; then frees everything. */
void dispatch_free(struct dispatcher *d);

#endif
