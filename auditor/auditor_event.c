/* Audit event validation and mapping. Only what makes a record unusable is refused
 * (not a JSON object, no valid event_id, type or ts_us): that goes to gw.deadletter.
 * An optional member that is malformed or oversized never costs the record: its typed
 * column is left NULL or cut short, and the event column keeps the original whole.
 * The caps keep indexed columns far below PostgreSQL's btree row limit (~2.7 kB), so
 * no event can wedge a batch. */
#include "auditor_event.h"
#include "wire.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* 9999-12-31T23:59:59.999999Z: RFC 3339 has four-digit years. */
#define TS_US_MAX 253402300799999999LL

enum field_kind { FIELD_TEXT, FIELD_INT };

/* An optional event member; it lands in the column of the same name, except client
 * (client_addr). Text longer than max is cut (at a UTF-8 boundary); an integer out of
 * [0, max] or a value of the wrong JSON type leaves the column NULL. */
struct field {
	const char *key;
	enum field_kind kind;
	long long max; /* FIELD_TEXT: bytes; FIELD_INT: largest value */
};

/* request_id first: auditor_event_map writes the fields in AUDITOR_EVENT_COLUMNS order. */
static const struct field fields[] = {
    {"request_id", FIELD_TEXT, 128},
    {"service", FIELD_TEXT, 128},
    {"instance", FIELD_TEXT, 256},
    {"client", FIELD_TEXT, 256},
    {"principal", FIELD_TEXT, 1024},
    {"idp", FIELD_TEXT, 1024},
    {"groups", FIELD_TEXT, 65536},
    {"route", FIELD_TEXT, 1024},
    {"model", FIELD_TEXT, 1024},
    {"endpoint", FIELD_TEXT, 2048},
    {"outcome", FIELD_TEXT, 64},
    {"status", FIELD_INT, 999},
    {"reason", FIELD_TEXT, 8192},
    {"prompt_tokens", FIELD_INT, INT64_MAX},
    {"completion_tokens", FIELD_INT, INT64_MAX},
    {"total_tokens", FIELD_INT, INT64_MAX},
    {"latency_us", FIELD_INT, INT64_MAX},
    {"ttft_us", FIELD_INT, INT64_MAX},
    {"body_sha256", FIELD_TEXT, 128},
    {"body_size", FIELD_INT, INT64_MAX},
    {"resp_sha256", FIELD_TEXT, 128},
    {"resp_size", FIELD_INT, INT64_MAX},
};

/* Also sets *month (year * 12 + month - 1) when month is not NULL. */
static int event_time(int64_t us, char *out, size_t cap, int32_t *month)
{
	if (us < 0 || us > TS_US_MAX)
		return -1;
	time_t sec = (time_t)(us / 1000000);
	struct tm tm;
	if (!gmtime_r(&sec, &tm))
		return -1;
	if (month)
		*month = (int32_t)(tm.tm_year + 1900) * 12 + tm.tm_mon;
	int n = snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
			 (int)(us % 1000000));
	return n > 0 && (size_t)n < cap ? 0 : -1;
}

int auditor_event_time(int64_t us, char *out, size_t cap)
{
	return event_time(us, out, cap, NULL);
}

/* A COPY line under construction; the buffer is malloc'd and handed to the row. */
struct line {
	char *buf;
	size_t len, cap;
	int failed; /* out of memory */
};

static int line_reserve(struct line *l, size_t n)
{
	if (l->failed)
		return -1;
	if (l->len + n <= l->cap)
		return 0;
	size_t cap = l->cap ? l->cap : 1024;
	while (cap < l->len + n)
		cap *= 2;
	char *nb = realloc(l->buf, cap);
	if (!nb) {
		l->failed = 1;
		return -1;
	}
	l->buf = nb;
	l->cap = cap;
	return 0;
}

static void line_raw(struct line *l, const char *s, size_t n)
{
	if (line_reserve(l, n) == 0) {
		memcpy(l->buf + l->len, s, n);
		l->len += n;
	}
}

/* COPY text format: the backslash and the separators (tab, newline, carriage return)
 * are escaped, so a field can never end its row or the data early. */
static void line_text(struct line *l, const char *s, size_t n)
{
	if (line_reserve(l, 2 * n) != 0)
		return;
	char *o = l->buf + l->len;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		/* Most bytes sort above the backslash, the others are checked one by one. */
		if ((unsigned char)c > '\\' || (c != '\\' && c != '\t' && c != '\n' && c != '\r')) {
			*o++ = c;
			continue;
		}
		*o++ = '\\';
		*o++ = c == '\\' ? '\\' : c == '\t' ? 't' : c == '\n' ? 'n' : 'r';
	}
	l->len = (size_t)(o - l->buf);
}

