/* The compliance API on the auditor's admin port: GET /audit/events and
 * GET /audit/report, behind their own API key (GW_AUDIT_API_KEY_FILE). */
#ifndef GW_API_H
#define GW_API_H

#include "runtime.h"

#include <libpq-fe.h>

/* One per `auditor serve`, owned by main. */
struct api {
	struct runtime *rt;        /* borrowed */
	unsigned char key_sha[32]; /* SHA-256 of the API key: compared in constant time */
	char *url;                 /* owned; a credential, never logged */
	PGconn *conn;              /* owned; opened on first use, reopened after a failure */
	long long timeout_ms;      /* GW_AUDIT_API_TIMEOUT_MS: each query's statement_timeout */
	int enabled;
};

/* Reads GW_AUDIT_API_KEY[_FILE], GW_AUDIT_API_DATABASE_URL[_FILE] (default: the
 * writer's GW_DATABASE_URL) and GW_AUDIT_API_TIMEOUT_MS, and adds the routes to the
 * admin listener. Without a key the routes are not served (404). 0 or -1 (logged). */
int api_init(struct api *a, struct runtime *rt);
void api_free(struct api *a);

#endif
