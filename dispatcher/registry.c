/* The endpoint registry: parses GW_ENDPOINTS_FILE strictly (unknown fields are errors,
 * so a typo never silently falls back to a default) and loads each API key once. */
#include "registry.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const frameworks[] = {"vllm",   "llama.cpp", "tgi",   "ollama",
					 "sglang", "openai",    "other", NULL};

static const char *const known_fields[] = {"name",
					   "url",
					   "models",
					   "cluster",
					   "framework",
					   "weight",
					   "max_concurrent",
					   "timeout_ms",
					   "api_key_file",
					   "connect_timeout_ms",
					   "first_byte_timeout_ms",
					   "chunk_timeout_ms",
					   NULL};

static int fail(char *err, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, cap, fmt, ap);
	va_end(ap);
	return -1;
}

static int name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n >= REGISTRY_NAME_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!isalnum(c) && c != '-' && c != '_' && c != '.')
			return 0;
	}
	return 1;
}

static int printable(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return 0;
	return 1;
}

/* http(s)://host[:port][/path]; anything carrying credentials or a query is refused
 * with the reason. */
static int parse_url(struct endpoint *ep, const char *url, const char *where, char *err, size_t cap)
{
	size_t skip = 7;
	ep->https = strncmp(url, "https://", 8) == 0;
	if (ep->https)
		skip = 8;
	else if (strncmp(url, "http://", 7) != 0)
		return fail(err, cap, "%s.url: must start with http:// or https:// (got \"%.64s\")",
			    where, url);
	size_t len = strlen(url);
	while (len > skip && url[len - 1] == '/')
		len--;
	if (len >= sizeof ep->url)
		return fail(err, cap, "%s.url: longer than %zu characters", where,
			    sizeof ep->url - 1);
	memcpy(ep->url, url, len);
	ep->url[len] = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)ep->url[i];
		if (c <= 0x20 || c >= 0x7f)
			return fail(err, cap, "%s.url: contains a space or control character",
				    where);
		if (c == '?' || c == '#')
			return fail(err, cap, "%s.url: must not have a query or fragment", where);
		if (c == '@')
			return fail(err, cap,
				    "%s.url: must not carry credentials; put the key in "
				    "api_key_file",
				    where);
	}
	const char *auth = ep->url + skip;
	const char *slash = strchr(auth, '/');
	size_t alen = slash ? (size_t)(slash - auth) : strlen(auth);
	if (alen == 0)
		return fail(err, cap, "%s.url: has no host", where);
	if (alen >= sizeof ep->host_header)
		return fail(err, cap, "%s.url: host too long", where);
	memcpy(ep->host_header, auth, alen);
	ep->host_header[alen] = 0;

	const char *hs = ep->host_header, *he, *portstr = NULL;
	if (hs[0] == '[') {
		he = strchr(hs, ']');
		if (!he || he == hs + 1)
			return fail(err, cap, "%s.url: bad IPv6 address", where);
		for (const char *p = hs + 1; p < he; p++)
			if (!isxdigit((unsigned char)*p) && *p != ':' && *p != '.')
				return fail(err, cap, "%s.url: bad IPv6 address", where);
		if (he[1] == ':')
			portstr = he + 2;
		else if (he[1])
			return fail(err, cap, "%s.url: bad host", where);
		hs++;
	} else {
		const char *colon = strchr(hs, ':');
		he = colon ? colon : hs + strlen(hs);
		if (colon)
			portstr = colon + 1;
		if (he == hs)
			return fail(err, cap, "%s.url: has no host", where);
		for (const char *p = hs; p < he; p++)
			if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.')
				return fail(err, cap, "%s.url: bad character in host", where);
	}
	size_t hl = (size_t)(he - hs);
	if (hl >= sizeof ep->host)
		return fail(err, cap, "%s.url: host too long", where);
	memcpy(ep->host, hs, hl);
	ep->host[hl] = 0;
	ep->port = ep->https ? 443 : 80;
	if (portstr) {
		char *end;
		errno = 0;
		long p = strtol(portstr, &end, 10);
		if (end == portstr || *end || errno || p < 1 || p > 65535)
			return fail(err, cap, "%s.url: port must be 1-65535", where);
		ep->port = (unsigned short)p;
	}
	const char *path = slash ? slash : "";
	if (strlen(path) >= sizeof ep->base_path)
		return fail(err, cap, "%s.url: path too long", where);
	snprintf(ep->base_path, sizeof ep->base_path, "%s", path);
	return 0;
}

