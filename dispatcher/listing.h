/* The routes answered without a compute call (docs/CONTRACT.md): /v1/models,
 * /resource_server/list-endpoints and /resource_server/jobs, built from the live
 * endpoints and filtered by the models the principal may use (gw-models). */
#ifndef GW_DISPATCHER_LISTING_H
#define GW_DISPATCHER_LISTING_H

#include "backend.h"

/* allowed: "*" or a comma list (gw-models); NULL or "" allows nothing. */
int listing_allowed(const char *allowed, const char *model);

/* Each returns a malloc'd JSON body (caller frees) or NULL on allocation failure.
 * cluster/framework "" = any. */
char *listing_models(struct backend *const *bs, int n, const char *allowed, const char *cluster,
		     const char *framework, long long created);
char *listing_endpoints(struct backend *const *bs, int n, const char *allowed);
char *listing_jobs(struct backend *const *bs, int n, const char *allowed, const char *cluster);

#endif
