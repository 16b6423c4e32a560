/* The database being backed up: its connection string split so the password reaches
 * pg_dump through the child's environment and never its argv, and a non-blocking probe
 * that reads the server's version for the manifest. */
#ifndef BACKUP_SOURCE_H
#define BACKUP_SOURCE_H

#include <event2/event.h>
#include <libpq-fe.h>

/* Owned by its snapshot. password is wiped on free. */
struct source {
	char *conninfo; /* key='value' ... without the password: safe to show in ps */
	char *password; /* NULL when the URL had none (then libpq's PGPASSWORD/.pgpass apply) */
};

/* Splits url. -1 with why (never containing the password) when url cannot be used. */
int source_parse(struct source *s, const char *url, char *why, size_t whycap);
void source_free(struct source *s);

/* The child's environment: ours without GW_* (they may hold secrets pg_dump has no use
 * for) and, when with_password, PGPASSWORD set from the URL. NULL on allocation failure.
 * Free with source_env_free, which wipes it. */
char **source_child_env(const struct source *s, int with_password);
void source_env_free(char **env);

/* A connection attempt driven by the loop. Embedded in its snapshot; conn and ev owned. */
struct source_probe {
	struct event_base *base;
	PGconn *conn;
	struct event *ev;
	long long deadline_ms;
	/* Once per start: ok, or the error (never holding the password). */
	void (*done)(void *arg, int ok, const char *error);
	void *arg;
	char error[512]; /* why source_probe_start returned -1 */
	/* Filled on success. */
	char database[64];
	char server_version[128];
	int server_version_num;
};

/* Connects to url (the full one: libpq keeps the password in its own memory). Returns -1
 * with p->error set when the attempt fails at once (a missing unix socket fails here);
 * then done is not called. */
int source_probe_start(struct source_probe *p, struct event_base *base, const char *url,
		       int timeout_ms, void (*done)(void *arg, int ok, const char *error),
		       void *arg);
/* Abandons an attempt in progress; done is not called. */
void source_probe_cancel(struct source_probe *p);

#endif
