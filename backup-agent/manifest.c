/* Snapshot manifests: the JSON codec with strict validation, so a damaged or foreign
 * manifest is reported as such instead of being half-believed. */
#include "manifest.h"
#include "store.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

void manifest_time_format(time_t t, char *buf, size_t cap)
{
	struct tm tm;
	if (!gmtime_r(&t, &tm)) {
		snprintf(buf, cap, "1970-01-01T00:00:00Z");
		return;
	}
	snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

int manifest_time_parse(const char *s, time_t *out)
{
	/* Exactly YYYY-MM-DDTHH:MM:SSZ: sscanf alone would also take signs and spaces. */
	static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
	for (size_t i = 0; i < sizeof shape - 1; i++) {
		if (!s[i])
			return -1;
		if (shape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != shape[i])
			return -1;
	}
	struct tm tm;
	memset(&tm, 0, sizeof tm);
	int n = 0;
	if (strlen(s) != 20 ||
	    sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2dZ%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
		   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6 ||
	    n != 20)
		return -1;
	if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 ||
	    tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
		return -1;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	time_t t = timegm(&tm);
	if (t == (time_t)-1)
		return -1;
	*out = t;
	return 0;
}

int manifest_sha256_valid(const char *s)
{
	size_t i;
	for (i = 0; s[i]; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return i == MANIFEST_SHA256_HEX;
}

char *manifest_encode(const struct manifest *m)
{
	time_t t;
	if (!store_id_valid(m->id) || manifest_time_parse(m->created_at, &t) != 0 ||
	    !manifest_sha256_valid(m->sha256) || m->size < 0 || m->duration_ms < 0) {
		log_error("refusing to write an invalid manifest", LS("snapshot_id", m->id));
		return NULL;
	}
	json_t *o = json_pack(
	    "{s:i,s:s,s:s,s:s,s:s,s:s,s:i,s:I,s:s,s:s,s:I,s:b,s:s,s:s,s:I,s:s}", "manifest_version",
	    MANIFEST_VERSION, "id", m->id, "created_at", m->created_at, "format", m->format,
	    "database", m->database, "server_version", m->server_version, "server_version_num",
	    m->server_version_num, "size", (json_int_t)m->size, "sha256", m->sha256, "tool_version",
	    m->tool_version, "duration_ms", (json_int_t)m->duration_ms, "encrypted", m->encrypted,
	    "encryption", m->encryption[0] ? m->encryption : MANIFEST_ENCRYPTION_NONE, "key_id",
	    m->key_id, "plain_size", (json_int_t)m->plain_size, "agent_version",
	    m->agent_version[0] ? m->agent_version : MANIFEST_AGENT_VERSION);
	if (!o) {
		log_error("cannot build manifest JSON", LS("snapshot_id", m->id));
		return NULL;
	}
	if (m->audit[0]) {
		json_error_t jerr;
		json_t *a = json_loads(m->audit, 0, &jerr);
		if (!json_is_object(a) || json_object_set_new(o, "audit", a) != 0) {
			if (a && !json_is_object(a))
				json_decref(a);
			json_decref(o);
			log_error("refusing to write a manifest with a bad audit section",
				  LS("snapshot_id", m->id));
			return NULL;
		}
	}
	char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (!s) {
		log_error("cannot serialise manifest", LS("snapshot_id", m->id));
		return NULL;
	}
	/* A trailing newline keeps the file friendly to cat and diff. */
	size_t n = strlen(s);
	char *out = realloc(s, n + 2);
	if (!out) {
		free(s);
		return NULL;
	}
	out[n] = '\n';
	out[n + 1] = 0;
	return out;
}

/* Copies a string member into dst (cap bytes); -1 with why when absent, not a string,
 * empty (unless allow_empty) or too long. */
static int get_str(json_t *o, const char *key, char *dst, size_t cap, int allow_empty, char *why,
		   size_t whycap)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_string(v)) {
		snprintf(why, whycap, "\"%s\" is missing or not a string", key);
		return -1;
	}
	size_t n = json_string_length(v);
	const char *s = json_string_value(v);
	if (n >= cap || memchr(s, 0, n)) {
		snprintf(why, whycap, "\"%s\" is too long or holds a NUL", key);
		return -1;
	}
	if (n == 0 && !allow_empty) {
		snprintf(why, whycap, "\"%s\" is empty", key);
		return -1;
	}
	memcpy(dst, s, n);
	dst[n] = 0;
	return 0;
}

static int get_int(json_t *o, const char *key, long long min, long long *out, char *why,
		   size_t whycap)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_integer(v) || json_integer_value(v) < min) {
		snprintf(why, whycap, "\"%s\" is missing or not an integer >= %lld", key, min);
		return -1;
	}
	*out = json_integer_value(v);
	return 0;
}

