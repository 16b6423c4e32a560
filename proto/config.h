/* Settings from the environment. Secrets may also come from NAME_FILE (never argv).
 * A process reads everything at start and exits non-zero naming the bad variable. */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stddef.h>

/* Loads KEY=VALUE lines from GW_ENV_FILE, else from ./.run/env when it exists, without
 * overriding variables already set: lets admin subcommands run from a checkout after
 * `make run`. Returns 0, or -1 (logged) if the file exists but cannot be read. */
int config_load_env_file(void);

/* getenv with a default; an empty value counts as unset. */
const char *config_str(const char *name, const char *def);

/* Integer in [min, max]; logs and returns -1 on a malformed or out-of-range value. */
int config_int(const char *name, long long def, long long min, long long max, long long *out);

/* NAME, or the contents of the file named by NAME_FILE (trailing newline removed).
 * *out is malloc'd, owned by the caller, NUL-terminated; NULL when neither is set.
 * Returns -1 (logged) when both are set or the file cannot be read. */
int config_secret(const char *name, char **out, size_t *len);

/* A stable instance name: GW_INSTANCE, else hostname-pid. Static storage. */
const char *config_instance(const char *service);

#endif
