/* One PostgreSQL connection driven by the event loop: a non-blocking connect, then one
 * query at a time (PQsendQuery), each with a deadline, and, while idle, a watch on the
 * socket so a connection the server dropped is noticed (the advisory lock goes with it). */
#ifndef BACKUP_PGQ_H
#define BACKUP_PGQ_H

#include <event2/event.h>
#include <libpq-fe.h>

/* Embedded in its user (snapshot, agent), which outlives it; conn and ev owned here. */
struct pgq {
	struct event_base *base;
	PGconn *conn;
	struct event *ev;
	long long deadline_ms;
	int connecting, busy, idle_watch;
	PGresult *last; /* the running query's last result */
	/* Connect: ok, or error (never holding the password). Query: res is the last result
	 * (owned by pgq, valid during the call) or NULL with error. */
	void (*done)(void *arg, PGresult *res, const char *error);
	/* The connection broke while idle (NULL: not watched). */
	void (*lost)(void *arg, const char *error);
	void *arg;
	char error[512];
	/* Filled by the connect. */
	char database[64];
	char server_version[128];
	int server_version_num;
};

/* Starts connecting to url; done follows. -1 with p->error when it fails at once (then
 * done is not called). */
int pgq_connect(struct pgq *p, struct event_base *base, const char *url, int timeout_ms,
		void (*done)(void *arg, PGresult *res, const char *error), void *arg);
/* Sends sql (may hold several statements: the last result is reported, or the first
 * error); done follows. -1 with p->error (done not called). */
int pgq_query(struct pgq *p, const char *sql, int timeout_ms,
	      void (*done)(void *arg, PGresult *res, const char *error));
/* Watches the idle connection; lost is called once if it breaks. */
void pgq_watch(struct pgq *p, void (*lost)(void *arg, const char *error));
int pgq_connected(const struct pgq *p);
/* Closes the connection (a transaction still open is rolled back by the server); no
 * callback follows. */
void pgq_close(struct pgq *p);

/* libpq's messages end in a newline and may span lines: one line, tabs as spaces. */
void pgq_fold(char *dst, size_t cap, const char *src);

#endif
