/* Replies, usage and audit of one request. Every byte put on gw.replies goes through
 * produce_reply, which also feeds the SHA-256 the audit event carries. */
#include "relay.h"

#include "log.h"
#include "openai.h"
#include "wire.h"

#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SSE_CTYPE "text/event-stream"

static void unhold(struct relay *r)
{
	if (r->on_held) {
		TAILQ_REMOVE(&r->fl->held, r, held_link);
		r->on_held = 0;
	}
}

int relay_init(struct relay *r, struct kafka_producer *p, struct kafka_work *w, const char *id,
	       int32_t partition, int want_stream, size_t max_body, size_t sse_line_max,
	       struct relay_flusher *fl)
{
	memset(r, 0, sizeof *r);
	r->p = p;
	r->w = w;
	r->id = id;
	r->partition = partition;
	r->want_stream = want_stream;
	r->max_body = max_body;
	r->sse_line_max = sse_line_max;
	r->fl = fl;
	r->body = evbuffer_new();
	r->sha = EVP_MD_CTX_new();
	if (!r->body || !r->sha || EVP_DigestInit_ex(r->sha, EVP_sha256(), NULL) != 1) {
		log_error("cannot set up reply state", LS("request_id", id));
		relay_free(r);
		return -1;
	}
	return 0;
}

void relay_close(struct relay *r)
{
	unhold(r);
	if (r->co_on)
		coalesce_drop(&r->co);
}

void relay_free(struct relay *r)
{
	relay_close(r);
	if (r->co_on)
		coalesce_free(&r->co);
	r->co_on = 0;
	if (r->body)
		evbuffer_free(r->body);
	if (r->sha)
		EVP_MD_CTX_free(r->sha);
	if (r->sse_on)
		sse_usage_free(&r->sse);
	r->body = NULL;
	r->sha = NULL;
	r->sse_on = 0;
}

int relay_started(const struct relay *r)
{
	return r->seq > 0;
}

/* A content type safe to carry in gw-ctype (the codec refuses control characters). */
static void set_ctype(struct relay *r, const char *ctype)
{
	const char *fallback = "application/octet-stream";
	if (!ctype || !*ctype || strlen(ctype) >= sizeof r->ctype) {
		snprintf(r->ctype, sizeof r->ctype, "%s", fallback);
		return;
	}
	for (const unsigned char *p = (const unsigned char *)ctype; *p; p++)
		if (*p < 0x20 || *p == 0x7f) {
			snprintf(r->ctype, sizeof r->ctype, "%s", fallback);
			return;
		}
	snprintf(r->ctype, sizeof r->ctype, "%s", ctype);
}

/* One gw.replies message; seq 0 carries status and content type. Returns the produce
 * result; a failure marks the work failed so the input is redone after a restart. */
