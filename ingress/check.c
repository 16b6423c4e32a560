/* Pure request checks: routes, body, request-head framing. No I/O, no libevent server:
 * the fuzz targets in fuzz/ drive these functions directly. */
#include "check.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

struct openai_route {
	const char *suffix; /* after .../v1 */
	enum route_kind kind;
	const char *upstream; /* gw-route */
	const char *label;
	const char *first_label;
};

static const struct openai_route openai_routes[] = {
    {"/chat/completions", ROUTE_OPENAI, "/v1/chat/completions", "/v1/chat/completions",
     "/resource_server/{cluster}/{framework}/v1/chat/completions"},
    {"/completions", ROUTE_OPENAI, "/v1/completions", "/v1/completions",
     "/resource_server/{cluster}/{framework}/v1/completions"},
    {"/embeddings", ROUTE_OPENAI, "/v1/embeddings", "/v1/embeddings",
     "/resource_server/{cluster}/{framework}/v1/embeddings"},
    {"/models", ROUTE_MODELS, "/v1/models", "/v1/models",
     "/resource_server/{cluster}/{framework}/v1/models"},
};

int check_name(const char *s, size_t n)
{
	if (n == 0 || n > 63)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

static int match_v1(const char *rest, size_t n, int first, struct route_match *out)
{
	for (size_t i = 0; i < sizeof openai_routes / sizeof openai_routes[0]; i++) {
		const struct openai_route *r = &openai_routes[i];
		if (strlen(r->suffix) == n && memcmp(rest, r->suffix, n) == 0) {
			out->kind = r->kind;
			out->upstream = r->upstream;
			out->label = first ? r->first_label : r->label;
			out->allow = r->kind == ROUTE_OPENAI ? "POST" : "GET";
			return 0;
		}
	}
	return -1;
}

int check_route(const char *path, struct route_match *out)
{
	memset(out, 0, sizeof *out);
	if (!path)
		return -1;
	size_t n = strlen(path);
	/* FIRST's clients use trailing slashes (".../chat/completions/"). */
	if (n > 1 && path[n - 1] == '/')
		n--;
	if (n >= 3 && memcmp(path, "/v1", 3) == 0)
		return match_v1(path + 3, n - 3, 0, out);
	static const char rs[] = "/resource_server/";
	size_t rl = sizeof rs - 1;
	if (n <= rl || memcmp(path, rs, rl) != 0)
		return -1;
	const char *p = path + rl, *end = path + n;
	size_t left = (size_t)(end - p);
	if (left == strlen("list-endpoints") && memcmp(p, "list-endpoints", left) == 0) {
		out->kind = ROUTE_LIST_ENDPOINTS;
		out->upstream = "/resource_server/list-endpoints";
		out->label = out->upstream;
		out->allow = "GET";
		return 0;
	}
	if (left == strlen("whoami") && memcmp(p, "whoami", left) == 0) {
		out->kind = ROUTE_WHOAMI;
		out->upstream = "/resource_server/whoami";
		out->label = out->upstream;
		out->allow = "GET";
		return 0;
	}
	const char *s1 = memchr(p, '/', left);
	if (!s1 || !check_name(p, (size_t)(s1 - p)))
		return -1;
	memcpy(out->cluster, p, (size_t)(s1 - p));
	out->cluster[s1 - p] = 0;
	const char *q = s1 + 1;
	left = (size_t)(end - q);
	if (left == 4 && memcmp(q, "jobs", 4) == 0) {
		out->kind = ROUTE_JOBS;
		out->upstream = "/resource_server/jobs";
		out->label = "/resource_server/{cluster}/jobs";
		out->allow = "GET";
		return 0;
	}
	const char *s2 = memchr(q, '/', left);
	if (!s2 || !check_name(q, (size_t)(s2 - q)))
		return -1;
	memcpy(out->framework, q, (size_t)(s2 - q));
	out->framework[s2 - q] = 0;
	const char *r = s2;
	left = (size_t)(end - r);
	if (left < 3 || memcmp(r, "/v1", 3) != 0)
		return -1;
	return match_v1(r + 3, left - 3, 1, out);
}

int check_json_depth(const unsigned char *b, size_t len, int limit)
{
	int depth = 0, max = 0, in_str = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = b[i];
		if (in_str) {
			if (c == '\\')
				i++; /* the escaped byte cannot end the string */
			else if (c == '"')
				in_str = 0;
			continue;
		}
		if (c == '"') {
			in_str = 1;
		} else if (c == '[' || c == '{') {
			if (++depth > max) {
				max = depth;
				if (max > limit)
					return limit + 1;
			}
		} else if ((c == ']' || c == '}') && depth > 0) {
			depth--;
		}
	}
	return max;
}

