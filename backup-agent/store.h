/* The snapshot directory: ids and file names, crash-safe publication (temporary file,
 * fsync, rename, fsync of the directory) and the listing that checks each snapshot. */
#ifndef BACKUP_STORE_H
#define BACKUP_STORE_H

#include "manifest.h"

#include <limits.h>
#include <stddef.h>
#include <time.h>

/* 20261123T142501Z-a1b2c3: UTC start time, then 24 random bits against collisions. */
#define STORE_ID_LEN   23
#define STORE_NAME_MAX 64
/* A listing stops here rather than grow without bound on a directory gone wrong. */
#define STORE_LIST_MAX 100000

/* One open snapshot directory. Owned by its user; store_close releases dirfd. */
struct store {
	int dirfd;
	char path[PATH_MAX];
};

enum store_status {
	STORE_OK,
	STORE_MISSING,       /* manifest without its dump */
	STORE_SIZE_MISMATCH, /* the dump's size is not the manifest's */
	STORE_CORRUPT,       /* the manifest cannot be read or does not validate */
	STORE_NO_MANIFEST,   /* a dump without a manifest (crash before the manifest) */
};

/* One row of a listing. Plain value type. */
struct store_entry {
	char id[MANIFEST_ID_MAX];
	enum store_status status;
	int has_manifest;
	struct manifest m;     /* valid when has_manifest */
	long long actual_size; /* the dump's size on disk, -1 when absent */
	char why[160];         /* what is wrong, for STORE_CORRUPT */
};

/* Opens path; with create, makes it (and missing parents) with mode 0700. Logs and
 * returns -1 on failure. */
int store_open(struct store *st, const char *path, int create);
void store_close(struct store *st);

/* A fresh id for a snapshot started at t. */
int store_id_new(time_t t, char out[STORE_ID_LEN + 1]);
int store_id_valid(const char *s);

/* File names inside the directory. Temporary names start with '.' and end in ".tmp",
 * so nothing that reads final names ever sees them. */
void store_dump_name(const char *id, char *buf, size_t cap);     /* <id>.dump */
void store_manifest_name(const char *id, char *buf, size_t cap); /* <id>.json */
void store_tmp_name(const char *id, const char *kind, char *buf,
		    size_t cap); /* .snap-<id><kind>.tmp */

/* Creates a new temporary file (O_EXCL, 0600) for writing; -1 logged. */
int store_tmp_create(struct store *st, const char *name);
/* Renames tmp to final (never replacing an existing file) and fsyncs the directory. */
int store_publish(struct store *st, const char *tmp, const char *final);
/* Removes name (absent is fine) and fsyncs the directory. */
int store_remove(struct store *st, const char *name);

/* Removes every temporary file (.snap-*.tmp): left by a crash. Only the holder of the
 * backup lock may call it, or it would pull a file from under a running snapshot.
 * Returns how many were removed, -1 when the directory cannot be read (logged). */
int store_remove_stale(struct store *st);

/* write(2) until all of buf is written; -1 with errno on failure. */
int store_write_all(int fd, const void *buf, size_t n);

/* Writes <id>.json the crash-safe way. -1 logged; nothing is left under a final name. */
int store_write_manifest(struct store *st, const struct manifest *m);
/* Reads and validates <id>.json; checks it names id. -1 with why on failure. */
int store_read_manifest(struct store *st, const char *id, struct manifest *m, char *why,
			size_t whycap);

/* Every snapshot in the directory, newest first. *out is malloc'd, owned by the caller
 * (free). Temporary files are ignored. -1 logged when the directory cannot be read. */
int store_list(struct store *st, struct store_entry **out, size_t *n);
const char *store_status_name(enum store_status s);

#endif
