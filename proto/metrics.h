/* Prometheus text-format metrics. Single-threaded: touch only from the loop thread. */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <event2/buffer.h>
#include <stddef.h>

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

/* Registry-owned; lives until metrics_free. labels is the inside of {...}, e.g.
 * route="/v1/chat/completions",code="200", or NULL. */
struct metric;

/* Finds or creates the series (name, labels). Returns NULL only on allocation failure
 * (logged). Names are prefixed by the caller (gw_...). */
struct metric *metric_get(enum metric_type type, const char *name, const char *labels,
			  const char *help);
void metric_add(struct metric *m, double v);
void metric_set(struct metric *m, double v);
/* Histogram of seconds with fixed buckets from 0.5 ms to 120 s. */
void metric_observe(struct metric *m, double seconds);
/* A gauge whose value is computed at scrape time. */
struct metric *metric_gauge_fn(const char *name, const char *labels, const char *help,
			       double (*fn)(void *arg), void *arg);
void metrics_render(struct evbuffer *out);
void metrics_free(void);

#endif
