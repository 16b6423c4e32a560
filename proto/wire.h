/* The wire contract (DESIGN.md "Topics and messages"): topic and header names, and
 * the codec between Kafka headers and struct gw_meta, with validation. */
#ifndef GW_WIRE_H
#define GW_WIRE_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#define GW_WIRE_MAJOR   1
#define GW_WIRE_VERSION "1.0"

#define GW_TOPIC_REQUESTS   "gw.requests"
#define GW_TOPIC_AUTHORIZED "gw.authorized"
#define GW_TOPIC_REPLIES    "gw.replies"
#define GW_TOPIC_USAGE      "gw.usage"
#define GW_TOPIC_AUDIT      "gw.audit"
#define GW_TOPIC_CONTROL    "gw.control"
#define GW_TOPIC_DEADLETTER "gw.deadletter"

#define GW_H_VERSION     "gw-v"
#define GW_H_ID          "gw-id"
#define GW_H_DEADLINE    "gw-deadline"
#define GW_H_REPLY       "gw-reply"
#define GW_H_ROUTE       "gw-route"
#define GW_H_MODEL       "gw-model"
#define GW_H_STREAM      "gw-stream"
#define GW_H_CRED        "gw-cred"
#define GW_H_CLIENT      "gw-client"
#define GW_H_PRINCIPAL   "gw-principal"
#define GW_H_GROUPS      "gw-groups"
#define GW_H_RULE        "gw-rule"
#define GW_H_STATUS      "gw-status"
#define GW_H_SEQ         "gw-seq"
#define GW_H_FINAL       "gw-final"
#define GW_H_CTYPE       "gw-ctype"
#define GW_H_REASON      "gw-reason"
#define GW_H_HINT        "gw-hint"
#define GW_H_CLUSTER     "gw-cluster"
#define GW_H_FRAMEWORK   "gw-framework"
#define GW_H_MODELS      "gw-models"
#define GW_H_CANCEL      "gw-cancel"
/* On a 429/503 reply: seconds the client should wait; ingress sends it as Retry-After. */
#define GW_H_RETRY_AFTER "gw-retry-after"

/* Which fields of gw_meta are present / to encode. */
enum {
	GW_F_ID = 1u << 0,
	GW_F_DEADLINE = 1u << 1,
	GW_F_REPLY = 1u << 2,
	GW_F_ROUTE = 1u << 3,
	GW_F_MODEL = 1u << 4,
	GW_F_STREAM = 1u << 5,
	GW_F_CRED = 1u << 6,
	GW_F_CLIENT = 1u << 7,
	GW_F_PRINCIPAL = 1u << 8,
	GW_F_GROUPS = 1u << 9,
	GW_F_RULE = 1u << 10,
	GW_F_STATUS = 1u << 11,
	GW_F_SEQ = 1u << 12,
	GW_F_FINAL = 1u << 13,
	GW_F_CTYPE = 1u << 14,
	GW_F_HINT = 1u << 15,
	GW_F_CLUSTER = 1u << 16,
	GW_F_FRAMEWORK = 1u << 17,
	GW_F_MODELS = 1u << 18,
	GW_F_CANCEL = 1u << 19,
};

#define GW_ID_HEX   32
#define GW_CRED_MAX 8192

/* Metadata of one message. Plain value type: fixed buffers, no ownership.
 * cred is a copy of the sealed credential bytes (never the raw credential). */
struct gw_meta {
	unsigned present;
	char id[GW_ID_HEX + 1];
	int64_t deadline_ms; /* absolute unix ms */
	int32_t reply_partition;
	char route[64];
	char model[256];
	int stream;
	char client[64];
	char principal[256];
	char groups[1024];
	char rule[128];
	int status;
	int32_t seq;
	int final;
	char ctype[128];
	char hint[128];   /* principal hint: the gw.requests key, carried for gw.usage */
	char cluster[64]; /* FIRST routes: /resource_server/{cluster}/{framework}/v1/... */
	char framework[64];
	char models[2048]; /* models the principal may use, comma-separated; "*" = any */
	int cancel;        /* a cancel for request `id` (ingress -> dispatcher) */
	size_t cred_len;
	unsigned char cred[GW_CRED_MAX];
};

/* Decodes and validates the headers of msg into m (zeroed first). Requires gw-v with
 * major GW_WIRE_MAJOR and every field in `required`. On failure returns -1 and sets
 * *reason to a static string fit for a gw.deadletter reason header. */
int wire_decode(const rd_kafka_message_t *msg, unsigned required, struct gw_meta *m,
		const char **reason);

/* The same over a header list (tests, fuzzing). */
int wire_decode_headers(const rd_kafka_headers_t *hdrs, unsigned required, struct gw_meta *m,
			const char **reason);

/* Adds gw-v plus each field in `fields` (validated) to hdrs. Returns -1 on a value
 * the decoder would refuse (caller bug or bad input upstream). */
int wire_encode(const struct gw_meta *m, unsigned fields, rd_kafka_headers_t *hdrs);

/* True when s is exactly 32 lowercase hex digits. */
int wire_id_valid(const char *s);

/* Fills out with a fresh 128-bit random id as 32 lowercase hex digits + NUL. */
int wire_id_new(char out[GW_ID_HEX + 1]);

/* Wall clock in unix milliseconds / microseconds. */
int64_t wire_now_ms(void);
int64_t wire_now_us(void);

/* Writes the message to gw.deadletter with the original key, value and headers plus
 * gw-reason and gw-source (topic/partition/offset), and logs it once. w (may be NULL)
 * is held until the dead letter is acknowledged. Implemented in kafka.c. */
struct kafka_producer;
struct kafka_work;
int wire_deadletter(struct kafka_producer *p, const rd_kafka_message_t *msg, const char *reason,
		    struct kafka_work *w);

#endif