static rd_kafka_resp_err_t produce_reply(struct relay *r, const void *data, size_t len, int final)
{
	if (r->final_sent) {
		log_error("reply after the final one dropped", LS("request_id", r->id));
		return RD_KAFKA_RESP_ERR__STATE;
	}
	struct gw_meta m;
	memset(&m, 0, offsetof(struct gw_meta, cred));
	memcpy(m.id, r->id, sizeof m.id);
	m.status = r->status;
	m.seq = r->seq;
	m.final = final;
	snprintf(m.ctype, sizeof m.ctype, "%s", r->ctype);
	unsigned fields = GW_F_ID | GW_F_SEQ | GW_F_FINAL;
	if (r->seq == 0)
		fields |= GW_F_STATUS | GW_F_CTYPE;
	rd_kafka_headers_t *h = rd_kafka_headers_new(8);
	char ra[16];
	snprintf(ra, sizeof ra, "%d", r->retry_after_s);
	if (!h || wire_encode(&m, fields, h) != 0 ||
	    (r->seq == 0 && r->retry_after_s > 0 &&
	     rd_kafka_header_add(h, GW_H_RETRY_AFTER, -1, ra, -1) != RD_KAFKA_RESP_ERR_NO_ERROR)) {
		log_error("cannot encode reply headers", LS("request_id", r->id),
			  LI("status", r->status), LI("seq", r->seq));
		if (h)
			rd_kafka_headers_destroy(h);
		r->failed = 1;
		r->w->failed = 1;
		return RD_KAFKA_RESP_ERR__BAD_MSG;
	}
	rd_kafka_resp_err_t err = kafka_produce(r->p, GW_TOPIC_REPLIES, r->partition, r->id,
						GW_ID_HEX, data, len, h, r->w, NULL);
	if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE && r->seq == 0 && final)
		return err; /* nothing went out: relay_finish answers with an error instead */
	if (err) {
		/* kafka_produce logged topic and partition; add which request it was. */
		log_error("reply not sent", LS("request_id", r->id), LI("seq", r->seq),
			  LI("partition", r->partition), LS("error", rd_kafka_err2str(err)));
		r->failed = 1;
		r->w->failed = 1;
		return err;
	}
	if (len && r->sha && EVP_DigestUpdate(r->sha, data, len) != 1)
		log_warn("SHA-256 update failed", LS("request_id", r->id));
	r->size += (long long)len;
	r->seq++;
	if (final)
		r->final_sent = 1;
	return RD_KAFKA_RESP_ERR_NO_ERROR;
}

void relay_head(struct relay *r, int status, const char *ctype)
{
	r->status = status;
	set_ctype(r, ctype);
	if (!r->want_stream || status != 200 || strncasecmp(r->ctype, SSE_CTYPE, strlen(SSE_CTYPE)))
		return;
	if (sse_usage_init(&r->sse, r->sse_line_max) != 0) {
		log_warn("out of memory for usage scanning; stream relayed without usage",
			 LS("request_id", r->id));
	} else {
		r->sse_on = 1;
	}
	r->streaming = 1;
	if (r->fl && r->fl->window_ms > 0 && !r->co_on) {
		if (coalesce_init(&r->co, r->fl->window_ms, r->fl->max) == 0)
			r->co_on = 1;
		else
			log_warn("stream relayed without coalescing", LS("request_id", r->id));
	}
}

/* One streamed message of any size, split at RELAY_CHUNK_MAX. */
static void emit_stream(void *arg, const unsigned char *data, size_t len)
{
	struct relay *r = arg;
	while (len > 0 && !r->failed) {
		size_t n = len > RELAY_CHUNK_MAX ? RELAY_CHUNK_MAX : len;
		produce_reply(r, data, n, 0);
		if (r->fl)
			r->fl->messages++;
		data += n;
		len -= n;
	}
}

/* Held bytes wait for the flusher's timer, armed for the earliest due relay. */
static void hold(struct relay *r)
{
	struct relay_flusher *f = r->fl;
	int64_t due = coalesce_due(&r->co);
	if (!due) {
		unhold(r);
		return;
	}
	if (!r->on_held) {
		TAILQ_INSERT_TAIL(&f->held, r, held_link);
		r->on_held = 1;
	}
	if (f->armed_us && f->armed_us <= due)
		return;
	int64_t wait = due - wire_now_us();
	if (wait < 0)
		wait = 0;
	struct timeval tv = {(time_t)(wait / 1000000), (suseconds_t)(wait % 1000000)};
	if (event_add(f->ev, &tv) != 0) {
		/* Without the timer the bytes go now: late merging beats a stall. */
		log_error("cannot arm the stream flush timer", LS("request_id", r->id));
		unhold(r);
		coalesce_flush(&r->co, wire_now_us(), emit_stream, r);
		return;
	}
	f->armed_us = due;
}

static void flusher_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_flusher *f = arg;
	int64_t now = wire_now_us(), next = 0;
	f->armed_us = 0;
	struct relay *r;
	/* A flush produces, and producing may serve delivery reports: the list is walked
	 * again from its head after each flush rather than trusting a saved next. */
