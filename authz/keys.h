/* The in-memory key store authz decides from: every row of authz.api_keys, keyed by the
 * public key id, in one open-addressing table bounded by GW_AUTHZ_MAX_KEYS. Requests
 * never touch PostgreSQL; the table is loaded at start and refreshed incrementally. */
#ifndef GW_AUTHZ_KEYS_H
#define GW_AUTHZ_KEYS_H

#include "apikey.h"

#include <stddef.h>
#include <stdint.h>

/* One key as read from the database; everything is borrowed (keys_put copies). */
struct key_row {
	const char *id; /* 16 hex digits */
	unsigned char hash[APIKEY_HASH_LEN];
	const char *principal;
	const char *const *groups;
	int ngroups;
	const char *const *models; /* allowed models; none = any model */
	int nmodels;
	int64_t expires_ms; /* unix ms; 0 = never */
	int revoked;
};

/* A cached key, owned by its cache. principal, groups and models point into `strings`,
 * one malloc'd block owned by the entry. */
struct key_entry {
	char id[APIKEY_ID_HEX + 1]; /* empty = free slot */
	unsigned char hash[APIKEY_HASH_LEN];
	int64_t expires_ms;
	int revoked;
	const char *principal;
	const char *groups; /* comma-separated (the gw-groups header), "" when none */
	const char *models; /* nmodels NUL-terminated names back to back */
	int nmodels;
	char *strings;
};

/* Owns slots and every entry in it. cap is a power of two, grown while count <= max. */
struct key_cache {
	struct key_entry *slots;
	size_t cap, count, max;
};

int keys_init(struct key_cache *c, size_t max);
/* Inserts or replaces the entry for r->id. Returns 0, or -1 when the row is malformed
 * (bad id, empty principal, a group containing ','), the cache already holds max keys,
 * or memory runs out. The cache is unchanged on failure. Invalidates entry pointers. */
int keys_put(struct key_cache *c, const struct key_row *r);
const struct key_entry *keys_get(const struct key_cache *c, const char *id);
/* 1 when the key may use model: its list is empty or names it exactly. */
int keys_model_allowed(const struct key_entry *e, const char *model);
void keys_free(struct key_cache *c);

#endif
