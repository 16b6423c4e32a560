/* Non-blocking libpq on the event loop: PQconnectStartParams/PQconnectPoll, then
 * PQsendQueryParams/PQflush/PQconsumeInput, each step waiting on the socket. */
#include "pgconn.h"
#include "log.h"
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_io(evutil_socket_t fd, short what, void *arg);

static void clear_params(struct pgconn *pc)
{
	for (int i = 0; i < pc->nparams; i++) {
		free(pc->params[i]);
		pc->params[i] = NULL;
	}
	pc->nparams = 0;
}

/* libpq messages span lines and end in a newline; keep log lines single-line. */
static void tidy_error(char *e)
{
	for (char *p = e; *p; p++)
		if (*p == '\n' || *p == '\t')
			*p = ' ';
	size_t n = strlen(e);
	while (n && e[n - 1] == ' ')
		e[--n] = 0;
}

static void io_stop(struct pgconn *pc)
{
	if (pc->io_added)
		event_del(&pc->io);
	pc->io_added = 0;
}

/* The socket may change while connecting (several hosts), so the event is re-assigned
 * for every wait. */
static int io_wait(struct pgconn *pc, short what)
{
	io_stop(pc);
	int fd = PQsocket(pc->conn);
	if (fd < 0) {
		snprintf(pc->error, sizeof pc->error, "no socket");
		return -1;
	}
	if (event_assign(&pc->io, pc->base, fd, what, on_io, pc) != 0 ||
	    event_add(&pc->io, NULL) != 0) {
		snprintf(pc->error, sizeof pc->error, "cannot watch the database socket");
		return -1;
	}
	pc->io_added = 1;
	return 0;
}

static void finish(struct pgconn *pc, PGresult *res, const char *error)
{
	pgconn_done_fn done = pc->done;
	void *arg = pc->arg;
	pc->busy = 0;
	pc->done = NULL;
	clear_params(pc);
	/* done may queue the next query at once. */
	if (done)
		done(arg, res, error);
	PQclear(res);
}

/* Drops the connection and reports pc->error; from inside pgconn_query the report goes
 * through the loop so done never runs within its caller's call. */
static void fail(struct pgconn *pc)
{
	io_stop(pc);
	if (pc->conn)
		PQfinish(pc->conn);
	pc->conn = NULL;
	pc->state = PGCONN_DOWN;
	PQclear(pc->result);
	pc->result = NULL;
	tidy_error(pc->error);
	if (pc->in_call) {
		event_active(&pc->defer, EV_TIMEOUT, 0);
		pc->defer_added = 1;
		return;
	}
	finish(pc, NULL, pc->error);
}

static void set_error(struct pgconn *pc, const char *what)
{
	const char *detail = pc->conn ? PQerrorMessage(pc->conn) : "";
	snprintf(pc->error, sizeof pc->error, "%s%s%s", what, *detail ? ": " : "", detail);
}

static void on_defer(evutil_socket_t fd, short what, void *arg)
{
	struct pgconn *pc = arg;
	pc->defer_added = 0;
	finish(pc, NULL, pc->error);
}

static void send_query(struct pgconn *pc)
{
	pc->state = PGCONN_QUERYING;
	if (!PQsendQueryParams(pc->conn, pc->sql, pc->nparams, NULL,
			       (const char *const *)pc->params, NULL, NULL, 0)) {
		set_error(pc, "cannot send query");
		fail(pc);
		return;
	}
	int f = PQflush(pc->conn);
	if (f < 0) {
		set_error(pc, "cannot send query");
		fail(pc);
		return;
	}
	if (io_wait(pc, f == 1 ? EV_READ | EV_WRITE : EV_READ) != 0)
		fail(pc);
}

static void on_connect_progress(struct pgconn *pc)
{
	switch (PQconnectPoll(pc->conn)) {
	case PGRES_POLLING_READING:
		if (io_wait(pc, EV_READ) != 0)
			fail(pc);
		return;
	case PGRES_POLLING_WRITING:
		if (io_wait(pc, EV_WRITE) != 0)
			fail(pc);
		return;
	case PGRES_POLLING_OK:
		io_stop(pc);
		if (PQsetnonblocking(pc->conn, 1) != 0) {
			set_error(pc, "cannot make the connection non-blocking");
			fail(pc);
			return;
		}
		send_query(pc);
		return;
	default:
		set_error(pc, "cannot connect to PostgreSQL");
		fail(pc);
		return;
	}
}

