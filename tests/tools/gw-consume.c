/* gw-consume: a test tool that prints every message currently in a topic (all
 * partitions, from the beginning up to the high watermark read at start) as one JSON
 * line each: {"partition","offset","key","headers":{...},"value"}. No consumer group. */
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_PARTS  1024
#define TIMEOUT_MS 15000

static const char usage[] = "usage: gw-consume TOPIC\n"
			    "  Prints the messages in TOPIC on GW_KAFKA_BROKERS as JSON lines.\n"
			    "  Exit 0 when every message up to the watermarks read at start was\n"
			    "  printed, 1 otherwise.\n";

static json_t *str_or_null(const void *p, size_t n)
{
	if (!p)
		return json_null();
	json_t *s = json_stringn(p, n);
	return s ? s : json_string("<not UTF-8>");
}

static int print_msg(const rd_kafka_message_t *m)
{
	json_t *o = json_object(), *h = json_object();
	rd_kafka_headers_t *hdrs;
	if (!o || !h)
		return -1;
	json_object_set_new(o, "partition", json_integer(m->partition));
	json_object_set_new(o, "offset", json_integer(m->offset));
	json_object_set_new(o, "key", str_or_null(m->key, m->key_len));
	if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
		const char *name;
		const void *v;
		size_t n;
		for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &v, &n) == 0; i++)
			json_object_set_new(h, name, str_or_null(v, n));
	}
	json_object_set_new(o, "headers", h);
	json_object_set_new(o, "value", str_or_null(m->payload, m->len));
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (!s)
		return -1;
	puts(s);
	free(s);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--help") == 0) {
		fputs(usage, stdout);
		return 0;
	}
	if (argc != 2) {
		fputs(usage, stderr);
		return 2;
	}
	const char *topic = argv[1], *brokers = getenv("GW_KAFKA_BROKERS");
	if (!brokers || !*brokers) {
		fputs("gw-consume: GW_KAFKA_BROKERS is not set\n", stderr);
		return 1;
	}
	char err[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err) ||
	    rd_kafka_conf_set(conf, "group.id", "gw-consume", err, sizeof err) ||
	    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err) ||
	    rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", err, sizeof err)) {
		fprintf(stderr, "gw-consume: %s\n", err);
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
	if (!rk) {
		fprintf(stderr, "gw-consume: %s\n", err);
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	int rc = 1;
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
	static int64_t high[MAX_PARTS];
	int left = 0;
	if (!rkt || rd_kafka_metadata(rk, 0, rkt, &md, TIMEOUT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR ||
	    md->topic_cnt != 1 || md->topics[0].err) {
		fprintf(stderr, "gw-consume: no metadata for %s\n", topic);
		goto out;
	}
	for (int i = 0; i < md->topics[0].partition_cnt && i < MAX_PARTS; i++) {
		int32_t p = md->topics[0].partitions[i].id;
		int64_t lo, hi;
		if (p < 0 || p >= MAX_PARTS ||
		    rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, TIMEOUT_MS)) {
			fprintf(stderr, "gw-consume: no watermarks for %s/%d\n", topic, (int)p);
			goto out;
		}
		high[p] = hi;
		if (hi > lo) {
			rd_kafka_topic_partition_list_add(l, topic, p)->offset = lo;
			left++;
		}
	}
	if (left && rd_kafka_assign(rk, l)) {
		fprintf(stderr, "gw-consume: assign failed\n");
		goto out;
	}
	time_t end = time(NULL) + TIMEOUT_MS / 1000;
	while (left > 0 && time(NULL) < end) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
		if (!m)
			continue;
		if (!m->err && m->partition >= 0 && m->partition < MAX_PARTS) {
			if (print_msg(m) != 0) {
				rd_kafka_message_destroy(m);
				goto out;
			}
			if (m->offset + 1 == high[m->partition])
				left--;
		}
		rd_kafka_message_destroy(m);
	}
	rc = left == 0 ? 0 : 1;
	if (rc)
		fprintf(stderr, "gw-consume: timed out with %d partitions unread\n", left);
out:
	if (fflush(stdout) != 0)
		rc = 1;
	rd_kafka_topic_partition_list_destroy(l);
	if (md)
		rd_kafka_metadata_destroy(md);
	if (rkt)
		rd_kafka_topic_destroy(rkt);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return rc;
}
