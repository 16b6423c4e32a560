/* OAuth2 token introspection (RFC 7662) of opaque bearer tokens, as Globus Auth answers
 * it: a non-blocking evhttp client (http, or https with certificate verification) and
 * a cache keyed by the SHA-256 of the token. Requests for one token share one call;
 * the caller parks its work until the answer and resumes it from the callback. */
#ifndef GW_AUTHZ_INTROSPECT_H
#define GW_AUTHZ_INTROSPECT_H

#include "policy.h"

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

#define INTROSPECT_ACTIVE_MAX_MS (10 * 60 * 1000) /* an active answer: min(exp, 10 min) */
#define INTROSPECT_INACTIVE_MS   (60 * 1000)
#define INTROSPECT_TOKEN_MAX     4096

enum introspect_state { INTRO_PENDING = 0, INTRO_ACTIVE, INTRO_INACTIVE };

/* What a waiting request gets back. */
enum introspect_answer { INTRO_OK = 0, INTRO_DENIED, INTRO_UNAVAILABLE };

struct introspect;

/* Called once per waiter from the loop; id is valid for the call only. */
typedef void (*introspect_done_fn)(void *waiter, enum introspect_answer ans,
				   const struct identity *id, const char *why);

/* One cached answer (or a call under way). Owned by the cache; waiters are opaque
 * pointers owned by the caller, handed back exactly once. */
struct intro_entry {
	char digest[65];
	enum introspect_state state;
	struct identity id;
	int64_t until_ms;
	void **waiters;
	int nwaiters, capwaiters;
	struct intro_entry *next;
	struct introspect *owner;
	void *call; /* the evhttp request under way */
	void *conn; /* its evhttp connection */
};

/* Settings; strings copied. */
struct introspect_config {
	const char *url;
	const char *client_id;
	const char *client_secret; /* copied, cleansed on free */
	int timeout_ms;
	size_t max_entries;
};

struct introspect *introspect_new(struct event_base *base, const struct introspect_config *cfg,
				  introspect_done_fn done);
void introspect_free(struct introspect *in);
/* Verifies an https endpoint against this PEM CA file instead of the system store.
 * 0, or -1 (logged); no-op for http. */
int introspect_set_ca_file(struct introspect *in, const char *ca_file);

/* Looks tok up. Returns INTRO_OK / INTRO_DENIED from the cache (id filled on OK), or -1
 * when the waiter was parked until the answer (done will be called), or
 * INTRO_UNAVAILABLE when no call can be started (cache full, out of memory). */
int introspect_lookup(struct introspect *in, const char *tok, size_t len, int64_t now_ms,
		      void *waiter, struct identity *id);

/* Drops expired entries. */
void introspect_tick(struct introspect *in, int64_t now_ms);

/* Parses an introspection answer (JSON) into id. Returns 1 active, 0 inactive, -1
 * malformed. Exposed for tests. */
int introspect_parse(const char *body, size_t len, int64_t now_ms, struct identity *id,
		     int64_t *until_ms);

size_t introspect_count(const struct introspect *in);

/* Caches an active answer for tok without a call (the bench measures cached lookups
 * with it). Returns 0, or -1 when full or out of memory. */
int introspect_put(struct introspect *in, const char *tok, size_t len, const struct identity *id,
		   int64_t until_ms);

#endif