again:
	next = 0;
	TAILQ_FOREACH(r, &f->held, held_link)
	{
		int64_t due = coalesce_due(&r->co);
		if (due && due > now) {
			if (!next || due < next)
				next = due;
			continue;
		}
		unhold(r);
		coalesce_flush(&r->co, now, emit_stream, r);
		goto again;
	}
	if (next) {
		int64_t wait = next - now;
		struct timeval tv = {(time_t)(wait / 1000000), (suseconds_t)(wait % 1000000)};
		if (event_add(f->ev, &tv) == 0)
			f->armed_us = next;
		else
			log_error("cannot arm the stream flush timer");
	}
}

int relay_flusher_init(struct relay_flusher *f, struct event_base *base, int window_ms, size_t max)
{
	memset(f, 0, sizeof *f);
	TAILQ_INIT(&f->held);
	f->window_ms = window_ms;
	f->max = max;
	f->ev = event_new(base, -1, 0, flusher_cb, f);
	if (!f->ev) {
		log_error("cannot create the stream flush timer");
		return -1;
	}
	return 0;
}

void relay_flusher_free(struct relay_flusher *f)
{
	if (f->ev)
		event_free(f->ev);
	f->ev = NULL;
}

int relay_body(struct relay *r, struct evbuffer *buf)
{
	if (!r->streaming) {
		if (evbuffer_get_length(r->body) + evbuffer_get_length(buf) > r->max_body) {
			evbuffer_drain(buf, evbuffer_get_length(buf));
			return -1;
		}
		if (evbuffer_add_buffer(r->body, buf) != 0) {
			/* Nothing relayed yet: the caller answers 502 instead. */
			log_error("out of memory collecting an answer", LS("request_id", r->id));
			evbuffer_drain(buf, evbuffer_get_length(buf));
			r->failed = 1;
		}
		return 0;
	}
	size_t n;
	while ((n = evbuffer_get_length(buf)) > 0) {
		if (n > RELAY_CHUNK_MAX)
			n = RELAY_CHUNK_MAX;
		const unsigned char *data = evbuffer_pullup(buf, (ev_ssize_t)n);
		if (!data) {
			log_error("out of memory relaying a stream", LS("request_id", r->id));
			evbuffer_drain(buf, evbuffer_get_length(buf));
			r->failed = 1;
			r->w->failed = 1;
			return 0;
		}
		if (r->sse_on) {
			unsigned long broken = r->sse.broken;
			sse_usage_feed(&r->sse, data, n);
			if (r->sse.broken != broken) {
				evbuffer_drain(buf, evbuffer_get_length(buf));
				return -2;
			}
		}
		if (r->fl)
			r->fl->arrivals++;
		if (r->co_on && !r->failed)
			coalesce_add(&r->co, data, n, wire_now_us(), emit_stream, r);
		else if (!r->failed)
			emit_stream(r, data, n);
		evbuffer_drain(buf, n);
	}
	if (r->co_on)
		hold(r);
	return 0;
}

static int is_json(const char *ctype)
{
	return strncasecmp(ctype, "application/json", 16) == 0;
}

void relay_reset(struct relay *r)
{
	evbuffer_drain(r->body, evbuffer_get_length(r->body));
	if (r->sse_on)
		sse_usage_free(&r->sse);
	r->sse_on = 0;
	r->streaming = 0;
	r->status = 0;
	r->ctype[0] = 0;
	r->have_usage = 0;
	relay_close(r);
}

/* An endpoint 4xx whose body is not {"error":{...}}: the client still gets OpenAI's
 * shape, with the endpoint's text as the message. NULL when no wrapping is needed. */
