/* A database for a child process (pg_dump, pg_restore, auditor verify): its connection
 * string split so the password travels in the child's environment, never its argv. */
#ifndef BACKUP_SOURCE_H
#define BACKUP_SOURCE_H

#include <stddef.h>

/* Owned by its user (snapshot, restore). password is wiped on free. */
struct source {
	char *conninfo; /* key='value' ... without the password: safe to show in ps */
	char *password; /* NULL when the URL had none (then libpq's PGPASSWORD/.pgpass apply) */
};

/* Splits url. -1 with why (never containing the password) when url cannot be used. */
int source_parse(struct source *s, const char *url, char *why, size_t whycap);
void source_free(struct source *s);

/* The child's environment: ours without GW_* (they may hold secrets the child has no use
 * for) and, when with_password, PGPASSWORD set from the URL. NULL on allocation failure.
 * Free with source_env_free, which wipes it. */
char **source_child_env(const struct source *s, int with_password);
void source_env_free(char **env);

#endif
