/* Incremental scan of a Server-Sent Events stream for the last usage block, fed with
 * the bytes as they arrive (any chunk boundaries). Only `data:` lines are read; each
 * is taken as one JSON payload, which is how OpenAI-compatible servers frame chunks. */
#ifndef GW_DISPATCHER_SSE_H
#define GW_DISPATCHER_SSE_H

#include "usage.h"

#include <stddef.h>

/* Owned by its request; line is malloc'd (line_max bytes) and freed by sse_usage_free. */
struct sse_usage {
	char *line;
	size_t cap, len;
	int overflow; /* the current line outgrew cap: skip to its end */
	int after_cr; /* the last byte was CR: a following LF ends nothing new */
	int have;     /* usage holds the last usage block seen */
	struct usage usage;
	unsigned long lines, overlong, malformed;
	unsigned long broken; /* data lines that are neither JSON nor [DONE] */
};

int sse_usage_init(struct sse_usage *s, size_t line_max);
void sse_usage_feed(struct sse_usage *s, const void *data, size_t len);
/* End of stream: a last line without its newline still counts. */
void sse_usage_finish(struct sse_usage *s);
void sse_usage_free(struct sse_usage *s);

#endif