static void line_null(struct line *l)
{
	line_raw(l, "\t\\N", 3);
}

/* text (n bytes) cut to max bytes, but not inside a UTF-8 sequence. */
static void line_string(struct line *l, const char *s, size_t n, size_t max)
{
	if (n > max)
		for (n = max; n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80; n--)
			;
	line_raw(l, "\t", 1);
	line_text(l, s, n);
}

static void line_int(struct line *l, long long v)
{
	char num[24], *p = num + sizeof num;
	unsigned long long u = v < 0 ? 0 - (unsigned long long)v : (unsigned long long)v;
	do
		*--p = (char)('0' + u % 10);
	while (u /= 10);
	if (v < 0)
		*--p = '-';
	*--p = '\t';
	line_raw(l, p, (size_t)(num + sizeof num - p));
}

/* A member's value as either parser saw it. */
struct val {
	enum { VAL_NONE, VAL_STRING, VAL_INT, VAL_OTHER } kind;
	const char *s; /* VAL_STRING: the unescaped bytes, n of them */
	size_t n;
	long long i; /* VAL_INT */
};

/* The members read, by index: event_id, type, ts_us, then fields[]. */
#define NFIELDS  (sizeof fields / sizeof fields[0])
#define V_ID     0
#define V_TYPE   1
#define V_TS     2
#define V_FIELDS 3
#define NVALS    (V_FIELDS + NFIELDS)

static const char *val_key(size_t i)
{
	static const char *const first[] = {"event_id", "type", "ts_us"};
	return i < V_FIELDS ? first[i] : fields[i - V_FIELDS].key;
}

/* The index in v[] of member key (kn bytes), or -1 when it is not one we read. */
static int val_index(const char *key, size_t kn)
{
	for (size_t i = 0; i < NVALS; i++) {
		const char *want = val_key(i);
		if (kn && want[0] == key[0] && strncmp(want, key, kn) == 0 && want[kn] == 0)
			return (int)i;
	}
	return -1;
}

/* One optional member's field: its value as the column type, else \N. */
static void line_member(struct line *l, const struct val *v, const struct field *f)
{
	if (f->kind == FIELD_TEXT && v->kind == VAL_STRING)
		line_string(l, v->s, v->n, (size_t)f->max);
	else if (f->kind == FIELD_INT && v->kind == VAL_INT && v->i >= 0 && v->i <= f->max)
		line_int(l, v->i);
	else
		line_null(l);
}

/* Builds the row from the members, whichever parser found them. */
static int map_vals(const struct val *v, const void *value, size_t len, int32_t partition,
		    int64_t offset, struct auditor_row *out, const char **reason)
{
	char when[40], id[33];
	int32_t month = 0;
	if (v[V_ID].kind != VAL_STRING || v[V_ID].n != 32) {
		*reason = "missing or bad event_id (want 32 lowercase hex)";
		return -1;
	}
	memcpy(id, v[V_ID].s, 32);
	id[32] = 0;
	if (!wire_id_valid(id)) {
		*reason = "missing or bad event_id (want 32 lowercase hex)";
		return -1;
	}
	if (v[V_TYPE].kind != VAL_STRING || v[V_TYPE].n == 0 || v[V_TYPE].n > 128) {
		*reason = "missing or bad type";
		return -1;
	}
	if (v[V_TS].kind != VAL_INT || event_time(v[V_TS].i, when, sizeof when, &month)) {
		*reason = "missing or bad ts_us";
		return -1;
	}
	/* Fields in AUDITOR_EVENT_COLUMNS order: event_id, request_id (fields[0]),
	 * event_type, event_time, the other members, kafka_partition, kafka_offset, event.
	 * Sized once: the event twice over covers the typed copies of its members. */
	struct line l = {0};
	line_reserve(&l, 2 * len + 512);
	line_text(&l, id, 32);
	line_member(&l, &v[V_FIELDS], &fields[0]);
	line_string(&l, v[V_TYPE].s, v[V_TYPE].n, 128);
	line_raw(&l, "\t", 1);
	line_raw(&l, when, strlen(when));
	for (size_t i = 1; i < NFIELDS; i++)
		line_member(&l, &v[V_FIELDS + i], &fields[i]);
	line_int(&l, partition);
	line_int(&l, offset);
	line_raw(&l, "\t", 1);
	line_text(&l, value, len); /* the original bytes: what was received is what is kept */
	line_raw(&l, "\n", 2);     /* NUL-terminated, not counted in len */
	l.len--;
	if (l.failed) {
		free(l.buf);
		*reason = "out of memory";
		return -1;
	}
	out->line = l.buf;
	out->len = l.len;
	memcpy(out->event_id, id, sizeof out->event_id);
	out->chain_id = partition;
	out->offset = offset;
	out->month = month;
	*reason = NULL;
	return 0;
}

