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
	evhttp_add_header(h, "X-Request-Id", p->id);
	evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(h, "Cache-Control", "no-store");
	evhttp_add_header(h, "Content-Type", m->ctype[0] ? m->ctype : "application/json");
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
		evhttp_add_header(h, "X-Request-Id", p->id);
		evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
		evhttp_add_header(h, "Cache-Control", "no-store");
		evhttp_add_header(h, "Content-Type", m->ctype[0] ? m->ctype : "text/event-stream");
		evhttp_send_reply_start(req, m->status, NULL);
		p->started = 1;
		p->status = m->status;
		metric_add(ig->m_streams, 1);
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
	if (kafka_consumer_assign(&ig->replies, GW_TOPIC_REPLIES, &part, 1, RD_KAFKA_OFFSET_END) != 0)
		return -1;
	ig->m_late_replies = metric_get(METRIC_COUNTER, "gw_ingress_late_replies_total", NULL,
					"Replies for requests already answered, or duplicates");
	log_info("consuming replies", LS("topic", GW_TOPIC_REPLIES), LI("partition", part));
	return 0;
}
