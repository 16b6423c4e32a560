/* Token usage as OpenAI-compatible endpoints report it ("usage" object), read from a
 * whole JSON body or from one SSE data payload. */
#ifndef GW_DISPATCHER_USAGE_H
#define GW_DISPATCHER_USAGE_H

#include <jansson.h>
#include <stddef.h>

/* Plain value type. */
struct usage {
	long long prompt_tokens;
	long long completion_tokens;
	long long total_tokens;
};

/* Reads a "usage" object: prompt_tokens is required, completion_tokens defaults to 0
 * (embeddings have none), total_tokens to their sum. All must be integers >= 0.
 * Returns 0, or -1 when u is not such an object (null, missing, malformed). */
int usage_from_object(const json_t *u, struct usage *out);

/* Parses a JSON document and reads its top-level "usage". 0 or -1. */
int usage_from_json(const char *buf, size_t len, struct usage *out);

#endif
