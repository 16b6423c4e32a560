/* What flows back from one request: its gw.replies messages (whole or streamed, the
 * endpoint's bytes untouched), its gw.usage message and its dispatch.result audit
 * event, each produced with the request's kafka_work so the input offset is stored
 * only once all of them are acknowledged. */
#ifndef GW_DISPATCHER_RELAY_H
#define GW_DISPATCHER_RELAY_H

#include "audit.h"
#include "coalesce.h"
#include "kafka.h"
#include "sse.h"
#include "usage.h"

#include <event2/buffer.h>
#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

/* Largest value of one streamed gw.replies message; bigger arrivals are split. */
#define RELAY_CHUNK_MAX (256 * 1024)

struct relay;
TAILQ_HEAD(relay_held, relay);

/* The one timer that sends held stream bytes when their coalescing window ends. Owned by
 * the dispatcher (ev is freed by relay_flusher_free); relays holding bytes are linked in
 * (borrowed: a relay unlinks itself when it flushes, ends or is freed). */
struct relay_flusher {
	struct event *ev;
	struct relay_held held;
	int64_t armed_us;                      /* when ev fires; 0: not armed */
	int window_ms;                         /* coalescing window of new streams; 0: off */
	size_t max;                            /* largest coalesced message */
	unsigned long long messages, arrivals; /* streamed messages produced, arrivals taken */
};

int relay_flusher_init(struct relay_flusher *f, struct event_base *base, int window_ms, size_t max);
void relay_flusher_free(struct relay_flusher *f);

/* Embedded in its request. body, sha, sse.line and co.held are owned and released by
 * relay_free; id, w and fl are borrowed from the request and the dispatcher. */
struct relay {
	struct kafka_producer *p;
	struct kafka_work *w;
	const char *id;
	int32_t partition;
	size_t max_body;
	size_t sse_line_max;
	int want_stream;   /* the client asked for a stream (gw-stream 1) */
	int streaming;     /* the endpoint streams: chunks are relayed as they arrive */
	int status;        /* HTTP status given to the client (0 until known) */
	int retry_after_s; /* > 0: gw-retry-after on the first reply, retry_after_s in errors */
	char ctype[128];
	int32_t seq; /* next gw-seq */
	int final_sent;
	int failed;            /* relaying broke: not produced, or out of memory */
	struct evbuffer *body; /* the non-streamed answer being collected */
	EVP_MD_CTX *sha;
	long long size;
	struct sse_usage sse;
	int sse_on;
	int have_usage;
	struct usage usage;
	char sha_hex[65];
	struct relay_flusher *fl;
	struct coalesce co;
	int co_on;
	int on_held; /* linked in fl->held */
	TAILQ_ENTRY(relay) held_link;
};

int relay_init(struct relay *r, struct kafka_producer *p, struct kafka_work *w, const char *id,
	       int32_t partition, int want_stream, size_t max_body, size_t sse_line_max,
	       struct relay_flusher *fl);

/* The request ends without (more) replies (cancelled, or done): held bytes are dropped
 * and the relay leaves the flusher. */
void relay_close(struct relay *r);

/* The endpoint's status line and content type arrived: decides whether to stream. */
void relay_head(struct relay *r, int status, const char *ctype);

/* Consumes buf. Returns -1 when a non-streamed answer outgrows max_body (nothing has been
 * relayed; the caller answers with an error), -2 when a stream carries a data line that
 * is not JSON (broken SSE; the bad bytes are not relayed). */
int relay_body(struct relay *r, struct evbuffer *buf);

/* The endpoint's answer is complete: sends it whole (a 4xx not in OpenAI's error shape
 * is wrapped into it), or ends the stream. Returns -1 without sending anything when a
 * 2xx JSON answer is not valid JSON: the caller answers 502. */
int relay_finish(struct relay *r);

/* Forgets a collected answer before anything was relayed, for a retry. */
void relay_reset(struct relay *r);

/* Answers with a gateway error (openai_error_json with the request id); once a stream
 * has started, as an SSE error event ending the stream instead. */
void relay_error(struct relay *r, int status, const char *message, const char *code);

/* True once any gw.replies message has been produced. */
int relay_started(const struct relay *r);

/* What one finished request sends to authz on gw.usage (key = hint). */
struct usage_report {
	const char *id, *hint, *principal, *model, *endpoint; /* endpoint may be NULL */
	const char *outcome;                                  /* ok, error, expired, cancelled */
	int status;                                           /* given to the client; 0 when none */
	struct usage tokens;                                  /* zeros when unknown */
	long long ttft_us, latency_us;                        /* -1 when unknown */
};

/* Produces the gw.usage message, held on w. -1 (logged, w marked failed) on failure. */
int relay_usage_emit(struct kafka_producer *p, struct kafka_work *w, const struct usage_report *u);

/* Fills the response digest, size and tokens into ev (the strings point into r). */
void relay_fill_audit(struct relay *r, struct audit_event *ev);

void relay_free(struct relay *r);

#endif
