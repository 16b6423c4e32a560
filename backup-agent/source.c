/* The database to back up: connection string handling that keeps the password out of
 * argv, and the non-blocking connection probe (PQconnectStartParams + PQconnectPoll
 * driven by libevent) that reads the server version. */
#include "source.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

extern char **environ;

/* Appends keyword='value' (libpq quoting: backslash and quote escaped) to the growing
 * string *buf of length *len. */
static int append_kv(char **buf, size_t *len, const char *key, const char *val)
{
	size_t need = *len + strlen(key) + 2 * strlen(val) + 5;
	char *nb = realloc(*buf, need);
	if (!nb)
		return -1;
	*buf = nb;
	char *p = nb + *len;
	if (*len)
		*p++ = ' ';
	for (const char *k = key; *k; k++)
		*p++ = *k;
	*p++ = '=';
	*p++ = '\'';
	for (const char *v = val; *v; v++) {
		if (*v == '\\' || *v == '\'')
			*p++ = '\\';
		*p++ = *v;
	}
	*p++ = '\'';
	*p = 0;
	*len = (size_t)(p - nb);
	return 0;
}

int source_parse(struct source *s, const char *url, char *why, size_t whycap)
{
	memset(s, 0, sizeof *s);
	char *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(url, &err);
	if (!opts) {
		/* libpq's message can quote a fragment of a malformed string, which may be
		 * the password: say what is wrong without it. */
		snprintf(why, whycap, "%s",
			 err ? "not a valid libpq connection string (URI or "
			       "key=value)"
			     : "out of memory");
		PQfreemem(err);
		return -1;
	}
	size_t len = 0;
	s->conninfo = calloc(1, 1);
	int rc = s->conninfo ? 0 : -1;
	if (rc)
		snprintf(why, whycap, "out of memory");
	for (PQconninfoOption *o = opts; rc == 0 && o->keyword; o++) {
		if (!o->val)
			continue;
		if (strcmp(o->keyword, "password") == 0) {
			s->password = strdup(o->val);
			if (!s->password) {
				snprintf(why, whycap, "out of memory");
				rc = -1;
			}
		} else if (strcmp(o->keyword, "sslpassword") == 0) {
			/* libpq reads it from no environment variable, so it could only travel
			 * in argv. */
			snprintf(why, whycap,
				 "sslpassword is not supported (it would show in "
				 "pg_dump's command line): use an unencrypted client "
				 "key readable only by this user");
			rc = -1;
		} else if (append_kv(&s->conninfo, &len, o->keyword, o->val) != 0) {
			snprintf(why, whycap, "out of memory");
			rc = -1;
		}
	}
	/* The parsed options hold the password too. */
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (o->val && strcmp(o->keyword, "password") == 0)
			explicit_bzero(o->val, strlen(o->val));
	PQconninfoFree(opts);
	if (rc != 0)
		source_free(s);
	return rc;
}

void source_free(struct source *s)
{
	if (s->password) {
		explicit_bzero(s->password, strlen(s->password));
		free(s->password);
	}
	free(s->conninfo);
	s->password = s->conninfo = NULL;
}

char **source_child_env(const struct source *s, int with_password)
{
	size_t n = 0;
	for (char **e = environ; e && *e; e++)
		n++;
	char **env = calloc(n + 2, sizeof *env);
	if (!env)
		return NULL;
	size_t k = 0;
	int add_pw = with_password && s->password;
	for (char **e = environ; e && *e; e++) {
		if (strncmp(*e, "GW_", 3) == 0)
			continue;
		if (add_pw && strncmp(*e, "PGPASSWORD=", 11) == 0)
			continue;
		if (!(env[k++] = strdup(*e)))
			goto fail;
	}
	if (add_pw) {
		size_t pl = strlen(s->password);
		char *pw = malloc(sizeof "PGPASSWORD=" + pl);
		if (!pw)
			goto fail;
		memcpy(pw, "PGPASSWORD=", sizeof "PGPASSWORD=" - 1);
		memcpy(pw + sizeof "PGPASSWORD=" - 1, s->password, pl + 1);
		env[k++] = pw;
	}
	return env;
fail:
	source_env_free(env);
	return NULL;
}

void source_env_free(char **env)
{
	if (!env)
		return;
	for (char **e = env; *e; e++) {
		explicit_bzero(*e, strlen(*e));
		free(*e);
	}
	free(env);
}

/* ---- the probe ---- */

static long long now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void probe_cleanup(struct source_probe *p)
{
	if (p->ev)
		event_free(p->ev);
	p->ev = NULL;
	if (p->conn)
		PQfinish(p->conn);
	p->conn = NULL;
}

/* libpq's messages end in a newline and may span lines: one line, tabs as spaces. */
static void fold(char *dst, size_t cap, const char *src)
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

static void probe_fail(struct source_probe *p, const char *err)
{
	char msg[512];
	fold(msg, sizeof msg, err);
	probe_cleanup(p);
	p->done(p->arg, 0, msg);
}

static void probe_ok(struct source_probe *p)
{
	const char *db = PQdb(p->conn), *ver = PQparameterStatus(p->conn, "server_version");
	snprintf(p->database, sizeof p->database, "%s", db ? db : "");
	snprintf(p->server_version, sizeof p->server_version, "%s", ver ? ver : "");
	p->server_version_num = PQserverVersion(p->conn);
	probe_cleanup(p);
	p->done(p->arg, 1, NULL);
}

static void probe_ready(evutil_socket_t fd, short what, void *arg);

static void probe_wait(struct source_probe *p, short what)
{
	if (p->ev)
		event_free(p->ev);
	p->ev = NULL;
	int fd = PQsocket(p->conn);
	long long left = p->deadline_ms - now_ms();
	if (fd < 0) {
		probe_fail(p, "libpq has no socket to wait on");
		return;
	}
	if (left <= 0) {
		probe_fail(p, "timed out connecting to the database");
		return;
	}
	struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
	p->ev = event_new(p->base, fd, what, probe_ready, p);
	if (!p->ev || event_add(p->ev, &tv) != 0)
		probe_fail(p, "cannot wait for the database socket");
}

static void probe_ready(evutil_socket_t fd, short what, void *arg)
{
	struct source_probe *p = arg;
	if (what & EV_TIMEOUT) {
		probe_fail(p, "timed out connecting to the database");
		return;
	}
	switch (PQconnectPoll(p->conn)) {
	case PGRES_POLLING_READING: probe_wait(p, EV_READ); break;
	case PGRES_POLLING_WRITING: probe_wait(p, EV_WRITE); break;
	case PGRES_POLLING_OK: probe_ok(p); break;
	default: probe_fail(p, PQerrorMessage(p->conn)); break;
	}
}

int source_probe_start(struct source_probe *p, struct event_base *base, const char *url,
		       int timeout_ms, void (*done)(void *arg, int ok, const char *error),
		       void *arg)
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
		fold(p->error, sizeof p->error, PQerrorMessage(p->conn));
		probe_cleanup(p);
		return -1;
	}
	/* Before the first PQconnectPoll libpq wants us to act as if it asked for WRITING. */
	probe_wait(p, EV_WRITE);
	return 0;
}

void source_probe_cancel(struct source_probe *p)
{
	probe_cleanup(p);
}
