/* Pure request checks with no libevent server behind them: the route table, the body
 * check and the request-head framing parser, so unit tests and fuzzers can call them. */
#ifndef GW_INGRESS_CHECK_H
#define GW_INGRESS_CHECK_H

#include <stddef.h>
#include <stdint.h>

enum route_kind {
	ROUTE_OPENAI,         /* POST with a JSON body, sent upstream */
	ROUTE_MODELS,         /* GET /v1/models */
	ROUTE_LIST_ENDPOINTS, /* GET /resource_server/list-endpoints */
	ROUTE_JOBS,           /* GET /resource_server/{cluster}/jobs */
	ROUTE_WHOAMI,         /* GET /resource_server/whoami */
};

/* A parsed client path. Plain value type. */
struct route_match {
	enum route_kind kind;
	const char *upstream; /* gw-route (static) */
	const char *label;    /* the route's template, for metrics and audit (static) */
	const char *allow;    /* the one method it takes: "POST" or "GET" */
	char cluster[64];     /* FIRST base URL parts; empty when absent */
	char framework[64];
};

/* Matches path (no query) against the routes; accepts one trailing slash. Returns 0
 * and fills *out, or -1 (unknown route: 404). */
int check_route(const char *path, struct route_match *out);

/* True when s is a FIRST cluster or framework name: [A-Za-z0-9._-]{1,63}. */
int check_name(const char *s, size_t n);

struct body_limits {
	int max_depth; /* deepest nesting of arrays/objects */
};

/* What the body check found. Plain value type. */
struct body_result {
	int status;        /* 0 ok, else the HTTP status to answer (400) */
	const char *code;  /* OpenAI error code (static) */
	char message[300]; /* for the client */
	char model[256];
	int stream;
};

/* Checks a request body: JSON (jansson: strict, UTF-8), no nesting deeper than
 * lim->max_depth (checked by a scan before any tree is built), an object with a
 * printable string `model` of 1-255 bytes and `stream` boolean or null.
 * Returns out->status. */
int check_body(const unsigned char *bytes, size_t len, const struct body_limits *lim,
	       struct body_result *out);

/* Deepest array/object nesting in a JSON text, stopping early once past limit
 * (returns limit + 1 then). Strings and escapes are skipped properly. */
int check_json_depth(const unsigned char *bytes, size_t len, int limit);

/* True when the Content-Type is application/json (parameters allowed) or absent. */
int check_content_type(const char *ct);

/* The request head of one HTTP/1.x request, seen line by line by the connection
 * filter before libevent parses it. Plain value type; reset with head_reset. */
struct head_limits {
	size_t max_header_bytes; /* whole head, request line included */
	int max_headers;
	uint64_t max_body;
};

enum head_verdict {
	HEAD_MORE = 0, /* feed the next line */
	HEAD_DONE,     /* head complete and acceptable: body framing in the struct */
	HEAD_REJECT,   /* status/code/message say why; the connection is closed */
};

struct head_state {
	size_t bytes;
	int nheaders;
	int seen_request_line;
	int has_cl;
	uint64_t content_length;
	int chunked;
	int has_te;
	int status;
	const char *code;
	const char *message;
};

void head_reset(struct head_state *h);
/* line excludes its line ending; raw_len includes it (for the size limit). */
enum head_verdict head_line(struct head_state *h, const struct head_limits *lim, const char *line,
			    size_t len, size_t raw_len);

/* Chunked body framing: parses "hex[;ext]" chunk-size lines. Returns 0 and the size,
 * or -1 on a malformed line. */
int check_chunk_size(const char *line, size_t len, uint64_t *size);

#endif
