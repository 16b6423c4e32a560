/* Loop-driven libpq: PQconnectStartParams/PQconnectPoll, then PQsendQuery with
 * PQconsumeInput/PQisBusy on socket readiness, so a slow count(*) or a dead server never
 * blocks /health or the Kafka client. */
#include "pgq.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>

static long long now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

void pgq_fold(char *dst, size_t cap, const char *src)
{
	size_t n = 0;
	for (const char *c = src; *c && n + 1 < cap; c++) {
		char ch = (*c == '\n' || *c == '\r' || *c == '\t') ? ' ' : *c;
		if (ch == ' ' && (n == 0 || dst[n - 1] == ' '))
			continue;
		dst[n++] = ch;
	}
	while (n && dst[n - 1] == ' ')
		n--;
	dst[n] = 0;
}

static void drop_event(struct pgq *p)
{
	if (p->ev)
		event_free(p->ev);
	p->ev = NULL;
}

void pgq_close(struct pgq *p)
{
	drop_event(p);
	if (p->last)
		PQclear(p->last);
	p->last = NULL;
	if (p->conn)
		PQfinish(p->conn);
	p->conn = NULL;
	p->connecting = p->busy = p->idle_watch = 0;
}

int pgq_connected(const struct pgq *p)
{
	return p->conn && !p->connecting && PQstatus(p->conn) == CONNECTION_OK;
}

/* Ends the current step with an error: the connection is closed (its state is unknown)
 * and done hears why. */
static void fail(struct pgq *p, const char *err)
{
	char msg[512];
	pgq_fold(msg, sizeof msg, err);
	pgq_close(p);
	p->done(p->arg, NULL, msg);
}

static void on_ready(evutil_socket_t fd, short what, void *arg);

static void wait_for(struct pgq *p, short what)
{
	drop_event(p);
	int fd = PQsocket(p->conn);
	long long left = p->deadline_ms - now_ms();
	if (fd < 0) {
		fail(p, "libpq has no socket to wait on");
		return;
	}
	if (left <= 0) {
		fail(p, p->connecting ? "timed out connecting to the database"
				      : "timed out waiting for the database");
		return;
	}
	struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
	p->ev = event_new(p->base, fd, what, on_ready, p);
	if (!p->ev || event_add(p->ev, &tv) != 0)
		fail(p, "cannot wait for the database socket");
}

static void connected(struct pgq *p)
{
	const char *db = PQdb(p->conn), *ver = PQparameterStatus(p->conn, "server_version");
	snprintf(p->database, sizeof p->database, "%s", db ? db : "");
	snprintf(p->server_version, sizeof p->server_version, "%s", ver ? ver : "");
	p->server_version_num = PQserverVersion(p->conn);
	p->connecting = 0;
	drop_event(p);
	p->done(p->arg, NULL, NULL);
}

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
	struct pgq *p = arg;
	/* Notices and the server's goodbye arrive here; a failed read means it is gone. */
	if (PQconsumeInput(p->conn) == 1 && PQstatus(p->conn) == CONNECTION_OK) {
		PGresult *r;
		while (!PQisBusy(p->conn) && (r = PQgetResult(p->conn)) != NULL)
			PQclear(r);
		return;
	}
	char msg[512];
	pgq_fold(msg, sizeof msg, PQerrorMessage(p->conn));
	void (*lost)(void *, const char *) = p->lost;
	pgq_close(p);
	if (lost)
		lost(p->arg, msg[0] ? msg : "connection closed");
}

void pgq_watch(struct pgq *p, void (*lost)(void *arg, const char *error))
{
	p->lost = lost;
	if (!pgq_connected(p) || p->busy)
		return;
	drop_event(p);
	p->ev = event_new(p->base, PQsocket(p->conn), EV_READ | EV_PERSIST, on_idle, p);
	if (!p->ev || event_add(p->ev, NULL) != 0) {
		drop_event(p);
		return;
	}
	p->idle_watch = 1;
}

