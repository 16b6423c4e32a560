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

int auditor_event_time(int64_t us, char *out, size_t cap)
{
	if (us < 0 || us > TS_US_MAX)
		return -1;
	time_t sec = (time_t)(us / 1000000);
	struct tm tm;
	if (!gmtime_r(&sec, &tm))
		return -1;
	int n = snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
			 (int)(us % 1000000));
	return n > 0 && (size_t)n < cap ? 0 : -1;
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
	for (size_t i = 0; i < n; i++) {
		char e = s[i] == '\\'   ? '\\'
			 : s[i] == '\t' ? 't'
			 : s[i] == '\n' ? 'n'
			 : s[i] == '\r' ? 'r'
					: 0;
		if (e) {
			l->buf[l->len++] = '\\';
			l->buf[l->len++] = e;
		} else {
			l->buf[l->len++] = s[i];
		}
	}
}

static void line_null(struct line *l)
{
	line_raw(l, "\t\\N", 3);
}

static void line_string(struct line *l, const json_t *v, size_t max)
{
	size_t n = json_string_length(v);
	const char *s = json_string_value(v);
	if (n > max) /* cut, but not inside a UTF-8 sequence */
		for (n = max; n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80; n--)
			;
	line_raw(l, "\t", 1);
	line_text(l, s, n);
}

static void line_int(struct line *l, long long v)
{
	char num[32];
	int n = snprintf(num, sizeof num, "\t%lld", v);
	line_raw(l, num, (size_t)n);
}

/* One optional member's field: its value as the column type, else \N. */
static void line_member(struct line *l, const json_t *ev, const struct field *f)
{
	const json_t *v = json_object_get(ev, f->key);
	if (f->kind == FIELD_TEXT && json_is_string(v)) {
		line_string(l, v, (size_t)f->max);
	} else if (f->kind == FIELD_INT && json_is_integer(v) && json_integer_value(v) >= 0 &&
		   json_integer_value(v) <= f->max) {
		line_int(l, json_integer_value(v));
	} else {
		line_null(l);
	}
}

int auditor_event_map(const void *value, size_t len, int32_t partition, int64_t offset,
		      struct auditor_row *out, const char **reason)
{
	json_error_t jerr;
	json_t *ev = NULL;
	char when[40];
	int rc = -1;

	memset(out, 0, sizeof *out);
	if (!value || len == 0) {
		*reason = "empty value";
		return -1;
	}
	if (len > AUDITOR_EVENT_MAX_BYTES) {
		*reason = "event too large";
		return -1;
	}
	/* Duplicate keys would make the stored record ambiguous, so they are refused;
	 * jansson also refuses \u0000 and invalid UTF-8, which jsonb cannot hold. */
	ev = json_loadb(value, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
	if (!ev) {
		*reason = "not valid JSON";
		return -1;
	}
	if (!json_is_object(ev)) {
		*reason = "not a JSON object";
		goto out;
	}
	const json_t *id = json_object_get(ev, "event_id");
	if (!json_is_string(id) || !wire_id_valid(json_string_value(id))) {
		*reason = "missing or bad event_id (want 32 lowercase hex)";
		goto out;
	}
	const json_t *type = json_object_get(ev, "type");
	if (!json_is_string(type) || json_string_length(type) == 0 ||
	    json_string_length(type) > 128) {
		*reason = "missing or bad type";
		goto out;
	}
	const json_t *ts = json_object_get(ev, "ts_us");
	if (!json_is_integer(ts) || auditor_event_time(json_integer_value(ts), when, sizeof when)) {
		*reason = "missing or bad ts_us";
		goto out;
	}
	/* Fields in AUDITOR_EVENT_COLUMNS order: event_id, request_id (fields[0]),
	 * event_type, event_time, the other members, kafka_partition, kafka_offset, event. */
	struct line l = {0};
	line_text(&l, json_string_value(id), json_string_length(id));
	line_member(&l, ev, &fields[0]);
	line_string(&l, type, 128);
	line_raw(&l, "\t", 1);
	line_raw(&l, when, strlen(when));
	for (size_t i = 1; i < sizeof fields / sizeof fields[0]; i++)
		line_member(&l, ev, &fields[i]);
	line_int(&l, partition);
	line_int(&l, offset);
	line_raw(&l, "\t", 1);
	line_text(&l, value, len); /* the original bytes: what was received is what is kept */
	line_raw(&l, "\n", 2);     /* NUL-terminated, not counted in len */
	l.len--;
	if (l.failed) {
		free(l.buf);
		*reason = "out of memory";
		goto out;
	}
	out->line = l.buf;
	out->len = l.len;
	memcpy(out->event_id, json_string_value(id), sizeof out->event_id);
	out->chain_id = partition;
	*reason = NULL;
	rc = 0;
out:
	json_decref(ev);
	return rc;
}