static char *wrap_4xx(struct relay *r, const char *data, size_t len)
{
	json_t *root = json_loadb(data, len, 0, NULL);
	if (root && json_is_object(json_object_get(root, "error"))) {
		json_decref(root);
		return NULL;
	}
	char msg[512];
	json_t *detail = root ? json_object_get(root, "detail") : NULL;
	if (!detail && root)
		detail = json_object_get(root, "message");
	if (!detail && root)
		detail = json_object_get(root, "error");
	if (json_is_string(detail)) {
		snprintf(msg, sizeof msg, "endpoint: %s", json_string_value(detail));
	} else {
		size_t n = len < 400 ? len : 400;
		size_t k = 0;
		k += (size_t)snprintf(msg, sizeof msg, "endpoint answered %d: ", r->status);
		for (size_t i = 0; i < n && k + 1 < sizeof msg; i++)
			msg[k++] = (data[i] >= 0x20 && data[i] < 0x7f) ? data[i] : ' ';
		msg[k] = 0;
	}
	json_decref(root);
	return openai_error_json(msg, openai_error_type(r->status), NULL, r->id);
}

int relay_finish(struct relay *r)
{
	if (r->streaming) {
		if (r->sse_on) {
			sse_usage_finish(&r->sse);
			if (r->sse.have) {
				r->usage = r->sse.usage;
				r->have_usage = 1;
			}
		}
		/* The final message carries what is held, at once. */
		unhold(r);
		size_t held = r->co_on ? coalesce_held(&r->co) : 0;
		const unsigned char *data =
		    held ? evbuffer_pullup(r->co.held, (ev_ssize_t)held) : NULL;
		if (held && data && !r->failed) {
			produce_reply(r, data, held, 1);
			coalesce_drop(&r->co);
		} else {
			if (held)
				coalesce_flush(&r->co, wire_now_us(), emit_stream, r);
			produce_reply(r, "", 0, 1);
		}
		if (r->fl)
			r->fl->messages++;
		return 0;
	}
	size_t len = evbuffer_get_length(r->body);
	const char *data = len ? (const char *)evbuffer_pullup(r->body, -1) : "";
	if (!data) {
		log_error("out of memory sending a reply", LS("request_id", r->id));
		relay_error(r, 502, "the gateway ran out of memory relaying the answer",
			    "upstream_error");
		return 0;
	}
	if (r->status >= 200 && r->status < 300 && is_json(r->ctype)) {
		json_error_t je;
		json_t *root = json_loadb(data, len, 0, &je);
		if (!root)
			return -1;
		if (json_is_object(root) &&
		    usage_from_object(json_object_get(root, "usage"), &r->usage) == 0)
			r->have_usage = 1;
		json_decref(root);
	}
	char *wrapped = NULL;
	if (r->status >= 400 && r->status < 500 && (wrapped = wrap_4xx(r, data, len))) {
		set_ctype(r, "application/json");
		data = wrapped;
		len = strlen(wrapped);
	}
	rd_kafka_resp_err_t err = produce_reply(r, data, len, 1);
	free(wrapped);
	if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
		/* The client still gets an answer, just not this one. */
		log_warn("answer too large for gw.replies", LS("request_id", r->id),
			 LI("size", (long long)len));
		r->have_usage = 0;
		relay_error(r, 502,
			    "the endpoint's answer is larger than the reply topic accepts "
			    "(raise message.max.bytes via GW_KAFKA_PROPERTIES)",
			    "upstream_response_too_large");
	}
	return 0;
}