/* ---- the fast path ----
 * jansson spends ~30 us on a typical 750-byte event, more than PostgreSQL's share of
 * the write. Events are flat objects of strings and small integers, so this scanner
 * takes those in one pass and hands anything else (a nested value, a \u escape, a
 * negative, fractional or long number, an escaped key, invalid UTF-8, more than
 * FAST_MAX_MEMBERS members) to jansson, which then decides. Whatever it accepts,
 * jansson would accept with the same values: test_auditor_event compares both. */

#define FAST_MAX_MEMBERS 64

static const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* Length of the valid UTF-8 sequence at p (RFC 3629: no overlong forms, surrogates or
 * values above U+10FFFF, as jansson checks), or 0. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
	unsigned char c = p[0];
	size_t n;
	unsigned char lo = 0x80, hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
	else
		return 0;
	if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t k = 2; k < n; k++)
		if ((p[k] & 0xc0) != 0x80)
			return 0;
	return n;
}

/* A string at *pp (its opening quote). Sets *s, *n to the raw bytes between the quotes
 * and *escaped when they hold a (simple) escape. Returns -1 for anything jansson must
 * judge. */
static int scan_string(const unsigned char **pp, const unsigned char *end, const char **s,
		       size_t *n, int *escaped)
{
	const unsigned char *p = *pp + 1, *start = p;
	*escaped = 0;
	while (p < end) {
		unsigned char c = *p;
		if (c == '"') {
			*s = (const char *)start;
			*n = (size_t)(p - start);
			*pp = p + 1;
			return 0;
		}
		if (c == '\\') {
			if (p + 1 >= end || !strchr("\"\\/bfnrt", p[1]) || p[1] == 0)
				return -1;
			*escaped = 1;
			p += 2;
		} else if (c < 0x20) {
			return -1;
		} else if (c < 0x80) {
			p++;
		} else {
			size_t k = utf8_len(p, end);
			if (!k)
				return -1;
			p += k;
		}
	}
	return -1;
}

/* The simple escapes scan_string let through, undone into dst (n bytes at most). */
static size_t unescape(const char *s, size_t n, char *dst)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '\\') {
			dst[k++] = s[i];
			continue;
		}
		char c = s[++i];
		dst[k++] = c == 'b'   ? '\b'
			   : c == 'f' ? '\f'
			   : c == 'n' ? '\n'
			   : c == 'r' ? '\r'
			   : c == 't' ? '\t'
				      : c; /* " \ / */
	}
	return k;
}

/* Fills v[] from value, or returns -1 to leave the event to jansson. *tmp receives the
 * buffer unescaped strings live in (malloc'd only when one has an escape; free() it). */