int check_content_type(const char *ct)
{
	if (!ct)
		return 1; /* absent: accepted, the body is checked as JSON anyway */
	size_t n = strcspn(ct, ";");
	while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
		n--;
	return n == strlen("application/json") && strncasecmp(ct, "application/json", n) == 0;
}

static int model_ok(const char *m)
{
	size_t n = strlen(m);
	if (n == 0 || n > 255)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)m[i] < 0x20 || m[i] == 0x7f)
			return 0;
	return 1;
}

static int body_fail(struct body_result *out, const char *code, const char *msg)
{
	out->status = 400;
	out->code = code;
	snprintf(out->message, sizeof out->message, "%s", msg);
	return out->status;
}

int check_body(const unsigned char *bytes, size_t len, const struct body_limits *lim,
	       struct body_result *out)
{
	memset(out, 0, sizeof *out);
	if (check_json_depth(bytes, len, lim->max_depth) > lim->max_depth) {
		char msg[128];
		snprintf(msg, sizeof msg, "request body nests deeper than %d levels",
			 lim->max_depth);
		return body_fail(out, "json_too_deep", msg);
	}
	json_error_t jerr;
	json_t *doc = json_loadb((const char *)bytes, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!doc) {
		char msg[300];
		snprintf(msg, sizeof msg, "request body is not valid JSON: %s", jerr.text);
		return body_fail(out, "invalid_json", msg);
	}
	json_t *model = json_object_get(doc, "model");
	json_t *stream = json_object_get(doc, "stream");
	if (!json_is_object(doc))
		body_fail(out, "invalid_request", "request body must be a JSON object");
	else if (!json_is_string(model))
		body_fail(out, "invalid_request", "'model' is required and must be a string");
	else if (!model_ok(json_string_value(model)))
		body_fail(out, "invalid_request", "'model' must be 1-255 printable characters");
	else if (stream && !json_is_boolean(stream) && !json_is_null(stream))
		body_fail(out, "invalid_request", "'stream' must be a boolean");
	if (!out->status) {
		snprintf(out->model, sizeof out->model, "%s", json_string_value(model));
		out->stream = json_is_true(stream);
	}
	json_decref(doc);
	return out->status;
}

void head_reset(struct head_state *h)
{
	memset(h, 0, sizeof *h);
}

static enum head_verdict head_reject(struct head_state *h, int status, const char *code,
				     const char *message)
{
	h->status = status;
	h->code = code;
	h->message = message;
	return HEAD_REJECT;
}

static int name_is(const char *line, size_t nlen, const char *name)
{
	return nlen == strlen(name) && strncasecmp(line, name, nlen) == 0;
}

/* Value without surrounding blanks. */
static void trim(const char **v, size_t *n)
{
	while (*n && (**v == ' ' || **v == '\t')) {
		(*v)++;
		(*n)--;
	}
	while (*n && ((*v)[*n - 1] == ' ' || (*v)[*n - 1] == '\t'))
		(*n)--;
}

/* "METHOD SP target SP HTTP/1.x": evhttp's answer to anything else is an HTML page. */
static enum head_verdict request_line(struct head_state *h, const char *line, size_t len)
{
	static const char *const methods[] = {"GET",     "POST",  "HEAD",  "PUT",    "DELETE",
					      "OPTIONS", "PATCH", "TRACE", "CONNECT"};
	const char *sp1 = memchr(line, ' ', len);
	if (!sp1)
		return head_reject(h, 400, "bad_request_line", "malformed request line");
	size_t ml = (size_t)(sp1 - line);
	const char *rest = sp1 + 1;
	size_t rl = len - ml - 1;
	const char *sp2 = rl ? memchr(rest, ' ', rl) : NULL;
	if (!sp2 || sp2 == rest)
		return head_reject(h, 400, "bad_request_line", "malformed request line");
	const char *ver = sp2 + 1;
	size_t vl = len - (size_t)(ver - line);
	if (vl < 5 || memcmp(ver, "HTTP/", 5) != 0)
		return head_reject(h, 400, "bad_request_line", "malformed request line");
	if (!(vl == 8 && (memcmp(ver, "HTTP/1.1", 8) == 0 || memcmp(ver, "HTTP/1.0", 8) == 0)))
		return head_reject(h, 505, "http_version_not_supported",
				   "only HTTP/1.0 and HTTP/1.1 are supported");
	for (const char *c = rest; c < sp2; c++)
		if ((unsigned char)*c <= 0x20 || *c == 0x7f)
			return head_reject(h, 400, "bad_request_line", "malformed request target");
	for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
		if (strlen(methods[i]) == ml && memcmp(line, methods[i], ml) == 0)
			return HEAD_MORE;
	return head_reject(h, 405, "method_not_allowed", "method not allowed");
}