void relay_error(struct relay *r, int status, const char *message, const char *code)
{
	if (r->final_sent)
		return;
	char *body = openai_error_json(message, openai_error_type(status), code, r->id);
	if (body && r->retry_after_s > 0) {
		/* Clients and ingress read the hint from the body as well as the header. */
		json_t *o = json_loads(body, 0, NULL);
		char *with = NULL;
		if (o &&
		    json_object_set_new(o, "retry_after_s", json_integer(r->retry_after_s)) == 0)
			with = json_dumps(o, JSON_COMPACT);
		json_decref(o);
		if (with) {
			free(body);
			body = with;
		}
	}
	if (!body) {
		log_error("out of memory building an error reply", LS("request_id", r->id));
		r->failed = 1;
		r->w->failed = 1;
		return;
	}
	if (r->streaming && relay_started(r)) {
		/* The status line has gone out already: end the stream with an error event,
		 * after the (valid) bytes still held. */
		unhold(r);
		if (r->co_on)
			coalesce_flush(&r->co, wire_now_us(), emit_stream, r);
		size_t n = strlen(body) + 16;
		char *ev = malloc(n);
		if (!ev) {
			log_error("out of memory building an error event", LS("request_id", r->id));
			produce_reply(r, "", 0, 1);
		} else {
			int len = snprintf(ev, n, "data: %s\n\n", body);
			produce_reply(r, ev, (size_t)len, 1);
			free(ev);
		}
	} else {
		r->streaming = 0;
		r->status = status;
		set_ctype(r, "application/json");
		produce_reply(r, body, strlen(body), 1);
	}
	free(body);
}

int relay_usage_emit(struct kafka_producer *p, struct kafka_work *w, const struct usage_report *u)
{
	json_t *o = json_pack("{s:s, s:s, s:s, s:s?, s:s, s:i, s:I, s:I, s:I}", "request_id", u->id,
			      "principal", u->principal, "model", u->model, "endpoint", u->endpoint,
			      "outcome", u->outcome, "status", u->status, "prompt_tokens",
			      (json_int_t)u->tokens.prompt_tokens, "completion_tokens",
			      (json_int_t)u->tokens.completion_tokens, "total_tokens",
			      (json_int_t)u->tokens.total_tokens);
	if (o && u->ttft_us >= 0)
		json_object_set_new(o, "ttft_us", json_integer(u->ttft_us));
	if (o && u->latency_us >= 0)
		json_object_set_new(o, "latency_us", json_integer(u->latency_us));
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	rd_kafka_headers_t *h = rd_kafka_headers_new(2);
	struct gw_meta m;
	memset(&m, 0, offsetof(struct gw_meta, cred));
	memcpy(m.id, u->id, sizeof m.id);
	if (!s || !h || wire_encode(&m, GW_F_ID, h) != 0) {
		log_error("cannot build usage message", LS("request_id", u->id));
		free(s);
		if (h)
			rd_kafka_headers_destroy(h);
		w->failed = 1;
		return -1;
	}
	int rc = 0;
	if (kafka_produce(p, GW_TOPIC_USAGE, RD_KAFKA_PARTITION_UA, u->hint, strlen(u->hint), s,
			  strlen(s), h, w, NULL) != RD_KAFKA_RESP_ERR_NO_ERROR) {
		log_error("usage not sent", LS("request_id", u->id), LS("topic", GW_TOPIC_USAGE));
		w->failed = 1;
		rc = -1;
	}
	free(s);
	return rc;
}

void relay_fill_audit(struct relay *r, struct audit_event *ev)
{
	if (r->seq > 0 && r->sha) {
		unsigned char md[EVP_MAX_MD_SIZE];
		unsigned int mdlen = 0;
		static const char hex[] = "0123456789abcdef";
		if (EVP_DigestFinal_ex(r->sha, md, &mdlen) == 1 && mdlen == 32) {
			for (unsigned i = 0; i < mdlen; i++) {
				r->sha_hex[2 * i] = hex[md[i] >> 4];
				r->sha_hex[2 * i + 1] = hex[md[i] & 15];
			}
			r->sha_hex[64] = 0;
			ev->resp_sha256 = r->sha_hex;
			ev->resp_size = r->size;
		}
		/* Finalised: a second call must not finalise again. */
		EVP_MD_CTX_free(r->sha);
		r->sha = NULL;
	}
	if (r->have_usage) {
		ev->prompt_tokens = r->usage.prompt_tokens;
		ev->completion_tokens = r->usage.completion_tokens;
		ev->total_tokens = r->usage.total_tokens;
	}
}
