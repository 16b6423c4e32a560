/* Audit events (one JSON object per event on gw.audit, keyed by request id). Every
 * stage emits them; the auditor is their only reader. Never put a credential here. */
#ifndef GW_AUDIT_H
#define GW_AUDIT_H

#include "kafka.h"
#include <jansson.h>

/* Borrowed strings; NULL or negative numbers mean absent. */
struct audit_event {
	const char *type; /* request.received, authz.decision, dispatch.result,
				   request.completed, backup.snapshot, admin.*, ... */
	const char *request_id;
	const char *outcome; /* ok, denied, error, expired, rejected, ... */
	int status;          /* HTTP status given or received; 0 = absent */
	const char *reason;
	const char *principal;
	const char *groups;
	const char *idp;
	const char *client; /* client address */
	const char *route;
	const char *model;
	const char *endpoint;
	long long prompt_tokens, completion_tokens, total_tokens;
	long long latency_us, ttft_us;
	const char *body_sha256; /* hex SHA-256 of the request body */
	long long body_size;
	const char *resp_sha256;
	long long resp_size;
	json_t *extra; /* borrowed; merged under "extra" */
};

/* The service name written into events; set once at start (static string). */
void audit_set_service(const char *service);

/* Sets the numeric fields to "absent". */
void audit_event_init(struct audit_event *ev);

/* Builds the JSON (adds event_id, ts, ts_us, service, instance). Caller frees. */
char *audit_event_json(const struct audit_event *ev, char event_id_out[33]);

/* Produces ev to gw.audit; w and d as in kafka_produce. */
int audit_emit(struct kafka_producer *p, const struct audit_event *ev, struct kafka_work *w,
	       struct kafka_done *d);

#endif
