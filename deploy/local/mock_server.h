/* The mock compute endpoint's HTTP side: OpenAI routes on evhttp, delayed and
 * streamed answers driven by timers, and a graceful stop that ends open streams. */
#ifndef GW_MOCK_SERVER_H
#define GW_MOCK_SERVER_H

#include "mock_config.h"
#include "mock_gen.h"

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <stdint.h>

struct mock_server;

enum mock_call_kind { CALL_COMPLETION, CALL_STREAM, CALL_EMBEDDINGS, CALL_FAIL };

/* One request answered later: after GW_MOCK_LATENCY_MS, or streamed token by token.
 * Owned by the server (taken from and returned to its free list); req belongs to
 * evhttp and is borrowed until the reply ends or the connection closes. */
struct mock_call {
	struct event timer; /* latency, then the gap between stream chunks */
	struct mock_server *srv;
	struct mock_call *prev, *next; /* the server's live list, or its free list */
	struct evhttp_request *req;
	enum mock_call_kind kind;
	struct mock_answer answer;
	uint64_t rng;        /* stream: PRNG state after the tokens sent so far */
	unsigned long sent;  /* stream: token chunks sent */
	unsigned long items; /* embeddings: vectors to return */
	int started;         /* stream: status line and headers sent */
};

/* What reached the endpoint, for tests (GET /mock/stats). */
struct mock_stats {
	unsigned long long requests;  /* POSTs to the three completion/embedding routes */
	unsigned long long streams;   /* streamed answers begun */
	unsigned long long cancelled; /* clients gone before their answer ended */
	unsigned long long failed;    /* injected 503s (GW_MOCK_FAIL_RATE) */
	unsigned long long rejected;  /* 4xx answers and overload 503s on those routes */
};

/* Embedded in main's frame. Owns http, scratch and every mock_call; cfg is borrowed
 * and must outlive the server. */
struct mock_server {
	struct event_base *base;
	const struct mock_config *cfg;
	struct evhttp *http;
	struct evhttp_bound_socket *listener;
	struct evbuffer *scratch; /* reply bodies are built here, then moved to evhttp */
	struct mock_call *live;   /* calls waiting on their timer */
	struct mock_call *spare;  /* released calls kept for reuse (bounded) */
	long long nlive, nspare;
	unsigned long fail_acc; /* ppm accumulator: exact, repeatable failure sequence */
	long long writing;      /* replies handed to evhttp and not yet fully written */
	struct mock_stats stats;
	/* Stop: waits for writing to reach 0 (bounded), then calls stopped(arg). */
	struct event drain;
	int drain_set; /* drain is assigned */
	int stopping;
	int drain_ticks;
	void (*stopped)(void *arg);
	void *stopped_arg;
};

/* Binds cfg->listen and installs the routes. Returns 0, or -1 (logged). */
int mock_server_start(struct mock_server *s, struct event_base *base,
		      const struct mock_config *cfg);
/* Stops accepting, answers every waiting call now (streams are finished at once),
 * and calls stopped(arg) once the replies are written or after a short bound. */
void mock_server_stop(struct mock_server *s, void (*stopped)(void *arg), void *arg);
void mock_server_free(struct mock_server *s);

#endif
