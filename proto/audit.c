/* Audit events: one JSON object each, on gw.audit, keyed by request id. */
#include "audit.h"
#include "config.h"
#include "log.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *audit_service = "gw";

void audit_event_init(struct audit_event *ev)
{
	memset(ev, 0, sizeof *ev);
	ev->prompt_tokens = ev->completion_tokens = ev->total_tokens = -1;
	ev->latency_us = ev->ttft_us = -1;
	ev->body_size = ev->resp_size = -1;
}

void audit_set_service(const char *service)
{
	audit_service = service;
}

static void set_str(json_t *o, const char *k, const char *v)
{
	if (v)
		json_object_set_new(o, k, json_string(v));
}

static void set_num(json_t *o, const char *k, long long v)
{
	if (v >= 0)
		json_object_set_new(o, k, json_integer(v));
}

char *audit_event_json(const struct audit_event *ev, char event_id[33])
{
	if (wire_id_new(event_id) != 0)
		return NULL;
	int64_t us = wire_now_us();
	time_t secs = (time_t)(us / 1000000);
	struct tm tm;
	char ts[64];
	gmtime_r(&secs, &tm);
	snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 (long long)(us % 1000000));
	json_t *o = json_object();
	if (!o)
		return NULL;
	set_str(o, "event_id", event_id);
	set_str(o, "ts", ts);
	json_object_set_new(o, "ts_us", json_integer(us));
	set_str(o, "type", ev->type);
	set_str(o, "service", audit_service);
	set_str(o, "instance", config_instance(audit_service));
	set_str(o, "request_id", ev->request_id);
	set_str(o, "outcome", ev->outcome);
	if (ev->status > 0)
		json_object_set_new(o, "status", json_integer(ev->status));
	set_str(o, "reason", ev->reason);
	set_str(o, "principal", ev->principal);
	set_str(o, "groups", ev->groups);
	set_str(o, "idp", ev->idp);
	set_str(o, "client", ev->client);
	set_str(o, "route", ev->route);
	set_str(o, "model", ev->model);
	set_str(o, "endpoint", ev->endpoint);
	set_num(o, "prompt_tokens", ev->prompt_tokens);
	set_num(o, "completion_tokens", ev->completion_tokens);
	set_num(o, "total_tokens", ev->total_tokens);
	set_num(o, "latency_us", ev->latency_us);
	set_num(o, "ttft_us", ev->ttft_us);
	set_str(o, "body_sha256", ev->body_sha256);
	set_num(o, "body_size", ev->body_size);
	set_str(o, "resp_sha256", ev->resp_sha256);
	set_num(o, "resp_size", ev->resp_size);
	if (ev->extra)
		json_object_set(o, "extra", ev->extra);
	char *s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

int audit_emit(struct kafka_producer *p, const struct audit_event *ev, struct kafka_work *w,
	       struct kafka_done *d)
{
	char event_id[33];
	char *json = audit_event_json(ev, event_id);
	if (!json) {
		log_error("cannot build audit event", LS("type", ev->type),
			  LS("request_id", ev->request_id));
		return -1;
	}
	rd_kafka_headers_t *h = rd_kafka_headers_new(2);
	struct gw_meta m;
	memset(&m, 0, offsetof(struct gw_meta, cred));
	m.cred_len = 0;
	const char *key = event_id;
	unsigned fields = 0;
	if (ev->request_id && wire_id_valid(ev->request_id)) {
		memcpy(m.id, ev->request_id, sizeof m.id);
		fields |= GW_F_ID;
		key = ev->request_id;
	}
	wire_encode(&m, fields, h);
	rd_kafka_resp_err_t err = kafka_produce(p, GW_TOPIC_AUDIT, RD_KAFKA_PARTITION_UA, key,
						strlen(key), json, strlen(json), h, w, d);
	free(json);
	return err ? -1 : 0;
}
