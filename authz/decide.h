/* The authorization decision for one request: a pure function of the key store, the
 * unsealed credential, the requested model and the time, so it is unit-testable and a
 * policy module (groups, routes, limits) can later be added in front of the answer. */
#ifndef GW_AUTHZ_DECIDE_H
#define GW_AUTHZ_DECIDE_H

#include "keys.h"
#include "policy.h"

#include <stddef.h>
#include <stdint.h>

/* Plain value type; `key` is borrowed from the cache and valid until its next change. */
struct decision {
	int allowed;
	int status;                  /* 0 when allowed, else the HTTP status of the denial */
	const char *reason;          /* for the audit log: says exactly why (static string) */
	const char *type;            /* OpenAI error type (static) */
	const char *code;            /* OpenAI error code (static) */
	char message[384];           /* for the client: never says which check failed on a key */
	const struct key_entry *key; /* set once the secret verified */
	char rule[32];               /* "api-key:<id>" once the secret verified */
};

/* cred: the unsealed credential (len bytes, not NUL-terminated; an optional "Bearer "
 * prefix is ignored), or NULL when the request carried none. model NULL skips the
 * key's own model check (serve.c checks the intersection with the policy instead). */
void decide(const struct key_cache *c, const void *cred, size_t len, const char *model,
	    int64_t now_ms, struct decision *d);

/* A 401 "invalid API key" with the given audit reason, for failures before decide()
 * (a credential that cannot be unsealed). */
void decide_deny_credential(struct decision *d, const char *reason);

/* The identity a verified key stands for. */
void decide_identity(const struct key_entry *e, struct identity *id);

#endif