enum head_verdict head_line(struct head_state *h, const struct head_limits *lim, const char *line,
			    size_t len, size_t raw_len)
{
	h->bytes += raw_len;
	if (h->bytes > lim->max_header_bytes)
		return head_reject(h, 431, "headers_too_large", "request headers are too large");
	if (!h->seen_request_line) {
		if (len == 0)
			return HEAD_MORE; /* blank lines before a request are tolerated */
		h->seen_request_line = 1;
		return request_line(h, line, len);
	}
	if (len == 0) {
		if (h->has_te && h->has_cl)
			return head_reject(h, 400, "bad_framing",
					   "Content-Length and Transfer-Encoding together");
		if (h->has_te && !h->chunked)
			return head_reject(h, 501, "unsupported_transfer_encoding",
					   "only Transfer-Encoding: chunked is supported");
		if (h->has_cl && h->content_length > lim->max_body)
			return head_reject(h, 413, "body_too_large", "request body is too large");
		return HEAD_DONE;
	}
	if (line[0] == ' ' || line[0] == '\t')
		return head_reject(h, 400, "bad_header", "folded header lines are not accepted");
	if (++h->nheaders > lim->max_headers)
		return head_reject(h, 431, "too_many_headers", "too many request headers");
	const char *colon = memchr(line, ':', len);
	if (!colon || colon == line)
		return head_reject(h, 400, "bad_header", "malformed header line");
	size_t nlen = (size_t)(colon - line);
	for (size_t i = 0; i < nlen; i++)
		if (line[i] == ' ' || line[i] == '\t')
			return head_reject(h, 400, "bad_header", "malformed header name");
	const char *v = colon + 1;
	size_t vn = len - nlen - 1;
	trim(&v, &vn);
	if (name_is(line, nlen, "content-length")) {
		uint64_t x = 0;
		if (vn == 0 || vn > 19)
			return head_reject(h, 400, "bad_framing", "invalid Content-Length");
		for (size_t i = 0; i < vn; i++) {
			if (v[i] < '0' || v[i] > '9')
				return head_reject(h, 400, "bad_framing", "invalid Content-Length");
			x = x * 10 + (uint64_t)(v[i] - '0');
		}
		if (h->has_cl && x != h->content_length)
			return head_reject(h, 400, "bad_framing",
					   "differing Content-Length headers");
		h->has_cl = 1;
		h->content_length = x;
	} else if (name_is(line, nlen, "transfer-encoding")) {
		if (h->has_te)
			return head_reject(h, 400, "bad_framing", "repeated Transfer-Encoding");
		h->has_te = 1;
		h->chunked = vn == 7 && strncasecmp(v, "chunked", 7) == 0;
	}
	return HEAD_MORE;
}

int check_chunk_size(const char *line, size_t len, uint64_t *size)
{
	uint64_t x = 0;
	size_t i = 0;
	for (; i < len; i++) {
		char c = line[i];
		int d = (c >= '0' && c <= '9')   ? c - '0'
			: (c >= 'a' && c <= 'f') ? c - 'a' + 10
			: (c >= 'A' && c <= 'F') ? c - 'A' + 10
						 : -1;
		if (d < 0)
			break;
		if (i >= 15)
			return -1; /* more than 2^60: nobody sends that honestly */
		x = x * 16 + (uint64_t)d;
	}
	if (i == 0 || (i < len && line[i] != ';' && line[i] != ' ' && line[i] != '\t'))
		return -1;
	*size = x;
	return 0;
}