static void query_step(struct pgq *p)
{
	if (PQconsumeInput(p->conn) != 1) {
		fail(p, PQerrorMessage(p->conn));
		return;
	}
	while (!PQisBusy(p->conn)) {
		PGresult *r = PQgetResult(p->conn);
		if (!r) {
			PGresult *last = p->last;
			p->last = NULL;
			p->busy = 0;
			drop_event(p);
			if (!last) {
				p->done(p->arg, NULL, "the query returned no result");
				return;
			}
			p->done(p->arg, last, NULL);
			PQclear(last);
			return;
		}
		ExecStatusType st = PQresultStatus(r);
		if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
			char msg[512];
			pgq_fold(msg, sizeof msg, PQresultErrorMessage(r));
			PQclear(r);
			/* Drain the rest so the connection stays usable, then report. */
			while ((r = PQgetResult(p->conn)) != NULL)
				PQclear(r);
			if (p->last)
				PQclear(p->last);
			p->last = NULL;
			p->busy = 0;
			drop_event(p);
			p->done(p->arg, NULL, msg);
			return;
		}
		if (p->last)
			PQclear(p->last);
		p->last = r;
	}
	wait_for(p, EV_READ);
}

static void on_ready(evutil_socket_t fd, short what, void *arg)
{
	struct pgq *p = arg;
	if (what & EV_TIMEOUT) {
		fail(p, p->connecting ? "timed out connecting to the database"
				      : "timed out waiting for the database");
		return;
	}
	if (p->connecting) {
		switch (PQconnectPoll(p->conn)) {
		case PGRES_POLLING_READING: wait_for(p, EV_READ); break;
		case PGRES_POLLING_WRITING: wait_for(p, EV_WRITE); break;
		case PGRES_POLLING_OK: connected(p); break;
		default: fail(p, PQerrorMessage(p->conn)); break;
		}
		return;
	}
	if (what & EV_WRITE) {
		int f = PQflush(p->conn);
		if (f < 0) {
			fail(p, PQerrorMessage(p->conn));
			return;
		}
		if (f > 0) {
			wait_for(p, EV_WRITE | EV_READ);
			return;
		}
	}
	query_step(p);
}

int pgq_connect(struct pgq *p, struct event_base *base, const char *url, int timeout_ms,
		void (*done)(void *arg, PGresult *res, const char *error), void *arg)
{
	memset(p, 0, sizeof *p);
	p->base = base;
	p->done = done;
	p->arg = arg;
	p->deadline_ms = now_ms() + timeout_ms;
	/* Name resolution inside PQconnectStartParams is synchronous (a libpq limit);
	 * everything after it waits on the loop. */
	const char *keys[] = {"fallback_application_name", "dbname", NULL};
	const char *vals[] = {"backup-agent", url, NULL};
	p->conn = PQconnectStartParams(keys, vals, 1);
	if (!p->conn) {
		snprintf(p->error, sizeof p->error, "out of memory");
		return -1;
	}
	if (PQstatus(p->conn) == CONNECTION_BAD) {
		pgq_fold(p->error, sizeof p->error, PQerrorMessage(p->conn));
		pgq_close(p);
		return -1;
	}
	if (PQsetnonblocking(p->conn, 1) != 0) {
		snprintf(p->error, sizeof p->error, "cannot make the connection non-blocking");
		pgq_close(p);
		return -1;
	}
	p->connecting = 1;
	/* Before the first PQconnectPoll libpq wants us to act as if it asked for WRITING. */
	wait_for(p, EV_WRITE);
	return 0;
}

int pgq_query(struct pgq *p, const char *sql, int timeout_ms,
	      void (*done)(void *arg, PGresult *res, const char *error))
{
	if (!pgq_connected(p) || p->busy) {
		snprintf(p->error, sizeof p->error, "not connected, or a query is running");
		return -1;
	}
	drop_event(p);
	p->idle_watch = 0;
	p->done = done;
	p->deadline_ms = now_ms() + timeout_ms;
	if (PQsendQuery(p->conn, sql) != 1) {
		pgq_fold(p->error, sizeof p->error, PQerrorMessage(p->conn));
		return -1;
	}
	p->busy = 1;
	int f = PQflush(p->conn);
	if (f < 0) {
		pgq_fold(p->error, sizeof p->error, PQerrorMessage(p->conn));
		p->busy = 0;
		return -1;
	}
	wait_for(p, f > 0 ? (EV_WRITE | EV_READ) : EV_READ);
	return 0;
}
