/* The reply relay: ingress's own partition of gw.replies, assigned directly (no
 * consumer group, so no rebalance ever stalls replies), back to the waiting client. */
#include "ingress.h"
#include "config.h"
#include "log.h"
#include "wire.h"

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <string.h>

static void send_whole(struct ingress *ig, struct pending *p, const struct gw_meta *m,
		       const rd_kafka_message_t *msg)
{
	struct evhttp_request *req = p->req;
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct evbuffer *b = evbuffer_new();
	front_headers(ig, req, p->id);
	evhttp_add_header(h, "Content-Type", m->ctype[0] ? m->ctype : "application/json");
	/* A limit (authz) or saturation (dispatcher) says when to come back. */
	char retry[16];
	if ((m->status == 429 || m->status == 503) &&
	    kafka_header_str(msg, GW_H_RETRY_AFTER, retry, sizeof retry) == 0 && retry[0] &&
	    strspn(retry, "0123456789") == strlen(retry))
		evhttp_add_header(h, "Retry-After", retry);
	if (b && msg->len)
		evbuffer_add(b, msg->payload, msg->len);
	evhttp_send_reply(req, m->status, NULL, b);
	if (b)
		evbuffer_free(b);
	p->req = NULL;
	front_completed(ig, p, m->status, m->status < 400 ? "ok" : "error");
}

static void send_chunk(struct ingress *ig, struct pending *p, const struct gw_meta *m,
		       const rd_kafka_message_t *msg)
{
	struct evhttp_request *req = p->req;
	if (!p->started) {
		struct evkeyvalq *h = evhttp_request_get_output_headers(req);
		front_headers(ig, req, p->id);
		evhttp_add_header(h, "Content-Type", m->ctype[0] ? m->ctype : "text/event-stream");
		evhttp_send_reply_start(req, m->status, NULL);
		p->started = 1;
		p->status = m->status;
		metric_add(ig->m_streams, 1);
	}
	/* A client that does not read must not make us hold its whole answer. */
	if (p->cn && conn_output_len(p->cn) + msg->len > (size_t)ig->cfg.max_stream_buffer) {
		struct evhttp_connection *evcon = p->conn;
		log_warn("client reads too slowly: stream ended", LS("request_id", p->id),
			 LI("buffered", (long long)conn_output_len(p->cn)));
		front_client_gone(ig, p, "client too slow");
		/* Frees the request with it (evhttp still owns both). */
		evhttp_connection_free(evcon);
		return;
	}
	if (msg->len) {
		struct evbuffer *b = evbuffer_new();
		if (b) {
			evbuffer_add(b, msg->payload, msg->len);
			evhttp_send_reply_chunk(req, b);
			evbuffer_free(b);
		}
	}
	if (m->final) {
		evhttp_send_reply_end(req);
		p->req = NULL;
		front_completed(ig, p, p->status, p->status < 400 ? "ok" : "error");
	}
}

static void deliver(struct ingress *ig, struct pending *p, const rd_kafka_message_t *msg)
{
	struct gw_meta m;
	const char *reason;
	if (wire_decode(msg, GW_F_ID | GW_F_SEQ | GW_F_FINAL, &m, &reason) != 0)
		return; /* checked before holding */
	if (m.seq < p->next_seq) {
		metric_add(ig->m_late_replies, 1); /* a redelivered duplicate */
		return;
	}
	if (m.seq > p->next_seq) {
		log_error("reply sequence gap: answer incomplete", LS("request_id", p->id),
			  LI("expected", p->next_seq), LI("got", m.seq));
		front_fail(ig, p, 502, "the answer arrived incomplete", "upstream_incomplete", 0);
		return;
	}
	p->next_seq++;
	if (!p->started && !(m.present & GW_F_STATUS)) {
		front_fail(ig, p, 502, "the answer had no status", "upstream_invalid", 0);
		return;
	}
	if (!p->req)
		return;
	if (!p->started && m.final)
		send_whole(ig, p, &m, msg);
	else
		send_chunk(ig, p, &m, msg);
}

void relay_release_held(struct ingress *ig, struct pending *p)
{
	/* deliver may finish p, which destroys what is still held. */
	int n = p->nheld;
	rd_kafka_message_t *held[64];
	memcpy(held, p->held, (size_t)n * sizeof held[0]);
	p->nheld = 0;
	p->refs++;
	for (int i = 0; i < n; i++) {
		if (!p->answered)
			deliver(ig, p, held[i]);
		rd_kafka_message_destroy(held[i]);
	}
	pending_unref(p);
}

static void on_reply(void *arg, rd_kafka_message_t *msg)
{
	struct ingress *ig = arg;
	struct gw_meta m;
	const char *reason;
	if (wire_decode(msg, GW_F_ID | GW_F_SEQ | GW_F_FINAL, &m, &reason) != 0) {
		wire_deadletter(&ig->producer, msg, reason, NULL);
		rd_kafka_message_destroy(msg);
		return;
	}
	struct pending *p = pending_find(&ig->pending, m.id);
	if (!p) {
		/* Answered already (timed out, client gone) or a redelivery: ignored. */
		metric_add(ig->m_late_replies, 1);
		rd_kafka_message_destroy(msg);
		return;
	}
	if (!p->audit_acked) {
		if (p->nheld == (int)(sizeof p->held / sizeof p->held[0])) {
			rd_kafka_message_destroy(msg);
			front_fail(ig, p, 503, "the audit log is not acknowledging events",
				   "audit_unavailable", 5);
			return;
		}
		p->held[p->nheld++] = msg;
		return;
	}
	deliver(ig, p, msg);
	rd_kafka_message_destroy(msg);
}

int relay_init(struct ingress *ig)
{
	char client_id[128];
	snprintf(client_id, sizeof client_id, "ingress-replies-%lld", ig->cfg.reply_partition);
	ig->replies.on_message = on_reply;
	ig->replies.arg = ig;
	long long wait;
	if (config_int("GW_KAFKA_FETCH_WAIT_MS", 2, 1, 10000, &wait) != 0)
		return -1;
	if (kafka_consumer_init(&ig->replies, ig->rt.base, NULL, client_id, (int)wait) != 0)
		return -1;
	int32_t part = (int32_t)ig->cfg.reply_partition;
	/* Start at the high watermark read now, not at "end" resolved whenever the first
	 * fetch happens: a reply produced after start-up is never skipped. */
	int64_t lo = 0, hi = RD_KAFKA_OFFSET_END;
	rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(ig->replies.rk, GW_TOPIC_REPLIES,
								   part, &lo, &hi, 10000);
	if (err) {
		log_error(
		    "cannot read the reply partition's end: is the broker up and the partition "
		    "there? (GW_INGRESS_REPLY_PARTITION)",
		    LS("topic", GW_TOPIC_REPLIES), LI("partition", part),
		    LS("error", rd_kafka_err2str(err)));
		return -1;
	}
	if (kafka_consumer_assign(&ig->replies, GW_TOPIC_REPLIES, &part, 1, hi) != 0)
		return -1;
	ig->m_late_replies = metric_get(METRIC_COUNTER, "gw_ingress_late_replies_total", NULL,
					"Replies for requests already answered, or duplicates");
	log_info("consuming replies", LS("topic", GW_TOPIC_REPLIES), LI("partition", part),
		 LI("offset", hi));
	return 0;
}