static void on_query_progress(struct pgconn *pc, short what)
{
	if (what & EV_WRITE) {
		int f = PQflush(pc->conn);
		if (f < 0) {
			set_error(pc, "cannot send query");
			fail(pc);
			return;
		}
		if (f == 1 && !(what & EV_READ)) {
			if (io_wait(pc, EV_READ | EV_WRITE) != 0)
				fail(pc);
			return;
		}
	}
	if ((what & EV_READ) && !PQconsumeInput(pc->conn)) {
		set_error(pc, "connection to PostgreSQL lost");
		fail(pc);
		return;
	}
	while (!PQisBusy(pc->conn)) {
		PGresult *r = PQgetResult(pc->conn);
		if (!r) {
			/* The query is complete. */
			io_stop(pc);
			PGresult *res = pc->result;
			pc->result = NULL;
			pc->state = PGCONN_IDLE;
			ExecStatusType st = PQresultStatus(res);
			if (res && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)) {
				finish(pc, res, NULL);
			} else {
				snprintf(pc->error, sizeof pc->error, "%s",
					 res ? PQresultErrorMessage(res) : "no result");
				tidy_error(pc->error);
				finish(pc, NULL, pc->error);
				PQclear(res);
			}
			return;
		}
		/* Keep the first result, or the first error. */
		ExecStatusType st = PQresultStatus(r);
		int is_error = st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK;
		ExecStatusType kept = PQresultStatus(pc->result);
		if (!pc->result ||
		    (is_error && (kept == PGRES_COMMAND_OK || kept == PGRES_TUPLES_OK))) {
			PQclear(pc->result);
			pc->result = r;
		} else {
			PQclear(r);
		}
	}
	int f = PQflush(pc->conn);
	if (f < 0 || io_wait(pc, f == 1 ? EV_READ | EV_WRITE : EV_READ) != 0) {
		set_error(pc, "cannot send query");
		fail(pc);
	}
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
	struct pgconn *pc = arg;
	pc->io_added = 0; /* one-shot */
	if (pc->state == PGCONN_CONNECTING)
		on_connect_progress(pc);
	else if (pc->state == PGCONN_QUERYING)
		on_query_progress(pc, what);
	else if (pc->conn && !PQconsumeInput(pc->conn))
		fail(pc);
}

int pgconn_init(struct pgconn *pc, struct event_base *base, const char *url, const char *service,
		int timeout_ms)
{
	memset(pc, 0, sizeof *pc);
	pc->base = base;
	pc->service = service;
	pc->timeout_ms = timeout_ms;
	pc->state = PGCONN_DOWN;
	pc->url = strdup(url);
	if (!pc->url || event_assign(&pc->defer, base, -1, 0, on_defer, pc) != 0) {
		log_error("cannot set up the database connection");
		free(pc->url);
		pc->url = NULL;
		return -1;
	}
	return 0;
}

int pgconn_adopt(struct pgconn *pc, PGconn *conn)
{
	if (PQsetnonblocking(conn, 1) != 0) {
		log_error("cannot make the database connection non-blocking",
			  LS("error", PQerrorMessage(conn)));
		PQfinish(conn);
		return -1;
	}
	pc->conn = conn;
	pc->state = PGCONN_IDLE;
	return 0;
}

static void start_connect(struct pgconn *pc)
{
	char timeout[16];
	/* libpq's connect_timeout is in whole seconds, at least 2. */
	snprintf(timeout, sizeof timeout, "%d", pc->timeout_ms < 2000 ? 2 : pc->timeout_ms / 1000);
	const char *keys[] = {"dbname", "application_name", "connect_timeout", NULL};
	const char *vals[] = {pc->url, pc->service, timeout, NULL};
	pc->conn = PQconnectStartParams(keys, vals, 1);
	if (!pc->conn || PQstatus(pc->conn) == CONNECTION_BAD) {
		set_error(pc, "cannot connect to PostgreSQL");
		fail(pc);
		return;
	}
	pc->state = PGCONN_CONNECTING;
	/* PQconnectPoll starts as if the socket had become writable. */
	on_connect_progress(pc);
}

int pgconn_query(struct pgconn *pc, const char *sql, int nparams, const char *const *params,
		 pgconn_done_fn done, void *arg)
{
	if (pc->busy || nparams > PGCONN_MAX_PARAMS)
		return -1;
	for (int i = 0; i < nparams; i++) {
		pc->params[i] = strdup(params[i]);
		if (!pc->params[i]) {
			pc->nparams = i;
			clear_params(pc);
			return -1;
		}
	}
	pc->nparams = nparams;
	pc->sql = sql;
	pc->done = done;
	pc->arg = arg;
	pc->busy = 1;
	pc->error[0] = 0;
	pc->deadline_ms = wire_now_ms() + pc->timeout_ms;
	pc->in_call = 1;
	if (pc->state == PGCONN_DOWN)
		start_connect(pc);
	else
		send_query(pc);
	pc->in_call = 0;
	return 0;
}

void pgconn_tick(struct pgconn *pc, int64_t now_ms)
{
	if (!pc->busy || pc->defer_added || now_ms < pc->deadline_ms)
		return;
	snprintf(pc->error, sizeof pc->error, "%s timed out after %d ms",
		 pc->state == PGCONN_CONNECTING ? "connect" : "query", pc->timeout_ms);
	fail(pc);
}

void pgconn_close(struct pgconn *pc)
{
	io_stop(pc);
	if (pc->defer_added)
		event_del(&pc->defer);
	pc->defer_added = 0;
	if (pc->conn)
		PQfinish(pc->conn);
	pc->conn = NULL;
	PQclear(pc->result);
	pc->result = NULL;
	clear_params(pc);
	pc->busy = 0;
	pc->done = NULL;
	pc->state = PGCONN_DOWN;
	free(pc->url);
	pc->url = NULL;
}
