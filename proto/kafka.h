/* librdkafka set up with DESIGN.md's delivery semantics and driven from the libevent
 * loop: each rd_kafka queue wakes the loop through a pipe (rd_kafka_queue_io_event_enable),
 * so every callback (messages, delivery reports, rebalances) runs on the loop thread. */
#ifndef GW_KAFKA_H
#define GW_KAFKA_H

#include <event2/event.h>
#include <librdkafka/rdkafka.h>
#include <stdint.h>

/* Wakes the loop when an rd_kafka queue becomes non-empty. Owned by its producer or
 * consumer; the queue reference is released in kafka_pump_close. */
struct kafka_pump {
	rd_kafka_queue_t *queue;
	int fds[2];
	struct event *ev;    /* read side of fds */
	struct event *timer; /* safety net: polls every 100 ms in case a wakeup is lost */
	struct event *again; /* one-shot: the queue still had events after a batch */
	void (*drain)(void *arg);
	void *arg;
};

/* A caller-owned completion for one produced message; fn runs on the loop thread
 * with the delivery result. The owner must outlive the delivery report. */
struct kafka_done {
	void (*fn)(struct kafka_done *d, rd_kafka_resp_err_t err);
};

struct kafka_producer {
	rd_kafka_t *rk;
	struct kafka_pump pump;
	uint64_t produced, delivered, failed;
	int fatal;     /* set on RD_KAFKA_RESP_ERR__FATAL: the process must restart */
	int broker_up; /* last known: any broker connection up */
};

struct kafka_part;

/* One consumed message's work. Embedded in the stage's own object, which stays
 * alive until release(w) is called. Its offset is stored only after every hold is
 * released, and offsets are stored in order (a low-water mark per partition). */
struct kafka_work {
	struct kafka_part *part;
	uint64_t slot;
	uint32_t generation;
	int holds;
	int failed; /* an output was not acknowledged: the offset is not stored */
	void (*release)(struct kafka_work *w);
};

struct kafka_consumer {
	rd_kafka_t *rk;
	struct kafka_pump pump;
	/* Called for each message; takes ownership (rd_kafka_message_destroy). */
	void (*on_message)(void *arg, rd_kafka_message_t *msg);
	void *arg;
	struct kafka_part **parts; /* trackers, kept until close so work pointers stay valid */
	int nparts, capparts;
	int max_inflight_per_partition;
	int paused_all; /* kafka_consumer_pause: overrides the trackers' own resume */
	int closing;
	uint64_t consumed;
};

/* Broker list and extra librdkafka properties come from GW_KAFKA_BROKERS and
 * GW_KAFKA_PROPERTIES ("key=value;key=value", for SASL/TLS against a real cluster).
 * Returns 0 or -1 (logged, with what to fix). */
int kafka_producer_init(struct kafka_producer *p, struct event_base *base, const char *client_id);

/* Produces one message. hdrs is always taken (destroyed on failure). When w is given
 * it is held until the delivery report; a failed delivery marks w->failed. d (may be
 * NULL) is told the result. partition may be RD_KAFKA_PARTITION_UA (keyed).
 * On a full queue it polls and retries for a short while, then returns
 * RD_KAFKA_RESP_ERR__QUEUE_FULL; delivery callbacks may run during that wait. */
rd_kafka_resp_err_t kafka_produce(struct kafka_producer *p, const char *topic, int32_t partition,
				  const void *key, size_t keylen, const void *value, size_t vlen,
				  rd_kafka_headers_t *hdrs, struct kafka_work *w,
				  struct kafka_done *d);

/* Flushes for up to timeout_ms; logs and returns how many messages were left. */
int kafka_producer_close(struct kafka_producer *p, int timeout_ms);

/* group may be NULL for a consumer that only uses kafka_consumer_assign (it gets a
 * private group id and never commits). fetch_wait_ms
 * comes from the caller (GW_KAFKA_FETCH_WAIT_MS for latency-critical stages). */
int kafka_consumer_init(struct kafka_consumer *c, struct event_base *base, const char *group,
			const char *client_id, int fetch_wait_ms);
int kafka_consumer_subscribe(struct kafka_consumer *c, const char *const *topics, int n);
/* Direct assignment (no group), starting at offset (RD_KAFKA_OFFSET_END etc.). */
int kafka_consumer_assign(struct kafka_consumer *c, const char *topic, const int32_t *partitions,
			  int n, int64_t offset);
/* Pauses (on=1) or resumes (on=0) the whole assignment, for a stage's own
 * backpressure. Composes with the per-partition pause of kafka_work_begin: a
 * partition paused because its tracker is full stays paused until it drains. */
void kafka_consumer_pause(struct kafka_consumer *c, int on);

/* Commits what was stored, closes the consumer and logs the result. Shutdown order:
 * stop taking work, kafka_producer_close (delivery reports release the last work
 * items and store their offsets), then kafka_consumer_close. */
int kafka_consumer_close(struct kafka_consumer *c);

/* Registers msg's work with the partition tracker; holds = 1. If the partition has
 * too much in flight it is paused and rewound to msg, and -1 is returned: the caller
 * drops msg without processing (it will be fetched again). */
int kafka_work_begin(struct kafka_consumer *c, struct kafka_work *w, const rd_kafka_message_t *msg,
		     void (*release)(struct kafka_work *w));
void kafka_work_hold(struct kafka_work *w);
void kafka_work_release(struct kafka_work *w);

/* Copies a header value as a NUL-terminated string; -1 when absent or too long. */
int kafka_header_str(const rd_kafka_message_t *msg, const char *name, char *out, size_t cap);

/* Total consumer lag across its assignment (high watermark - position), -1 unknown. */
int64_t kafka_consumer_lag(struct kafka_consumer *c);

#endif
