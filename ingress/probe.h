/* Broker liveness independent of traffic: a thread asks the producer's broker for
 * metadata every interval and publishes the answer, so the loop never blocks on it. */
#ifndef GW_INGRESS_PROBE_H
#define GW_INGRESS_PROBE_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>

/* Owned by struct ingress; the thread borrows rk (which outlives it). */
struct probe {
	rd_kafka_t *rk;
	pthread_t thread;
	int started;
	int interval_ms;
	atomic_int up; /* last probe answered */
	atomic_int stop;
};

int probe_start(struct probe *p, rd_kafka_t *rk, int interval_ms);
/* Read from the loop thread. */
int probe_up(struct probe *p);
void probe_stop(struct probe *p);

#endif
