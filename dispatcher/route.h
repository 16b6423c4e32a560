/* Routing: which endpoint serves one request. Among the endpoints that serve the model
 * (and on FIRST routes belong to the named cluster and framework) whose circuit lets a
 * request through, the one with the fewest outstanding requests relative to its
 * capacity (max_concurrent x weight); endpoints already tried come last. */
#ifndef GW_DISPATCHER_ROUTE_H
#define GW_DISPATCHER_ROUTE_H

#include "backend.h"

enum route_none {
	ROUTE_FOUND = 0,
	ROUTE_NOT_LISTED, /* no endpoint (of that cluster/framework) lists the model */
	ROUTE_ALL_OPEN,   /* some list it, but every circuit is open */
	ROUTE_SATURATED,  /* some could take it, but each is full and its queue too */
};

struct route_query {
	const char *model;
	const char *cluster;      /* "" = any */
	const char *framework;    /* "" = any */
	const char *const *tried; /* names of the endpoints of earlier attempts */
	int ntried;
	int queue_max; /* waiting requests allowed per endpoint */
	int64_t now_us;
	unsigned rr; /* rotates the start so ties spread */
};

/* Returns the index into bs, or -1 with *why set. Does not take a half-open probe slot:
 * the caller does that with breaker_allow on the endpoint it uses. */
int route_pick(struct backend *const *bs, int n, const struct route_query *q,
	       const struct breaker_config *bc, enum route_none *why);

/* Seconds until the earliest open circuit among the model's endpoints may let a
 * probe through (at least 1). */
int route_retry_after(struct backend *const *bs, int n, const struct route_query *q,
		      const struct breaker_config *bc);

#endif
