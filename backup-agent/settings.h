/* backup-agent's settings, read once from the environment at start; a bad value stops
 * the process with a message naming the variable. */
#ifndef BACKUP_SETTINGS_H
#define BACKUP_SETTINGS_H

#include <limits.h>

#include "crypt.h"

enum {
	SETTINGS_DB = 1u << 0,      /* the database URL and pg_dump (snapshot, serve) */
	SETTINGS_SERVE = 1u << 1,   /* interval, stop wait, consumer group, lock, retention */
	SETTINGS_KEY = 1u << 2,     /* the backup key, required */
	SETTINGS_KEY_OPT = 1u << 3, /* the backup key when set (verify, decrypt, restore) */
	SETTINGS_ADMIN = 1u << 4,   /* GW_BACKUP_ADMIN_URL: may create the scratch database */
	SETTINGS_RESTORE = 1u << 5, /* pg_restore and the auditor binary */
};

/* Owned by main. url, admin_url and key hold credentials: never logged; wiped by
 * settings_free. */
struct settings {
	char *url;              /* malloc'd; GW_BACKUP_DATABASE_URL or GW_DATABASE_URL */
	const char *url_name;   /* which variable it came from, for messages */
	char pg_dump[PATH_MAX]; /* resolved path of the pg_dump to run */
	char dir[PATH_MAX];     /* GW_BACKUP_DIR */
	long long interval_s;   /* GW_BACKUP_INTERVAL; 0 = no timer */
	long long stop_wait_ms; /* GW_BACKUP_STOP_WAIT_MS */
	char group[128];        /* GW_BACKUP_GROUP */
	struct crypt_key key;   /* GW_BACKUP_KEY / GW_BACKUP_KEY_FILE */
	char *admin_url;        /* malloc'd; GW_BACKUP_ADMIN_URL or GW_DATABASE_ADMIN_URL */
	char pg_restore[PATH_MAX];
	char auditor[PATH_MAX]; /* GW_AUDITOR_BIN, or "" when none was found */
	long long keep_last;    /* GW_BACKUP_KEEP_LAST */
	long long keep_days;    /* GW_BACKUP_KEEP_DAYS */
	long long verify;       /* GW_BACKUP_VERIFY: verify each snapshot in serve */
	long long lock_retry_s; /* GW_BACKUP_LOCK_RETRY_S */
	long long lock_key;     /* GW_BACKUP_LOCK_KEY */
};

/* Reads what `what` (SETTINGS_*) needs; logs what to fix and returns -1 on failure. */
int settings_load(struct settings *s, unsigned what);
/* Reads more of them into s, already loaded (serve adds what verify needs). */
int settings_load_more(struct settings *s, unsigned what);
void settings_free(struct settings *s);

#endif
