/* One non-blocking PostgreSQL connection driven by the libevent loop: a dead or slow
 * database must never stall request handling, so the refresh and the usage flush run
 * here instead of through blocking libpq calls. One query at a time; it reconnects on
 * demand and gives up on a connect or query that outlives its timeout. */
#ifndef GW_AUTHZ_PGCONN_H
#define GW_AUTHZ_PGCONN_H

#include <event2/event.h>
#include <event2/event_struct.h>
#include <libpq-fe.h>
#include <stdint.h>

#define PGCONN_MAX_PARAMS 4

/* res is the query's result (freed by pgconn after the call) when it succeeded, else
 * NULL and error says why (libpq's message: it never contains our parameters). */
typedef void (*pgconn_done_fn)(void *arg, PGresult *res, const char *error);

enum pgconn_state { PGCONN_DOWN, PGCONN_CONNECTING, PGCONN_IDLE, PGCONN_QUERYING };

/* Owned by the service; owns conn, url, the parameter copies and both events. */
struct pgconn {
	struct event_base *base;
	char *url; /* may hold a password: never logged */
	const char *service;
	int timeout_ms;
	PGconn *conn;
	enum pgconn_state state;
	struct event io;    /* readiness of the socket; assigned per wait */
	struct event defer; /* reports a failure found before any I/O from the loop */
	int io_added, defer_added;
	int in_call; /* inside pgconn_query: failures are reported via defer */
	int busy;    /* a query was accepted and done has not run yet */
	int64_t deadline_ms;
	const char *sql; /* static SQL text */
	int nparams;
	char *params[PGCONN_MAX_PARAMS];
	PGresult *result;
	char error[256];
	pgconn_done_fn done;
	void *arg;
};

/* url is copied. */
int pgconn_init(struct pgconn *pc, struct event_base *base, const char *url, const char *service,
		int timeout_ms);
/* Takes over an established connection (the one the start-up load used). */
int pgconn_adopt(struct pgconn *pc, PGconn *conn);
/* Queues sql (static text) with params (copied); connects first when down. done always
 * runs later from the loop, exactly once. Returns -1 only when a query is already under
 * way or memory runs out (done will not run). */
int pgconn_query(struct pgconn *pc, const char *sql, int nparams, const char *const *params,
		 pgconn_done_fn done, void *arg);
/* Fails a connect or query that outlived timeout_ms. Call from the janitor. */
void pgconn_tick(struct pgconn *pc, int64_t now_ms);
/* Closes the connection; a query under way is abandoned without calling done. */
void pgconn_close(struct pgconn *pc);

#endif
