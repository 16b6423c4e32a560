/* The endpoint registry: the compute endpoints named in GW_ENDPOINTS_FILE, validated
 * field by field, in file order (the order routing prefers them in). */
#ifndef GW_DISPATCHER_REGISTRY_H
#define GW_DISPATCHER_REGISTRY_H

#include <stddef.h>

#define REGISTRY_MAX_ENDPOINTS 1024
#define REGISTRY_MAX_MODELS    256 /* per endpoint */
#define REGISTRY_NAME_MAX      64
#define REGISTRY_MODEL_MAX     256
#define REGISTRY_FILE_MAX      (1 << 20)
#define REGISTRY_KEY_MAX       8192

/* One endpoint as configured. Owned by its registry; models and api_key are malloc'd
 * and freed by registry_free. */
struct endpoint {
	char name[REGISTRY_NAME_MAX];
	char url[512];         /* as configured, without trailing slashes */
	char host[256];        /* for connecting: no brackets around an IPv6 address */
	char host_header[300]; /* for the Host header: host[:port] as written */
	unsigned short port;
	char base_path[256]; /* "" or "/prefix"; the route is appended */
	char **models;
	int nmodels;
	char cluster[64];
	char framework[32];
	int weight;
	int max_concurrent;
	int timeout_ms;            /* total, from sending to the last byte */
	int connect_timeout_ms;    /* TCP (and TLS) connect */
	int first_byte_timeout_ms; /* from sending to the answer's status line */
	int chunk_timeout_ms;      /* silence between two arrivals of the answer */
	int https;
	char api_key_file[512];
	char *api_key; /* the secret itself, NULL when none; never logged or printed */
};

/* Owned by the service (or test); endpoints is malloc'd, freed by registry_free. */
struct registry {
	struct endpoint *eps;
	int n;
};

/* Reads and validates the file. On failure returns -1 with err naming the file, the
 * field and what to fix; r is left empty. */
int registry_load(struct registry *r, const char *path, char *err, size_t errcap);

/* Validates a JSON document already in memory (the file's contents). */
int registry_parse(struct registry *r, const char *json, size_t len, char *err, size_t errcap);

/* Releases one endpoint's allocations (models, api_key). */
void registry_endpoint_free(struct endpoint *ep);

/* True when ep lists model. */
int registry_endpoint_serves(const struct endpoint *ep, const char *model);

void registry_free(struct registry *r);

#endif
