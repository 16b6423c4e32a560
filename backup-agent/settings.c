/* backup-agent settings from the environment (secrets also as NAME_FILE). */
#include "settings.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#define PG_BIN_FALLBACK  "/usr/lib/postgresql/15/bin/"
/* The advisory lock every backup-agent of a deployment competes for ("gwbackup"). */
#define DEFAULT_LOCK_KEY 0x6777626b7570LL

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

/* var as given (a path, or a name looked up on PATH); unset: name on PATH, else the Debian
 * location of PostgreSQL 15's. Resolved now so a missing binary is a start-up error, not
 * a failed snapshot an hour later. */
static int resolve_tool(const char *var, const char *name, char *out, size_t cap)
{
	const char *v = config_str(var, NULL);
	if (v) {
		if (strchr(v, '/')) {
			if (!executable(v) || snprintf(out, cap, "%s", v) >= (int)cap) {
				log_error("not an executable file", LS("variable", var),
					  LS("value", v));
				return -1;
			}
			return 0;
		}
		if (path_search(v, out, cap) != 0) {
			log_error("not found on PATH: give its full path", LS("variable", var),
				  LS("value", v));
			return -1;
		}
		return 0;
	}
	if (path_search(name, out, cap) == 0)
		return 0;
	if (snprintf(out, cap, "%s%s", PG_BIN_FALLBACK, name) < (int)cap && executable(out))
		return 0;
	log_error("PostgreSQL client program not found on PATH nor in " PG_BIN_FALLBACK
		  ": install the PostgreSQL client or set the variable",
		  LS("program", name), LS("variable", var));
	return -1;
}

/* The auditor, for `auditor verify` on restored copies: GW_AUDITOR_BIN, else the one next
 * to us in a build tree (../auditor/auditor), else auditor on PATH; none is not an error
 * (verify says the chain check could not run). */
static void resolve_auditor(struct settings *s)
{
	const char *v = config_str("GW_AUDITOR_BIN", NULL);
	char self[PATH_MAX];
	s->auditor[0] = 0;
	if (v) {
		if (strchr(v, '/') ? (executable(v) && snprintf(s->auditor, sizeof s->auditor, "%s",
								v) < (int)sizeof s->auditor)
				   : path_search(v, s->auditor, sizeof s->auditor) == 0)
			return;
		log_warn("GW_AUDITOR_BIN is not an executable: the chain check will not run",
			 LS("value", v));
		s->auditor[0] = 0;
		return;
	}
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n > 0) {
		self[n] = 0;
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = 0;
			if (snprintf(s->auditor, sizeof s->auditor, "%s/../auditor/auditor", self) <
				(int)sizeof s->auditor &&
			    executable(s->auditor))
				return;
		}
	}
	if (path_search("auditor", s->auditor, sizeof s->auditor) != 0)
		s->auditor[0] = 0;
}

static int load_secret_url(char **out, const char *first, const char *second)
{
	if (config_secret(first, out, NULL) != 0)
		return -1;
	if (!*out && second && config_secret(second, out, NULL) != 0)
		return -1;
	return 0;
}

int settings_load(struct settings *s, unsigned what)
{
	memset(s, 0, sizeof *s);
	return settings_load_more(s, what);
}

int settings_load_more(struct settings *s, unsigned what)
{
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
		if (resolve_tool("GW_PG_DUMP", "pg_dump", s->pg_dump, sizeof s->pg_dump) != 0)
			return -1;
	}
	if (what & (SETTINGS_KEY | SETTINGS_KEY_OPT)) {
		if (crypt_key_load(&s->key) != 0)
			return -1;
		if ((what & SETTINGS_KEY) && !s->key.set) {
			log_error("GW_BACKUP_KEY_FILE (or GW_BACKUP_KEY) is not set: snapshots are "
				  "encrypted; give a file holding 64 hex digits (openssl rand -hex "
				  "32 > key; chmod 600 key) and keep a copy away from the backups");
			return -1;
		}
	}
	if (what & SETTINGS_ADMIN) {
		if (load_secret_url(&s->admin_url, "GW_BACKUP_ADMIN_URL",
				    "GW_DATABASE_ADMIN_URL") != 0)
			return -1;
		if (!s->admin_url) {
			log_error(
			    "GW_BACKUP_ADMIN_URL (or GW_DATABASE_ADMIN_URL, or their _FILE) is "
			    "not set: give a libpq URL of a role that may CREATE DATABASE, for "
			    "the scratch database verify restores into");
			return -1;
		}
	}
	if (what & SETTINGS_RESTORE) {
		if (resolve_tool("GW_PG_RESTORE", "pg_restore", s->pg_restore,
				 sizeof s->pg_restore) != 0)
			return -1;
		resolve_auditor(s);
	}
	/* Retention is read by serve and prune. */
	if (config_int("GW_BACKUP_KEEP_LAST", 24, 1, 1000000, &s->keep_last) ||
	    config_int("GW_BACKUP_KEEP_DAYS", 7, 0, 36500, &s->keep_days))
		return -1;
	if (what & SETTINGS_SERVE) {
		const char *g = config_str("GW_BACKUP_GROUP", "backup-agent");
		if (config_int("GW_BACKUP_INTERVAL", 3600, 0, 366LL * 86400, &s->interval_s) ||
		    config_int("GW_BACKUP_STOP_WAIT_MS", 30000, 0, 3600LL * 1000,
			       &s->stop_wait_ms) ||
		    config_int("GW_BACKUP_VERIFY", 1, 0, 1, &s->verify) ||
		    config_int("GW_BACKUP_LOCK_RETRY_S", 5, 1, 3600, &s->lock_retry_s) ||
		    config_int("GW_BACKUP_LOCK_KEY", DEFAULT_LOCK_KEY, -0x7fffffffffffffffLL,
			       0x7fffffffffffffffLL, &s->lock_key))
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
	if (s->admin_url) {
		explicit_bzero(s->admin_url, strlen(s->admin_url));
		free(s->admin_url);
	}
	s->url = s->admin_url = NULL;
	crypt_key_free(&s->key);
}
