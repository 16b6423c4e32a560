/* Ingress state shared by its modules: the HTTP front end (front.c), the connection
 * layer (conn.c), the reply relay (relay.c), the pending-request table (pending.c) and
 * the broker probe (probe.c). */
#ifndef GW_INGRESS_H
#define GW_INGRESS_H

#include "conn.h"
#include "kafka.h"
#include "metrics.h"
#include "pending.h"
#include "probe.h"
#include "runtime.h"
#include "seal.h"

#include <event2/http.h>
#include <openssl/ssl.h>

/* Settings, read once at start (docs/ingress.md lists them). */
struct ingress_config {
	char listen[256];
	long long request_timeout_s;
	long long max_body;
	long long max_inflight;
	long long reply_partition;
	long long shutdown_grace_ms;
	long long max_json_depth;
	long long max_header_bytes;
	long long max_headers;
	long long header_timeout_ms;
	long long body_timeout_ms;
	long long keepalive_ms;
	long long max_conns;
	long long max_conns_per_ip;
	long long max_stream_buffer;
	long long hsts_max_age;
	long long probe_interval_ms;
	char tls_cert[1024];
	char tls_key[1024];
	char cors_origins[4096]; /* comma list, exact matches */
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
	struct conn_table conns;
	struct probe probe;
	SSL_CTX *tls; /* NULL: plain HTTP; replaced on SIGHUP */
	struct event *janitor;
	unsigned ticks;
	unsigned char seal_key[SEAL_KEY_LEN];
	int64_t stop_deadline_ms; /* set once SIGTERM arrived */
	struct metric *m_inflight, *m_latency, *m_late_replies, *m_streams, *m_cancels;
};

int front_init(struct ingress *ig);
/* Adds the headers every answer carries (request id, nosniff, no-store, HSTS under
 * TLS, CORS for an allowed Origin). */
void front_headers(struct ingress *ig, struct evhttp_request *req, const char *id);
/* Answers p with a gateway-made error in OpenAI's shape and finishes it. */
void front_fail(struct ingress *ig, struct pending *p, int status, const char *message,
		const char *code, int retry_after_s);
/* Emits request.completed and finishes p (after its answer went out). */
void front_completed(struct ingress *ig, struct pending *p, int status, const char *outcome);
/* The client left before its answer ended: cancels upstream and finishes p. */
void front_client_gone(struct ingress *ig, struct pending *p, const char *why);
void front_count(struct ingress *ig, const char *route, int status);

int relay_init(struct ingress *ig);
/* Sends any replies held while the request.received audit event was in flight. */
void relay_release_held(struct ingress *ig, struct pending *p);

#endif
