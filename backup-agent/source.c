/* Connection strings for child processes: the password is split off so it reaches
 * pg_dump / pg_restore through the child's environment, never its argv. */
#include "source.h"

#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