int manifest_decode(const char *buf, size_t len, struct manifest *m, char *why, size_t whycap)
{
	memset(m, 0, sizeof *m);
	json_error_t jerr;
	json_t *o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!o) {
		snprintf(why, whycap, "not JSON: %s (line %d)", jerr.text, jerr.line);
		return -1;
	}
	int rc = -1;
	long long ver, num;
	time_t t;
	if (!json_is_object(o)) {
		snprintf(why, whycap, "not a JSON object");
		goto out;
	}
	if (get_int(o, "manifest_version", 1, &ver, why, whycap))
		goto out;
	if (ver != 1 && ver != MANIFEST_VERSION) {
		snprintf(why, whycap, "manifest_version %lld is not supported", ver);
		goto out;
	}
	if (get_str(o, "id", m->id, sizeof m->id, 0, why, whycap) ||
	    get_str(o, "created_at", m->created_at, sizeof m->created_at, 0, why, whycap) ||
	    get_str(o, "format", m->format, sizeof m->format, 0, why, whycap) ||
	    get_str(o, "database", m->database, sizeof m->database, 1, why, whycap) ||
	    get_str(o, "server_version", m->server_version, sizeof m->server_version, 1, why,
		    whycap) ||
	    get_int(o, "server_version_num", 0, &num, why, whycap) ||
	    get_int(o, "size", 0, &m->size, why, whycap) ||
	    get_str(o, "sha256", m->sha256, sizeof m->sha256, 0, why, whycap) ||
	    get_str(o, "tool_version", m->tool_version, sizeof m->tool_version, 1, why, whycap) ||
	    get_int(o, "duration_ms", 0, &m->duration_ms, why, whycap))
		goto out;
	if (num > 100000000) {
		snprintf(why, whycap, "\"server_version_num\" is out of range");
		goto out;
	}
	m->server_version_num = (int)num;
	json_t *enc = json_object_get(o, "encrypted");
	if (!json_is_boolean(enc)) {
		snprintf(why, whycap, "\"encrypted\" is missing or not a boolean");
		goto out;
	}
	m->encrypted = json_is_true(enc);
	m->plain_size = -1;
	snprintf(m->encryption, sizeof m->encryption, "%s", MANIFEST_ENCRYPTION_NONE);
	if (ver >= 2) {
		json_t *a = json_object_get(o, "audit");
		if (get_str(o, "encryption", m->encryption, sizeof m->encryption, 0, why, whycap) ||
		    get_str(o, "key_id", m->key_id, sizeof m->key_id, 1, why, whycap) ||
		    get_int(o, "plain_size", 0, &m->plain_size, why, whycap) ||
		    get_str(o, "agent_version", m->agent_version, sizeof m->agent_version, 1, why,
			    whycap))
			goto out;
		if (a) {
			char *txt = json_is_object(a)
					? json_dumps(a, JSON_COMPACT | JSON_PRESERVE_ORDER)
					: NULL;
			size_t n = txt ? strlen(txt) : 0;
			if (!txt || n >= sizeof m->audit) {
				free(txt);
				snprintf(why, whycap,
					 "\"audit\" is not an object of at most %d bytes",
					 MANIFEST_AUDIT_MAX - 1);
				goto out;
			}
			memcpy(m->audit, txt, n + 1);
			free(txt);
		}
		if ((strcmp(m->encryption, MANIFEST_ENCRYPTION_NONE) == 0) == m->encrypted) {
			snprintf(why, whycap, "\"encryption\" and \"encrypted\" disagree");
			goto out;
		}
		if (m->encrypted && strlen(m->key_id) != 16) {
			snprintf(why, whycap, "\"key_id\" is not a key id");
			goto out;
		}
	}
	if (!store_id_valid(m->id)) {
		snprintf(why, whycap, "\"id\" is not a snapshot id");
		goto out;
	}
	if (manifest_time_parse(m->created_at, &t) != 0) {
		snprintf(why, whycap, "\"created_at\" is not an RFC 3339 UTC time");
		goto out;
	}
	if (!manifest_sha256_valid(m->sha256)) {
		snprintf(why, whycap, "\"sha256\" is not 64 lowercase hex digits");
		goto out;
	}
	if (strcmp(m->format, MANIFEST_FORMAT_PG_DUMP_CUSTOM) != 0) {
		snprintf(why, whycap, "format \"%s\" is not known", m->format);
		goto out;
	}
	rc = 0;
out:
	json_decref(o);
	if (rc != 0)
		memset(m, 0, sizeof *m);
	return rc;
}