static int get_int(json_t *o, const char *key, long long def, long long min, long long max,
		   int *out, const char *where, char *err, size_t cap)
{
	json_t *v = json_object_get(o, key);
	if (!v) {
		*out = (int)def;
		return 0;
	}
	if (!json_is_integer(v))
		return fail(err, cap, "%s.%s: must be an integer", where, key);
	long long x = json_integer_value(v);
	if (x < min || x > max)
		return fail(err, cap, "%s.%s: must be between %lld and %lld (got %lld)", where, key,
			    min, max, x);
	*out = (int)x;
	return 0;
}

static int get_str(json_t *o, const char *key, int required, char *out, size_t outcap,
		   const char *where, char *err, size_t cap, const char **sp)
{
	json_t *v = json_object_get(o, key);
	*sp = NULL;
	if (!v) {
		if (required)
			return fail(err, cap, "%s: missing required field \"%s\"", where, key);
		if (out)
			out[0] = 0;
		return 0;
	}
	if (!json_is_string(v))
		return fail(err, cap, "%s.%s: must be a string", where, key);
	const char *s = json_string_value(v);
	if (!*s)
		return fail(err, cap, "%s.%s: must not be empty", where, key);
	if (strlen(s) != json_string_length(v) || !printable(s))
		return fail(err, cap, "%s.%s: contains a control character", where, key);
	if (out) {
		if (strlen(s) >= outcap)
			return fail(err, cap, "%s.%s: longer than %zu characters", where, key,
				    outcap - 1);
		snprintf(out, outcap, "%s", s);
	}
	*sp = s;
	return 0;
}

