/* A non-blocking HTTP GET of one document (the JWKS URL): evhttp client, http or https
 * with OpenSSL peer and host name verification, one fetch at a time, bounded size. */
#ifndef GW_AUTHZ_FETCH_H
#define GW_AUTHZ_FETCH_H

#include <event2/event.h>
#include <stddef.h>

/* status 0 = no answer (connection failure or timeout); body valid for the call only. */
typedef void (*fetch_done_fn)(void *arg, int status, const char *body, size_t len);

struct fetcher;

/* NULL (logged, naming what) on a URL that is not http(s)://host... */
struct fetcher *fetch_new(struct event_base *base, const char *url, int timeout_ms, size_t max_body,
			  fetch_done_fn done, void *arg);
/* Starts a GET unless one is under way. Returns 0 started, 1 busy, -1 failed (logged). */
int fetch_start(struct fetcher *f);
void fetch_free(struct fetcher *f);

#endif
