/* backup-agent settings from the environment (secrets also as NAME_FILE). */
#include "settings.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#define PG_DUMP_FALLBACK "/usr/lib/postgresql/15/bin/pg_dump"

static int executable(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && access(path, X_OK) == 0;
}

/* Finds name on PATH the way execvp would; 0 and the full path in out when found. */
static int path_search(const char *name, char *out, size_t cap)
{
	const char *path = getenv("PATH");
	if (!path || !*path)
		path = "/usr/local/bin:/usr/bin:/bin";
	while (*path) {
		size_t n = strcspn(path, ":");
		/* An empty PATH element means the current directory. */
		int w = n ? snprintf(out, cap, "%.*s/%s", (int)n, path, name)
			  : snprintf(out, cap, "./%s", name);
		if (w > 0 && (size_t)w < cap && executable(out))
			return 0;
		path += n;
		if (*path == ':')
			path++;
	}
	return -1;
}

/* GW_PG_DUMP as given (a path, or a name looked up on PATH); unset: pg_dump on PATH,
 * else the Debian location of PostgreSQL 15's. Resolved now so a missing binary is a
 * start-up error, not a failed snapshot an hour later. */
static int resolve_pg_dump(struct settings *s)
{
	const char *v = config_str("GW_PG_DUMP", NULL);
	if (v) {
		if (strchr(v, '/')) {
			if (!executable(v) || snprintf(s->pg_dump, sizeof s->pg_dump, "%s", v) >=
						  (int)sizeof s->pg_dump) {
				log_error("GW_PG_DUMP is not an executable file", LS("value", v));
				return -1;
			}
			return 0;
		}
		if (path_search(v, s->pg_dump, sizeof s->pg_dump) != 0) {
			log_error("GW_PG_DUMP was not found on PATH: give its full path",
				  LS("value", v));
			return -1;
		}
		return 0;
	}
	if (path_search("pg_dump", s->pg_dump, sizeof s->pg_dump) == 0)
		return 0;
	if (executable(PG_DUMP_FALLBACK)) {
		snprintf(s->pg_dump, sizeof s->pg_dump, "%s", PG_DUMP_FALLBACK);
		return 0;
	}
	log_error("pg_dump not found on PATH nor at " PG_DUMP_FALLBACK
		  ": install the PostgreSQL client or set GW_PG_DUMP");
	return -1;
}

int settings_load(struct settings *s, unsigned what)
{
	memset(s, 0, sizeof *s);
	const char *dir = config_str("GW_BACKUP_DIR", "./.run/backups");
	if (snprintf(s->dir, sizeof s->dir, "%s", dir) >= (int)sizeof s->dir) {
		log_error("GW_BACKUP_DIR is too long");
		return -1;
	}
	if (what & SETTINGS_DB) {
		s->url_name = "GW_BACKUP_DATABASE_URL";
		if (config_secret("GW_BACKUP_DATABASE_URL", &s->url, NULL) != 0)
			return -1;
		if (!s->url) {
			s->url_name = "GW_DATABASE_URL";
			if (config_secret("GW_DATABASE_URL", &s->url, NULL) != 0)
				return -1;
		}
		if (!s->url) {
			log_error("GW_BACKUP_DATABASE_URL (or GW_BACKUP_DATABASE_URL_FILE, or "
				  "GW_DATABASE_URL) is not set: give a libpq connection string for "
				  "the gw_backup role");
			return -1;
		}
		if (resolve_pg_dump(s) != 0)
			return -1;
	}
	if (what & SETTINGS_SERVE) {
		const char *g = config_str("GW_BACKUP_GROUP", "backup-agent");
		if (config_int("GW_BACKUP_INTERVAL", 3600, 0, 366LL * 86400, &s->interval_s) ||
		    config_int("GW_BACKUP_STOP_WAIT_MS", 30000, 0, 3600LL * 1000, &s->stop_wait_ms))
			return -1;
		if (snprintf(s->group, sizeof s->group, "%s", g) >= (int)sizeof s->group) {
			log_error("GW_BACKUP_GROUP is too long", LS("value", g));
			return -1;
		}
	}
	return 0;
}

void settings_free(struct settings *s)
{
	if (s->url) {
		explicit_bzero(s->url, strlen(s->url));
		free(s->url);
	}
	s->url = NULL;
}
