/* One snapshot as a state machine on an event loop, shared by `backup-agent snapshot`
 * (its own loop) and `serve`: pg_dump --version; a connection that opens a repeatable-read
 * transaction, exports its snapshot and reads the audit state in it; then pg_dump -Fc
 * --snapshot (the same rows) streamed through a pipe, encrypted (crypt.h) into a
 * temporary file (hashed on the way), fsync, rename to <id>.dump, and the manifest. Only
 * complete snapshots ever get a final name. */
#ifndef BACKUP_SNAPSHOT_H
#define BACKUP_SNAPSHOT_H

#include <event2/event.h>
#include <openssl/evp.h>
#include <stdint.h>

#include "child.h"
#include "crypt.h"
#include "kafka.h"
#include "manifest.h"
#include "pgq.h"
#include "source.h"
#include "store.h"

enum snapshot_state {
	SNAP_IDLE,
	SNAP_VERSION, /* pg_dump --version */
	SNAP_CONNECT, /* connecting: server version, database name */
	SNAP_EXPORT,  /* BEGIN REPEATABLE READ; pg_export_snapshot() */
	SNAP_CATALOG, /* audit tables and their row counts */
	SNAP_HEADS,   /* audit chain heads (or partition offsets) */
	SNAP_DUMP,    /* pg_dump running, output streaming into the temporary file */
	SNAP_DONE,    /* result waiting to be delivered from the loop */
};

/* Plain value type. */
struct snapshot_result {
	int ok;
	char id[MANIFEST_ID_MAX];
	char error[1024]; /* when !ok: what failed, naming the snapshot id */
	/* Complete when ok; otherwise what was known (size = bytes written so far). */
	struct manifest m;
};

/* Owned by its user (the agent, or the CLI); store, url and key are borrowed and outlive
 * it. The events, the child, the connection, the encryption state, the temporary file,
 * the digest and the saved catalog are owned here. */
struct snapshot {
	struct event_base *base;
	struct store *store;
	const char *url;     /* holds the password: never logged */
	const char *pg_dump; /* path */
	struct source src;
	struct child child;
	const struct crypt_key *key;
	struct pgq db; /* holds the exported snapshot's transaction until pg_dump ends */
	struct crypt_writer cw;
	int cw_up;
	PGresult *catalog; /* copy of the catalog query's result, until the heads arrive */
	char pg_snapshot[64];
	const char *heads_source; /* static string */
	struct event *finish;     /* delivers the result outside the callback that ended the run */
	enum snapshot_state state;
	struct snapshot_result res;
	char tool_out[256];
	size_t tool_len;
	int tmp_fd;
	char tmp_name[STORE_NAME_MAX];
	EVP_MD_CTX *md;
	long long size; /* bytes written to the file */
	long long plain_size;
	long long unsynced;
	unsigned char magic[5];
	int write_errno;
	int64_t start_us;
	/* Called once per snapshot_start, from the loop; may start the next snapshot. */
	void (*done)(void *arg, const struct snapshot_result *r);
	void *arg;
};

/* Checks url can be used (logs what is wrong, without the password) and sets up the
 * events. -1 on failure. */
int snapshot_init(struct snapshot *s, struct event_base *base, struct store *st, const char *url,
		  const char *pg_dump, const struct crypt_key *key,
		  void (*done)(void *arg, const struct snapshot_result *r), void *arg);
void snapshot_free(struct snapshot *s);

/* Starts a snapshot; the result, success or failure, arrives through done. -1 only
 * when one is already running (the caller coalesces). */
int snapshot_start(struct snapshot *s);
int snapshot_running(const struct snapshot *s);

/* Stops a running snapshot: kills pg_dump, removes the temporary file; done reports
 * the failure with why. */
void snapshot_abort(struct snapshot *s, const char *why);

/* Emits the backup.snapshot audit event for r. trigger: "interval", "command", "cli";
 * requested_by may be NULL. d as in kafka_produce. -1 logged. */
int snapshot_audit(struct kafka_producer *p, const struct snapshot_result *r, const char *trigger,
		   const char *requested_by, struct kafka_done *d);

#endif
