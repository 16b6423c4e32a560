/* The compliance API on the auditor's admin port: GET /audit/events and
 * GET /audit/report, behind their own API key (GW_AUDIT_API_KEY_FILE). Queries run
 * asynchronously on connections of their own, so ingest never waits for them. */
#ifndef GW_API_H
#define GW_API_H

#include "filter.h"
#include "metrics.h"
#include "runtime.h"

#include <event2/event_struct.h>
#include <event2/http.h>
#include <libpq-fe.h>
#include <stdint.h>

enum api_slot_state {
	API_SLOT_CLOSED,     /* no connection */
	API_SLOT_IDLE,       /* connected, no query */
	API_SLOT_CONNECTING, /* PQconnectPoll in progress, a query staged */
	API_SLOT_BUSY,       /* a query sent, its result not all read */
};

enum api_query_kind { API_EVENTS, API_REPORT };

#define API_BY_MAX 16 /* a report grouping: principal, model, endpoint, day */

/* One concurrent query: a connection and the request it serves. Owned by struct api. */
struct api_slot {
	struct api *a;   /* back pointer */
	PGconn *conn;    /* owned; opened on demand, closed after a failure */
	struct event ev; /* on PQsocket(conn) while connecting or busy */
	int ev_assigned; /* ev has been event_assign'ed (event_del is then safe) */
	enum api_slot_state state;
	enum api_query_kind kind;
	/* Borrowed from evhttp while unanswered; NULL once answered or the client left
	 * (the query then runs out and its result is dropped). */
	struct evhttp_request *req;
	PGresult *res;       /* owned: the statement's result until answered */
	int64_t deadline_us; /* of the current connect or query */
	int reused;          /* the query went out on a connection kept from before */
	char by[API_BY_MAX]; /* report: the grouping */
	/* The staged statement: copied, so it outlives the handler's query string. */
	char sql[FILTER_SQL_MAX];
	char *pbuf; /* owned: the parameters' text, NUL-separated */
	const char *params[FILTER_PARAMS_MAX];
	int nparams;
};

/* One per `auditor serve`, owned by main. */
struct api {
	struct runtime *rt;        /* borrowed */
	unsigned char key_sha[32]; /* SHA-256 of the API key: compared in constant time */
	char *url;                 /* owned; a credential, never logged */
	long long timeout_ms;      /* GW_AUDIT_API_TIMEOUT_MS: each query's statement_timeout */
	long long max_queries;     /* GW_AUDIT_API_MAX_QUERIES: slots, hence connections */
	struct api_slot *slots;    /* owned, max_queries of them */
	struct metric *m_running, *m_ok, *m_rejected, *m_failed;
	int enabled;
};

/* Reads GW_AUDIT_API_KEY[_FILE], GW_AUDIT_API_DATABASE_URL[_FILE] (default: the
 * writer's GW_DATABASE_URL), GW_AUDIT_API_TIMEOUT_MS and GW_AUDIT_API_MAX_QUERIES, and
 * adds the routes to the admin listener. Without a key the routes are not served (404).
 * 0 or -1 (logged). */
int api_init(struct api *a, struct runtime *rt);
/* Closes the connections; requests still waiting are left to evhttp, which frees
 * them with the listener. */
void api_free(struct api *a);

#endif
