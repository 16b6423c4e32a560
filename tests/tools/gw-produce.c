/* gw-produce: a test tool that produces each line of stdin as one message to a topic,
 * with the gw-v contract header, and exits 0 only when every message was delivered. */
#include "config.h"
#include "log.h"
#include "wire.h"

#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gw-produce [--version V | --no-version] [--key K] TOPIC < lines\n"
    "  Produces each stdin line (without its newline) as one message to TOPIC on\n"
    "  GW_KAFKA_BROKERS, with header gw-v: " GW_WIRE_VERSION " unless told otherwise.\n"
    "  Exit 0 when every message was delivered, 1 otherwise, 2 on bad flags.\n";

static long delivered, failed;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	if (m->err) {
		failed++;
		log_error("message not delivered", LS("error", rd_kafka_err2str(m->err)));
	} else {
		delivered++;
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"version", required_argument, NULL, 'v'},
	    {"no-version", no_argument, NULL, 'n'},
	    {"key", required_argument, NULL, 'k'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *version = GW_WIRE_VERSION, *key = NULL;
	int c;
	log_init("gw-produce", NULL);
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'v': version = optarg; break;
		case 'n': version = NULL; break;
		case 'k': key = optarg; break;
		case 'h': fputs(usage, stdout); return 0;
		default: fputs(usage, stderr); return 2;
		}
	}
	if (optind + 1 != argc) {
		fputs(usage, stderr);
		return 2;
	}
	const char *topic = argv[optind];
	const char *brokers = config_str("GW_KAFKA_BROKERS", NULL);
	if (!brokers) {
		log_error("GW_KAFKA_BROKERS is not set");
		return 1;
	}
	char err[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err) ||
	    rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err) ||
	    rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err) ||
	    /* Unkeyed lines spread evenly over the partitions rather than in sticky runs:
	     * the mock broker keeps only the newest 5 MB of each partition. */
	    rd_kafka_conf_set(conf, "sticky.partitioning.linger.ms", "0", err, sizeof err)) {
		log_error("bad Kafka setting", LS("error", err));
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
	if (!rk) {
		log_error("cannot create producer", LS("error", err));
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	long sent = 0;
	int rc = 0;
	while ((n = getline(&line, &cap, stdin)) >= 0) {
		if (n > 0 && line[n - 1] == '\n')
			line[--n] = 0;
		rd_kafka_headers_t *h = rd_kafka_headers_new(1);
		if (version)
			rd_kafka_header_add(h, GW_H_VERSION, -1, version, -1);
		rd_kafka_resp_err_t e;
		while ((e = rd_kafka_producev(
			    rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
			    RD_KAFKA_V_VALUE(line, (size_t)n),
			    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
			    RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
			rd_kafka_poll(rk, 100);
		if (e) {
			log_error("produce failed", LS("topic", topic),
				  LS("error", rd_kafka_err2str(e)));
			rd_kafka_headers_destroy(h);
			rc = 1;
			break;
		}
		sent++;
		rd_kafka_poll(rk, 0);
	}
	free(line);
	if (rd_kafka_flush(rk, 60000) != RD_KAFKA_RESP_ERR_NO_ERROR)
		log_error("flush timed out", LI("left", rd_kafka_outq_len(rk)));
	rd_kafka_destroy(rk);
	if (delivered != sent || failed)
		rc = 1;
	log_info("produced", LS("topic", topic), LI("sent", sent), LI("delivered", delivered),
		 LI("failed", failed));
	return rc;
}
