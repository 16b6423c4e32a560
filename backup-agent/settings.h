/* backup-agent's settings, read once from the environment at start; a bad value stops
 * the process with a message naming the variable. */
#ifndef BACKUP_SETTINGS_H
#define BACKUP_SETTINGS_H

#include <limits.h>

enum {
	SETTINGS_DB = 1u << 0,    /* the database URL and pg_dump (snapshot, serve) */
	SETTINGS_SERVE = 1u << 1, /* interval, stop wait, consumer group (serve) */
};

/* Owned by main. url holds a credential: never logged; wiped by settings_free. */
struct settings {
	char *url;              /* malloc'd; GW_BACKUP_DATABASE_URL or GW_DATABASE_URL */
	const char *url_name;   /* which variable it came from, for messages */
	char pg_dump[PATH_MAX]; /* resolved path of the pg_dump to run */
	char dir[PATH_MAX];     /* GW_BACKUP_DIR */
	long long interval_s;   /* GW_BACKUP_INTERVAL; 0 = no timer */
	long long stop_wait_ms; /* GW_BACKUP_STOP_WAIT_MS */
	char group[128];        /* GW_BACKUP_GROUP */
};

/* Reads what `what` (SETTINGS_*) needs; logs what to fix and returns -1 on failure. */
int settings_load(struct settings *s, unsigned what);
void settings_free(struct settings *s);

#endif
