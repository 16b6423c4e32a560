/* Ingress state shared by its modules: the HTTP front end (front.c), the reply relay
 * (relay.c) and the pending-request table (pending.c). */
#ifndef GW_INGRESS_H
#define GW_INGRESS_H

#include "kafka.h"
#include "metrics.h"
#include "pending.h"
#include "runtime.h"
#include "seal.h"

#include <event2/http.h>

struct ingress_config {
	char listen[256];
	long long request_timeout_s;
	long long max_body;
	long long max_inflight;
	long long reply_partition;
	long long shutdown_grace_ms;
	long long max_json_depth;
};

/* The one ingress object; lives for the whole `ingress serve`. */
struct ingress {
	struct runtime rt;
	struct ingress_config cfg;
	struct kafka_producer producer;
	struct kafka_consumer replies;
	struct evhttp *http;
	struct evhttp_bound_socket *listener;
	struct pending_table pending;
	struct event *janitor;
	unsigned char seal_key[SEAL_KEY_LEN];
	int64_t stop_deadline_ms; /* set once SIGTERM arrived */
	struct metric *m_inflight, *m_latency, *m_late_replies, *m_streams;
};

int front_init(struct ingress *ig);
/* Answers p with a gateway-made error in OpenAI's shape and finishes it. */
void front_fail(struct ingress *ig, struct pending *p, int status, const char *message,
		const char *code, int retry_after_s);
/* Emits request.completed and finishes p (after its answer went out). */
void front_completed(struct ingress *ig, struct pending *p, int status, const char *outcome);
void front_count(struct ingress *ig, const char *route, int status);

int relay_init(struct ingress *ig);
/* Sends any replies held while the request.received audit event was in flight. */
void relay_release_held(struct ingress *ig, struct pending *p);

#endif
