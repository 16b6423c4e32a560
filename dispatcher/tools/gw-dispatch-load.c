/* gw-dispatch-load: a benchmark tool that keeps C requests in flight on gw.authorized (as
 * authz puts them there) until N are answered on gw.replies, and prints requests per
 * second, latency percentiles and gw.replies messages per answer as one JSON line. */
#include "config.h"
#include "log.h"
#include "wire.h"

#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gw-dispatch-load --model M [--requests N] [--concurrency C] [--stream 0|1]\n"
    "                        [--timeout-ms T] [--reply-partition P]\n"
    "  Needs GW_KAFKA_BROKERS and a running dispatcher. One warm-up request is answered\n"
    "  before the clock starts. Prints one JSON line:\n"
    "  {requests, ok, errors, timed_out, seconds, rps, p50_ms, p99_ms, messages_per_answer}.\n";

struct slot {
	char id[GW_ID_HEX + 1];
	int64_t t0_us;
	int status, messages, busy;
};

static int header(const rd_kafka_message_t *m, const char *name, char *out, size_t cap)
{
	rd_kafka_headers_t *h;
	const void *v;
	size_t n;
	if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, name, &v, &n) || !v ||
	    n >= cap)
		return -1;
	memcpy(out, v, n);
	out[n] = 0;
	return 0;
}

