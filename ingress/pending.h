/* Requests waiting for their answer: a hash table by request id for replies, and a
 * FIFO in arrival (= deadline) order for the janitor, since every request gets the
 * same timeout. */
#ifndef GW_INGRESS_PENDING_H
#define GW_INGRESS_PENDING_H

#include "kafka.h"
#include "wire.h"

struct conn;

#include <event2/http.h>
#include <stdint.h>

struct ingress;

/* One client request in flight. Owned by the table from pending_new until both the
 * HTTP side is finished (answered or the client went away) and the request.received
 * audit event has been acknowledged: `refs` counts those two. */
struct pending {
	struct ingress *ig;
	char id[GW_ID_HEX + 1];
	struct evhttp_request *req; /* NULL once answered or the client disconnected */
	struct evhttp_connection *conn;
	struct conn *cn;       /* the connection layer's view (a reference) */
	struct pending *cnext; /* other requests waiting on the same connection */
	int64_t start_us;
	int64_t deadline_ms;
	char route[64]; /* the route's template (metrics, audit) */
	char model[256];
	char client[64];
	int stream;
	int refs;
	int answered;    /* the HTTP side is finished */
	int started;     /* a streamed answer has begun (status line sent) */
	int audit_acked; /* request.received is in Kafka: the answer may go out */
	int audit_failed;
	int published; /* on gw.requests: a cancel is owed if the client leaves */
	int status;    /* status given to the client */
	int32_t next_seq;
	int nheld;
	rd_kafka_message_t *held[64]; /* replies that arrived before the audit ack */
	struct kafka_done audit_done;
	struct pending *hnext;       /* hash chain */
	struct pending *prev, *next; /* FIFO while unanswered */
};

struct pending_table {
	struct pending **buckets;
	size_t nbuckets;
	size_t count; /* unanswered requests (in the FIFO) */
	struct pending *head, *tail;
};

int pending_table_init(struct pending_table *t, size_t nbuckets);
void pending_table_free(struct pending_table *t);
struct pending *pending_new(struct pending_table *t, struct ingress *ig, const char *id);
struct pending *pending_find(struct pending_table *t, const char *id);
/* Takes p out of the id table and FIFO (it is answered); drops the HTTP ref. */
void pending_finish(struct pending_table *t, struct pending *p);
/* Drops one reference; frees p at zero. */
void pending_unref(struct pending *p);

#endif