/* Reads an API key file once: bounded, trailing newline removed, never logged. */
static int read_key(struct endpoint *ep, const char *where, char *err, size_t cap)
{
	int fd = open(ep->api_key_file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(err, cap, "%s.api_key_file: cannot open %s: %s", where,
			    ep->api_key_file, strerror(errno));
	char *buf = malloc(REGISTRY_KEY_MAX + 1);
	if (!buf) {
		close(fd);
		return fail(err, cap, "%s.api_key_file: out of memory", where);
	}
	size_t n = 0;
	for (;;) {
		ssize_t r = read(fd, buf + n, REGISTRY_KEY_MAX + 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			close(fd);
			free(buf);
			return fail(err, cap, "%s.api_key_file: cannot read %s: %s", where,
				    ep->api_key_file, strerror(e));
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > REGISTRY_KEY_MAX) {
			close(fd);
			free(buf);
			return fail(err, cap, "%s.api_key_file: %s is larger than %d bytes", where,
				    ep->api_key_file, REGISTRY_KEY_MAX);
		}
	}
	close(fd);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		n--;
	buf[n] = 0;
	if (n == 0 || strlen(buf) != n || !printable(buf)) {
		free(buf);
		return fail(err, cap, "%s.api_key_file: %s is empty or has control characters",
			    where, ep->api_key_file);
	}
	ep->api_key = buf;
	return 0;
}

static int parse_models(struct endpoint *ep, json_t *o, const char *where, char *err, size_t cap)
{
	json_t *m = json_object_get(o, "models");
	if (!m)
		return fail(err, cap, "%s: missing required field \"models\"", where);
	if (!json_is_array(m) || json_array_size(m) == 0)
		return fail(err, cap, "%s.models: must be a non-empty array of model names", where);
	size_t n = json_array_size(m);
	if (n > REGISTRY_MAX_MODELS)
		return fail(err, cap, "%s.models: more than %d models", where, REGISTRY_MAX_MODELS);
	ep->models = calloc(n, sizeof *ep->models);
	if (!ep->models)
		return fail(err, cap, "%s.models: out of memory", where);
	for (size_t i = 0; i < n; i++) {
		json_t *v = json_array_get(m, i);
		if (!json_is_string(v) || json_string_length(v) == 0)
			return fail(err, cap, "%s.models[%zu]: must be a non-empty string", where,
				    i);
		const char *s = json_string_value(v);
		if (strlen(s) != json_string_length(v) || !printable(s) ||
		    strlen(s) >= REGISTRY_MODEL_MAX)
			return fail(err, cap,
				    "%s.models[%zu]: must be printable and shorter than %d", where,
				    i, REGISTRY_MODEL_MAX);
		for (int j = 0; j < ep->nmodels; j++)
			if (strcmp(ep->models[j], s) == 0)
				return fail(err, cap, "%s.models[%zu]: \"%s\" is listed twice",
					    where, i, s);
		ep->models[ep->nmodels] = strdup(s);
		if (!ep->models[ep->nmodels])
			return fail(err, cap, "%s.models: out of memory", where);
		ep->nmodels++;
	}
	return 0;
}

static int parse_endpoint(struct endpoint *ep, json_t *o, const char *where, char *err, size_t cap)
{
	if (!json_is_object(o))
		return fail(err, cap, "%s: must be an object", where);
	const char *key;
	json_t *val;
	json_object_foreach(o, key, val)
	{
		int known = 0;
		for (int i = 0; known_fields[i]; i++)
			known |= strcmp(key, known_fields[i]) == 0;
		if (!known)
			return fail(err, cap,
				    "%s: unknown field \"%.64s\" (known: name, url, models, "
				    "cluster, framework, weight, max_concurrent, timeout_ms, "
				    "connect_timeout_ms, first_byte_timeout_ms, chunk_timeout_ms, "
				    "api_key_file)",
				    where, key);
	}
	const char *s;
	if (get_str(o, "name", 1, ep->name, sizeof ep->name, where, err, cap, &s))
		return -1;
	if (!name_ok(ep->name))
		return fail(err, cap, "%s.name: use letters, digits, '-', '_' and '.' only", where);
	if (get_str(o, "url", 1, NULL, 0, where, err, cap, &s) || parse_url(ep, s, where, err, cap))
		return -1;
	if (parse_models(ep, o, where, err, cap))
		return -1;
	if (get_str(o, "cluster", 0, ep->cluster, sizeof ep->cluster, where, err, cap, &s))
		return -1;
	if (get_str(o, "framework", 0, ep->framework, sizeof ep->framework, where, err, cap, &s))
		return -1;
	if (!s) {
		snprintf(ep->framework, sizeof ep->framework, "openai");
	} else {
		int ok = 0;
		for (int i = 0; frameworks[i]; i++)
			ok |= strcmp(s, frameworks[i]) == 0;
		if (!ok)
			return fail(err, cap,
				    "%s.framework: \"%.32s\" is not one of vllm, llama.cpp, tgi, "
				    "ollama, sglang, openai, other",
				    where, s);
	}
	if (get_int(o, "weight", 1, 1, 1000, &ep->weight, where, err, cap) ||
	    get_int(o, "max_concurrent", 64, 1, 100000, &ep->max_concurrent, where, err, cap) ||
	    get_int(o, "timeout_ms", 120000, 1, 3600000, &ep->timeout_ms, where, err, cap) ||
	    get_int(o, "connect_timeout_ms", ep->timeout_ms < 5000 ? ep->timeout_ms : 5000, 1,
		    3600000, &ep->connect_timeout_ms, where, err, cap) ||
	    get_int(o, "first_byte_timeout_ms", ep->timeout_ms < 60000 ? ep->timeout_ms : 60000, 1,
		    3600000, &ep->first_byte_timeout_ms, where, err, cap) ||
	    get_int(o, "chunk_timeout_ms", ep->timeout_ms < 30000 ? ep->timeout_ms : 30000, 1,
		    3600000, &ep->chunk_timeout_ms, where, err, cap))
		return -1;
	if (get_str(o, "api_key_file", 0, ep->api_key_file, sizeof ep->api_key_file, where, err,
		    cap, &s))
		return -1;
	if (s && read_key(ep, where, err, cap))
		return -1;
	return 0;
}

int registry_parse(struct registry *r, const char *json, size_t len, char *err, size_t cap)
{
	json_error_t jerr;
	memset(r, 0, sizeof *r);
	json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fail(err, cap, "not valid JSON: %s (line %d, column %d)", jerr.text,
			    jerr.line, jerr.column);
	int rc = -1;
	const char *key;
	json_t *val;
	if (!json_is_object(root)) {
		fail(err, cap, "the top level must be an object {\"endpoints\": [...]}");
		goto out;
	}
	json_object_foreach(root, key, val)
	{
		if (strcmp(key, "endpoints") != 0) {
			fail(err, cap, "unknown top-level field \"%.64s\" (only \"endpoints\")",
			     key);
			goto out;
		}
	}
	json_t *arr = json_object_get(root, "endpoints");
	if (!arr) {
		fail(err, cap, "missing required field \"endpoints\"");
		goto out;
	}
	if (!json_is_array(arr) || json_array_size(arr) == 0) {
		fail(err, cap, "\"endpoints\" must be a non-empty array");
		goto out;
	}
	size_t n = json_array_size(arr);
	if (n > REGISTRY_MAX_ENDPOINTS) {
		fail(err, cap, "more than %d endpoints", REGISTRY_MAX_ENDPOINTS);
		goto out;
	}
	r->eps = calloc(n, sizeof *r->eps);
	if (!r->eps) {
		fail(err, cap, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		char where[32];
		snprintf(where, sizeof where, "endpoints[%zu]", i);
		struct endpoint *ep = &r->eps[i];
		r->n++; /* counted first so registry_free releases a half-parsed entry */
		if (parse_endpoint(ep, json_array_get(arr, i), where, err, cap))
			goto out;
		for (size_t j = 0; j < i; j++)
			if (strcmp(r->eps[j].name, ep->name) == 0) {
				fail(err, cap, "%s.name: \"%s\" is already used by endpoints[%zu]",
				     where, ep->name, j);
				goto out;
			}
	}
	rc = 0;
out:
	json_decref(root);
	if (rc)
		registry_free(r);
	return rc;
}

int registry_load(struct registry *r, const char *path, char *err, size_t cap)
{
	char inner[768];
	memset(r, 0, sizeof *r);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(err, cap, "GW_ENDPOINTS_FILE %s: cannot open: %s", path,
			    strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > REGISTRY_FILE_MAX) {
		close(fd);
		return fail(err, cap,
			    "GW_ENDPOINTS_FILE %s: not a regular file of at most %d bytes", path,
			    REGISTRY_FILE_MAX);
	}
	size_t size = (size_t)st.st_size, n = 0;
	char *buf = malloc(size + 1);
	if (!buf) {
		close(fd);
		return fail(err, cap, "GW_ENDPOINTS_FILE %s: out of memory", path);
	}
	while (n < size) {
		ssize_t got = read(fd, buf + n, size - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		n += (size_t)got;
	}
	close(fd);
	if (n != size) {
		free(buf);
		return fail(err, cap, "GW_ENDPOINTS_FILE %s: short read", path);
	}
	int rc = registry_parse(r, buf, n, inner, sizeof inner);
	free(buf);
	if (rc)
		return fail(err, cap, "GW_ENDPOINTS_FILE %s: %s", path, inner);
	return 0;
}

int registry_endpoint_serves(const struct endpoint *ep, const char *model)
{
	for (int i = 0; i < ep->nmodels; i++)
		if (strcmp(ep->models[i], model) == 0)
			return 1;
	return 0;
}

void registry_endpoint_free(struct endpoint *ep)
{
	for (int j = 0; j < ep->nmodels; j++)
		free(ep->models[j]);
	free(ep->models);
	ep->models = NULL;
	ep->nmodels = 0;
	if (ep->api_key) {
		/* Do not leave the secret lying in freed heap memory. */
		explicit_bzero(ep->api_key, strlen(ep->api_key));
		free(ep->api_key);
		ep->api_key = NULL;
	}
}

void registry_free(struct registry *r)
{
	for (int i = 0; i < r->n; i++)
		registry_endpoint_free(&r->eps[i]);
	free(r->eps);
	r->eps = NULL;
	r->n = 0;
}
