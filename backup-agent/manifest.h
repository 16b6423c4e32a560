/* The manifest written next to each snapshot: what the dump is, where it came from and
 * its size and SHA-256, so a listing or a restore can check the dump without opening it. */
#ifndef BACKUP_MANIFEST_H
#define BACKUP_MANIFEST_H

#include <stddef.h>
#include <time.h>

#define MANIFEST_VERSION               2
#define MANIFEST_AGENT_VERSION         "backup-agent 0.2.0"
#define MANIFEST_ENCRYPTION_NONE       "none"
/* The audit section's compact JSON (tables and chain heads) must fit here: a few hundred
 * chains' heads. */
#define MANIFEST_AUDIT_MAX             24576
#define MANIFEST_FORMAT_PG_DUMP_CUSTOM "pg_dump-custom"
#define MANIFEST_ID_MAX                32
#define MANIFEST_SHA256_HEX            64

/* Plain value type: fixed buffers, no ownership. Every string is NUL-terminated. */
struct manifest {
	char id[MANIFEST_ID_MAX];
	char created_at[32]; /* RFC 3339 UTC, seconds: 2026-11-23T14:25:01Z */
	char format[32];
	char database[64]; /* the database name only: never a URL or a credential */
	char server_version[128];
	int server_version_num; /* 150004 style; 0 when unknown */
	long long size;
	char sha256[MANIFEST_SHA256_HEX + 1];
	char tool_version[128]; /* `pg_dump --version` */
	long long duration_ms;
	int encrypted;
	char encryption[32];            /* "none" or crypt.h's CRYPT_SCHEME */
	char key_id[24];                /* the backup key's id when encrypted, else "" */
	long long plain_size;           /* bytes pg_dump wrote; -1 when unknown (version 1) */
	char agent_version[32];         /* MANIFEST_AGENT_VERSION of the writer; "" in version 1 */
	char audit[MANIFEST_AUDIT_MAX]; /* compact JSON object (see docs), "" when absent */
};

/* Formats t as RFC 3339 UTC with seconds into buf (at least 21 bytes). */
void manifest_time_format(time_t t, char *buf, size_t cap);

/* Parses a time written by manifest_time_format; -1 on anything else. */
int manifest_time_parse(const char *s, time_t *out);

/* True when s is 64 lowercase hex digits. */
int manifest_sha256_valid(const char *s);

/* Encodes m as one JSON object (with a trailing newline). Caller frees; NULL on
 * allocation failure or a field the decoder would refuse (logged). */
char *manifest_encode(const struct manifest *m);

/* Decodes and validates len bytes of JSON into m (zeroed first). On failure returns -1
 * and writes what is wrong into why. */
int manifest_decode(const char *buf, size_t len, struct manifest *m, char *why, size_t whycap);

#endif
