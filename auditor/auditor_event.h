/* Audit event validation and mapping: turns one gw.audit message value into the row the
 * auditor stores (typed AU-3 columns plus the whole original event), or says why not. */
#ifndef GW_AUDITOR_EVENT_H
#define GW_AUDITOR_EVENT_H

#include <stddef.h>
#include <stdint.h>

/* Larger values are refused before parsing: Kafka's default message limit is 1 MiB. */
#define AUDITOR_EVENT_MAX_BYTES (1024 * 1024)

/* The columns of audit.audit_events a row fills, in the order of its fields. */
#define AUDITOR_EVENT_COLUMNS                                                                      \
	"event_id, request_id, event_type, event_time, service, instance, client_addr, "           \
	"principal, idp, groups, route, model, endpoint, outcome, status, reason, "                \
	"prompt_tokens, completion_tokens, total_tokens, latency_us, ttft_us, body_sha256, "       \
	"body_size, resp_sha256, resp_size, kafka_partition, kafka_offset, event"
#define AUDITOR_EVENT_NCOLUMNS 28

/* One mapped event: a line of PostgreSQL COPY text format (tab-separated, \N for
 * NULL, backslash escapes, ending in a newline, then a NUL not counted in len), fields
 * in AUDITOR_EVENT_COLUMNS order. The event column is the original message value. */
struct auditor_row {
	char *line; /* owned by whoever received it from auditor_event_map; free() */
	size_t len;
	char event_id[33];
	int32_t chain_id; /* the gw.audit partition: one hash chain per partition */
	int64_t offset;   /* its gw.audit offset: which rows may be redeliveries */
	int32_t month;    /* UTC month of event_time as year * 12 + month - 1: its partition */
};

/* Validates value (len bytes, need not be NUL-terminated) and maps it. On success
 * fills out and returns 0. On failure returns -1 and sets *reason to a static string
 * fit for the gw-reason header of a dead letter. */
int auditor_event_map(const void *value, size_t len, int32_t partition, int64_t offset,
		      struct auditor_row *out, const char **reason);

/* auditor_event_map's two halves, exposed for the tests that compare them. The fast
 * one takes flat objects of strings and small integers and returns 1 (out untouched)
 * for anything else, which then goes to the jansson one. */
int auditor_event_map_fast(const void *value, size_t len, int32_t partition, int64_t offset,
			   struct auditor_row *out, const char **reason);
int auditor_event_map_jansson(const void *value, size_t len, int32_t partition, int64_t offset,
			      struct auditor_row *out, const char **reason);

/* Formats unix microseconds as RFC 3339 UTC with six fractional digits
 * ("2024-05-01T12:00:00.000001Z"). Returns -1 when out of range. */
int auditor_event_time(int64_t us, char *out, size_t cap);

#endif