static int fast_scan(const unsigned char *p, size_t len, struct val *v, char **tmp)
{
	const unsigned char *end = p + len;
	struct {
		const char *k;
		size_t kn;
	} seen[FAST_MAX_MEMBERS];
	int nseen = 0;
	size_t used = 0;
	memset(v, 0, NVALS * sizeof *v);
	*tmp = NULL;
	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return -1;
	p = skip_ws(p + 1, end);
	if (p < end && *p == '}') {
		p++;
		goto done;
	}
	for (;;) {
		const char *k, *s;
		size_t kn, sn;
		int esc;
		if (p >= end || *p != '"' || scan_string(&p, end, &k, &kn, &esc) != 0 || esc ||
		    nseen == FAST_MAX_MEMBERS)
			return -1;
		for (int i = 0; i < nseen; i++)
			if (seen[i].kn == kn && memcmp(seen[i].k, k, kn) == 0)
				return -1; /* a duplicate key: jansson refuses the event */
		seen[nseen].k = k;
		seen[nseen++].kn = kn;
		p = skip_ws(p, end);
		if (p >= end || *p != ':')
			return -1;
		p = skip_ws(p + 1, end);
		if (p >= end)
			return -1;
		struct val cur = {VAL_OTHER, NULL, 0, 0};
		if (*p == '"') {
			if (scan_string(&p, end, &s, &sn, &esc) != 0)
				return -1;
			cur.kind = VAL_STRING;
			cur.s = s;
			cur.n = sn;
			if (esc) {
				if (!*tmp && !(*tmp = malloc(len)))
					return -1;
				cur.s = *tmp + used;
				cur.n = unescape(s, sn, *tmp + used);
				used += cur.n;
			}
		} else if (*p >= '0' && *p <= '9') {
			const unsigned char *d = p;
			long long x = 0;
			while (p < end && *p >= '0' && *p <= '9' && p - d < 18)
				x = x * 10 + (*p++ - '0');
			/* Leading zeros, fractions, exponents and 19+ digits go to jansson. */
			if ((*d == '0' && p - d > 1) ||
			    (p < end &&
			     ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E')))
				return -1;
			cur.kind = VAL_INT;
			cur.i = x;
		} else if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
			p += 4;
		} else if (end - p >= 4 && memcmp(p, "true", 4) == 0) {
			p += 4;
		} else if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
			p += 5;
		} else {
			return -1; /* a nested value, a negative number, or not JSON */
		}
		int at = val_index(k, kn);
		if (at >= 0)
			v[at] = cur;
		p = skip_ws(p, end);
		if (p < end && *p == ',') {
			p = skip_ws(p + 1, end);
			continue;
		}
		if (p < end && *p == '}') {
			p++;
			break;
		}
		return -1;
	}
done:
	return skip_ws(p, end) == end ? 0 : -1;
}

/* ---- jansson, for everything else ---- */

static void jansson_val(const json_t *j, struct val *v)
{
	memset(v, 0, sizeof *v);
	if (!j)
		return;
	if (json_is_string(j)) {
		v->kind = VAL_STRING;
		v->s = json_string_value(j);
		v->n = json_string_length(j);
	} else if (json_is_integer(j)) {
		v->kind = VAL_INT;
		v->i = json_integer_value(j);
	} else {
		v->kind = VAL_OTHER;
	}
}

static int map_jansson(const void *value, size_t len, int32_t partition, int64_t offset,
		       struct auditor_row *out, const char **reason)
{
	json_error_t jerr;
	/* Duplicate keys would make the stored record ambiguous, so they are refused;
	 * jansson also refuses \u0000 and invalid UTF-8, which jsonb cannot hold. */
	json_t *ev = json_loadb(value, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
	if (!ev) {
		*reason = "not valid JSON";
		return -1;
	}
	int rc = -1;
	if (!json_is_object(ev)) {
		*reason = "not a JSON object";
	} else {
		struct val v[NVALS];
		for (size_t i = 0; i < NVALS; i++)
			jansson_val(json_object_get(ev, val_key(i)), &v[i]);
		rc = map_vals(v, value, len, partition, offset, out, reason);
	}
	json_decref(ev);
	return rc;
}

static int check_size(const void *value, size_t len, struct auditor_row *out, const char **reason)
{
	memset(out, 0, sizeof *out);
	if (!value || len == 0) {
		*reason = "empty value";
		return -1;
	}
	if (len > AUDITOR_EVENT_MAX_BYTES) {
		*reason = "event too large";
		return -1;
	}
	return 0;
}

int auditor_event_map_fast(const void *value, size_t len, int32_t partition, int64_t offset,
			   struct auditor_row *out, const char **reason)
{
	if (check_size(value, len, out, reason) != 0)
		return -1;
	struct val v[NVALS];
	char *tmp = NULL;
	if (fast_scan(value, len, v, &tmp) != 0) {
		free(tmp);
		return 1;
	}
	int rc = map_vals(v, value, len, partition, offset, out, reason);
	free(tmp);
	return rc;
}

int auditor_event_map_jansson(const void *value, size_t len, int32_t partition, int64_t offset,
			      struct auditor_row *out, const char **reason)
{
	if (check_size(value, len, out, reason) != 0)
		return -1;
	return map_jansson(value, len, partition, offset, out, reason);
}

int auditor_event_map(const void *value, size_t len, int32_t partition, int64_t offset,
		      struct auditor_row *out, const char **reason)
{
	int rc = auditor_event_map_fast(value, len, partition, offset, out, reason);
	return rc == 1 ? auditor_event_map_jansson(value, len, partition, offset, out, reason) : rc;
}