static int send_one(rd_kafka_t *p, struct slot *s, const char *model, int stream, int32_t reply)
{
	char body[512], deadline[32], rp[16];
	if (wire_id_new(s->id) != 0)
		return -1;
	snprintf(body, sizeof body,
		 "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"hello load\"}],"
		 "\"stream\":%s}",
		 model, stream ? "true" : "false");
	snprintf(deadline, sizeof deadline, "%lld", (long long)wire_now_ms() + 60000);
	snprintf(rp, sizeof rp, "%d", (int)reply);
	const char *hv[] = {GW_H_VERSION,   GW_WIRE_VERSION,
			    GW_H_ID,        s->id,
			    GW_H_DEADLINE,  deadline,
			    GW_H_REPLY,     rp,
			    GW_H_ROUTE,     "/v1/chat/completions",
			    GW_H_MODEL,     model,
			    GW_H_STREAM,    stream ? "1" : "0",
			    GW_H_PRINCIPAL, "load-user",
			    GW_H_HINT,      "load-hint",
			    GW_H_MODELS,    "*"};
	rd_kafka_headers_t *h = rd_kafka_headers_new(16);
	for (size_t i = 0; i + 1 < sizeof hv / sizeof hv[0]; i += 2)
		rd_kafka_header_add(h, hv[i], -1, hv[i + 1], -1);
	s->t0_us = wire_now_us();
	s->status = 0;
	s->messages = 0;
	s->busy = 1;
	rd_kafka_resp_err_t e = rd_kafka_producev(
	    p, RD_KAFKA_V_TOPIC(GW_TOPIC_AUTHORIZED), RD_KAFKA_V_KEY(s->id, strlen(s->id)),
	    RD_KAFKA_V_VALUE(body, strlen(body)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	    RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
	if (e) {
		log_error("produce failed", LS("error", rd_kafka_err2str(e)));
		rd_kafka_headers_destroy(h);
		return -1;
	}
	return 0;
}

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"model", required_argument, NULL, 'm'},
	    {"requests", required_argument, NULL, 'n'},
	    {"concurrency", required_argument, NULL, 'c'},
	    {"stream", required_argument, NULL, 's'},
	    {"timeout-ms", required_argument, NULL, 't'},
	    {"reply-partition", required_argument, NULL, 'R'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *model = NULL;
	int n = 100, conc = 8, stream = 0, c;
	long long timeout_ms = 120000;
	int32_t reply = 0;
	log_init("gw-dispatch-load", NULL);
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'n': n = atoi(optarg); break;
		case 'c': conc = atoi(optarg); break;
		case 's': stream = atoi(optarg) ? 1 : 0; break;
		case 't': timeout_ms = atoll(optarg); break;
		case 'R': reply = atoi(optarg); break;
		case 'h': fputs(usage, stdout); return 0;
		default: fputs(usage, stderr); return 2;
		}
	}
	if (!model || n < 1 || conc < 1 || conc > 4096 || optind != argc) {
		fputs(usage, stderr);
		return 2;
	}
	const char *brokers = config_str("GW_KAFKA_BROKERS", NULL);
	if (!brokers) {
		log_error("GW_KAFKA_BROKERS is not set");
		return 1;
	}
	char err[512];
	rd_kafka_conf_t *pc = rd_kafka_conf_new(), *cc = rd_kafka_conf_new();
	char group[64];
	snprintf(group, sizeof group, "gw-dispatch-load-%lld", (long long)wire_now_us());
	if (rd_kafka_conf_set(pc, "bootstrap.servers", brokers, err, sizeof err) ||
	    rd_kafka_conf_set(pc, "linger.ms", "0", err, sizeof err) ||
	    rd_kafka_conf_set(cc, "bootstrap.servers", brokers, err, sizeof err) ||
	    rd_kafka_conf_set(cc, "group.id", group, err, sizeof err) ||
	    rd_kafka_conf_set(cc, "enable.auto.commit", "false", err, sizeof err) ||
	    rd_kafka_conf_set(cc, "fetch.wait.max.ms", "2", err, sizeof err)) {
		log_error("bad Kafka setting", LS("error", err));
		return 1;
	}
	rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof err);
	rd_kafka_t *k = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof err);
	if (!p || !k) {
		log_error("cannot create Kafka clients", LS("error", err));
		return 1;
	}
	rd_kafka_poll_set_consumer(k);
	int64_t lo = 0, hi = 0;
	if (rd_kafka_query_watermark_offsets(k, GW_TOPIC_REPLIES, reply, &lo, &hi, 10000) != 0) {
		log_error("no watermarks for the reply topic", LS("topic", GW_TOPIC_REPLIES));
		return 1;
	}
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, GW_TOPIC_REPLIES, reply)->offset = hi;
	if (rd_kafka_assign(k, l) != RD_KAFKA_RESP_ERR_NO_ERROR) {
		log_error("assign failed");
		return 1;
	}
	rd_kafka_topic_partition_list_destroy(l);

	struct slot *slots = calloc((size_t)conc, sizeof *slots);
	long long *lat = calloc((size_t)n, sizeof *lat);
	if (!slots || !lat)
		return 1;
	int sent = 0, done = 0, ok = 0, errors = 0;
	long long messages = 0;
	int64_t end = wire_now_us() + timeout_ms * 1000;
	/* One request answered before the clock starts: the consumer is fetching by then. */
	if (send_one(p, &slots[0], model, stream, reply) != 0)
		return 1;
	while (slots[0].busy && wire_now_us() < end) {
		rd_kafka_poll(p, 0);
		rd_kafka_message_t *m = rd_kafka_consumer_poll(k, 20);
		char id[64], buf[8];
		if (m && !m->err && header(m, GW_H_ID, id, sizeof id) == 0 &&
		    strcmp(id, slots[0].id) == 0 && header(m, GW_H_FINAL, buf, sizeof buf) == 0 &&
		    strcmp(buf, "1") == 0)
			slots[0].busy = 0;
		if (m)
			rd_kafka_message_destroy(m);
	}
	if (slots[0].busy) {
		log_error("no answer to the warm-up request: is a dispatcher running?");
		return 1;
	}
	int64_t t0 = wire_now_us();
	for (int i = 0; i < conc && sent < n; i++, sent++)
		if (send_one(p, &slots[i], model, stream, reply) != 0)
			return 1;
	while (done < n && wire_now_us() < end) {
		rd_kafka_poll(p, 0);
		rd_kafka_message_t *m = rd_kafka_consumer_poll(k, 20);
		if (!m)
			continue;
		char id[64], buf[32];
		if (m->err || header(m, GW_H_ID, id, sizeof id) != 0) {
			rd_kafka_message_destroy(m);
			continue;
		}
		for (int i = 0; i < conc; i++) {
			struct slot *s = &slots[i];
			if (!s->busy || strcmp(s->id, id) != 0)
				continue;
			s->messages++;
			if (!s->status && header(m, GW_H_STATUS, buf, sizeof buf) == 0)
				s->status = atoi(buf);
			if (header(m, GW_H_FINAL, buf, sizeof buf) == 0 && strcmp(buf, "1") == 0) {
				s->busy = 0;
				lat[done++] = (wire_now_us() - s->t0_us) / 1000;
				messages += s->messages;
				if (s->status == 200)
					ok++;
				else
					errors++;
				if (sent < n) {
					if (send_one(p, s, model, stream, reply) != 0)
						return 1;
					sent++;
				}
			}
			break;
		}
		rd_kafka_message_destroy(m);
	}
	double secs = (double)(wire_now_us() - t0) / 1e6;
	qsort(lat, (size_t)done, sizeof *lat, cmp_ll);
	printf("{\"requests\":%d,\"ok\":%d,\"errors\":%d,\"timed_out\":%d,\"seconds\":%.3f,"
	       "\"rps\":%.1f,\"p50_ms\":%lld,\"p99_ms\":%lld,\"messages_per_answer\":%.2f}\n",
	       n, ok, errors, n - done, secs, done / secs, done ? lat[done / 2] : -1,
	       done ? lat[(done * 99) / 100 < done ? (done * 99) / 100 : done - 1] : -1,
	       done ? (double)messages / done : 0.0);
	free(slots);
	free(lat);
	rd_kafka_consumer_close(k);
	rd_kafka_destroy(k);
	rd_kafka_flush(p, 5000);
	rd_kafka_destroy(p);
	return done == n ? 0 : 1;
}
