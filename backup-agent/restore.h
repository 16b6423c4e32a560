/* Reading snapshots back: `verify` (checksum, decrypt, restore into a scratch database,
 * compare the audit state with the manifest, `auditor verify`, drop the scratch
 * database), `restore` into a target database, and `decrypt` to a file. Command-line
 * work: blocking, one at a time; serve runs verify as a child process. Plaintext only
 * ever travels through a pipe into pg_restore (or to stdout for decrypt). */
#ifndef BACKUP_RESTORE_H
#define BACKUP_RESTORE_H

#include <signal.h>

#include "manifest.h"
#include "settings.h"
#include "store.h"

/* Plain value type. */
struct restore_result {
	int ok;
	char error[1024];    /* when !ok: what failed, naming the snapshot */
	char chain[512];     /* what the audit chain check found or why it did not run */
	int chain_checked;   /* 1 when `auditor verify` ran and passed */
	char scratch[64];    /* verify: the scratch database's name */
	int scratch_dropped; /* verify: 1 once it is gone (or was never made) */
	long long plain_size;
	long long duration_ms;
};

/* Set by the caller's SIGINT/SIGTERM handler: the work stops at the next chunk. */
extern volatile sig_atomic_t restore_stop;

/* Checks the snapshot file against its manifest: size, SHA-256, and (encrypted) that the
 * key given is the one it was written with. Reads the whole file. -1 with r->error. */
int restore_check(struct store *st, const char *id, const struct crypt_key *key, struct manifest *m,
		  struct restore_result *r);

int restore_verify(const struct settings *cfg, struct store *st, const char *id,
		   struct restore_result *r);

/* Restores into target_url. Refuses a database with any user table unless force (then
 * pg_restore --clean --if-exists replaces what the snapshot holds). no_owner: leave out
 * ownership and grants (a cluster without the original roles). */
int restore_into(const struct settings *cfg, struct store *st, const char *id,
		 const char *target_url, int force, int no_owner, struct restore_result *r);

/* Writes the decrypted pg_dump archive to out_fd (refused when it is a terminal). */
int restore_decrypt(const struct settings *cfg, struct store *st, const char *id, int out_fd,
		    struct restore_result *r);

#endif
