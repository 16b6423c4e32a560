/* gw-broker: hosts librdkafka's in-memory mock cluster on loopback with every gateway
 * topic created, for one-machine development (DESIGN.md, "The embedded default"). */
#include "config.h"
#include "log.h"
#include "runtime.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: gw-broker [serve] [--bootstrap-file PATH]\n"
    "       gw-broker --help\n"
    "\n"
    "Runs librdkafka's mock Kafka cluster on 127.0.0.1 until SIGTERM/SIGINT, with the\n"
    "gw.* topics created. Prints the bootstrap string (127.0.0.1:PORT) on stdout and,\n"
    "with --bootstrap-file, writes it to PATH atomically (removed again on exit).\n"
    "\n"
    "Environment:\n"
    "  GW_BROKER_COUNT              brokers in the cluster (1)\n"
    "  GW_BROKER_PARTITIONS         partitions of gw.requests, gw.usage, gw.authorized,\n"
    "                               gw.audit, gw.control, gw.deadletter (4)\n"
    "  GW_BROKER_REPLY_PARTITIONS   partitions of gw.replies, one per ingress copy (8)\n"
    "  GW_ADMIN_LISTEN              /health /ready /metrics listener (off); it also\n"
    "                               takes POST /mock/brokers/down and /mock/brokers/up,\n"
    "                               which take every broker down (connections refused)\n"
    "                               or back up, for fault tests\n"
    "  GW_LOG_LEVEL                 debug|info|warn|error (info)\n";

/* Owns rk and the cluster it hosts; the cluster is destroyed before rk. */
struct broker {
	struct runtime rt;
	rd_kafka_t *rk;
	rd_kafka_mock_cluster_t *mc;
	long long brokers;
	const char *bootstrap_file; /* argv, borrowed */
	int wrote_file;
};

/* librdkafka's log lines (from its own threads) into our JSON log; log_write is one
 * write(2) per line, so this is safe off the loop thread. */
static void on_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	enum log_level l = level <= 3   ? LOG_ERROR
			   : level == 4 ? LOG_WARN
			   : level <= 6 ? LOG_INFO
					: LOG_DEBUG;

	if (!log_enabled(l))
		return;
	/* The handle only hosts the cluster and never connects anywhere. */
	if (strcmp(fac, "CONFWARN") == 0 && strstr(buf, "bootstrap.servers"))
		return;
	log_write(l, "librdkafka", (const struct log_kv[]){LS("facility", fac), LS("detail", buf)},
		  2);
}

static int write_bootstrap_file(const char *path, const char *bootstrap)
{
	char tmp[4096];
	size_t len = strlen(bootstrap);
	int fd;

	if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
		log_error("--bootstrap-file path is too long", LS("path", path));
		return -1;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		log_error("cannot create the bootstrap file: check its directory exists and is "
			  "writable",
			  LS("path", tmp), LS("error", strerror(errno)));
		return -1;
	}
	/* A trailing newline keeps it a text file; readers strip it ($(cat ...)). */
	if (write(fd, bootstrap, len) != (ssize_t)len || write(fd, "\n", 1) != 1 ||
	    fsync(fd) != 0) {
		log_error("cannot write the bootstrap file", LS("path", tmp),
			  LS("error", strerror(errno)));
		close(fd);
		unlink(tmp);
		return -1;
	}
	if (close(fd) != 0) {
		log_error("cannot close the bootstrap file", LS("path", tmp),
			  LS("error", strerror(errno)));
		unlink(tmp);
		return -1;
	}
	if (rename(tmp, path) != 0) {
		log_error("cannot rename the bootstrap file into place", LS("from", tmp),
			  LS("to", path), LS("error", strerror(errno)));
		unlink(tmp);
		return -1;
	}
	return 0;
}

/* librdkafka 2.0.2's mock thread serves its op queue before draining its wakeup pipe,
 * so an op queued in between loses its wakeup and waits out the thread's 1 s poll.
 * Each topic create is such an op, sent right after the previous one is answered:
 * a short pause lets the thread get back into poll first, so startup takes
 * milliseconds rather than up to a second per topic. */
static void mock_op_pause(void)
{
	struct timespec ts = {0, 2 * 1000 * 1000};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int create_topic(rd_kafka_mock_cluster_t *mc, const char *topic, long long parts, int rf)
{
	rd_kafka_resp_err_t err;

	mock_op_pause();
	err = rd_kafka_mock_topic_create(mc, topic, (int)parts, rf);
	if (err) {
		log_error("cannot create topic", LS("topic", topic), LI("partitions", parts),
			  LS("error", rd_kafka_err2str(err)));
		return -1;
	}
	return 0;
}

static int create_topics(rd_kafka_mock_cluster_t *mc, long long brokers, long long parts,
			 long long reply_parts)
{
	/* gw.requests and gw.usage must stay co-partitioned: both take `parts`. */
	static const char *const topics[] = {
	    GW_TOPIC_REQUESTS, GW_TOPIC_AUTHORIZED, GW_TOPIC_USAGE,
	    GW_TOPIC_AUDIT,    GW_TOPIC_CONTROL,    GW_TOPIC_DEADLETTER,
	};
	int rf = brokers < 3 ? (int)brokers : 3;

	for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++)
		if (create_topic(mc, topics[i], parts, rf) < 0)
			return -1;
	return create_topic(mc, GW_TOPIC_REPLIES, reply_parts, rf);
}

static int ready(void *arg, char *why, size_t whycap)
{
	struct broker *b = arg;

	if (b->mc)
		return 1;
	snprintf(why, whycap, "mock cluster not started");
	return 0;
}

static int start(struct broker *b)
{
	long long parts, reply_parts;
	char err[512];
	rd_kafka_conf_t *conf;
	const char *bootstrap;

	if (config_int("GW_BROKER_COUNT", 1, 1, 32, &b->brokers) < 0 ||
	    config_int("GW_BROKER_PARTITIONS", 4, 1, 1024, &parts) < 0 ||
	    config_int("GW_BROKER_REPLY_PARTITIONS", 8, 1, 1024, &reply_parts) < 0)
		return -1;

	conf = rd_kafka_conf_new();
	if (!conf) {
		log_error("rd_kafka_conf_new failed");
		return -1;
	}
	rd_kafka_conf_set_log_cb(conf, on_rdkafka_log);
	if (rd_kafka_conf_set(conf, "client.id", "gw-broker", err, sizeof err) !=
	    RD_KAFKA_CONF_OK) {
		log_error("librdkafka configuration refused", LS("error", err));
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	/* Only hosts the cluster: it never produces. rd_kafka_new owns conf on success. */
	b->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
	if (!b->rk) {
		log_error("cannot create the librdkafka handle hosting the mock cluster",
			  LS("error", err));
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	long long brokers = b->brokers;

	b->mc = rd_kafka_mock_cluster_new(b->rk, (int)brokers);
	if (!b->mc) {
		log_error("cannot start the mock cluster (could not listen on 127.0.0.1?)",
			  LI("brokers", brokers));
		return -1;
	}
	if (create_topics(b->mc, brokers, parts, reply_parts) < 0)
		return -1;
	bootstrap = rd_kafka_mock_cluster_bootstraps(b->mc);
	if (!bootstrap || !*bootstrap) {
		log_error("the mock cluster reported no bootstrap address");
		return -1;
	}
	if (b->bootstrap_file) {
		if (write_bootstrap_file(b->bootstrap_file, bootstrap) < 0)
			return -1;
		b->wrote_file = 1;
	}
	log_info("mock cluster ready", LS("bootstrap", bootstrap), LI("brokers", brokers),
		 LI("partitions", parts), LI("reply_partitions", reply_parts),
		 LS("bootstrap_file", b->bootstrap_file ? b->bootstrap_file : ""));
	if (printf("%s\n", bootstrap) < 0 || fflush(stdout) != 0)
		log_warn("cannot print the bootstrap string on stdout",
			 LS("error", strerror(errno)));
	return 0;
}

/* Fault injection for tests: every broker down (connections dropped and refused) or
 * back up. The mock cluster keeps its data meanwhile. */
static void on_brokers(struct evhttp_request *req, void *arg, int up)
{
	struct broker *b = arg;
	struct evbuffer *out = evbuffer_new();
	int failed = 0;

	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
		evhttp_send_reply(req, 405, "Method Not Allowed", NULL);
		if (out)
			evbuffer_free(out);
		return;
	}
	for (int id = 1; b->mc && id <= b->brokers; id++) {
		rd_kafka_resp_err_t err = up ? rd_kafka_mock_broker_set_up(b->mc, id)
					     : rd_kafka_mock_broker_set_down(b->mc, id);
		if (err) {
			log_error("cannot change a mock broker's state", LI("broker", id),
				  LS("error", rd_kafka_err2str(err)));
			failed = 1;
		}
	}
	log_info(up ? "mock brokers up" : "mock brokers down", LI("brokers", b->brokers));
	if (out)
		evbuffer_add_printf(out, "{\"brokers\":\"%s\"}\n", up ? "up" : "down");
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	evhttp_send_reply(req, failed ? 500 : 200, failed ? "Internal Server Error" : "OK", out);
	if (out)
		evbuffer_free(out);
}

static void on_brokers_down(struct evhttp_request *req, void *arg)
{
	on_brokers(req, arg, 0);
}

static void on_brokers_up(struct evhttp_request *req, void *arg)
{
	on_brokers(req, arg, 1);
}

static void stop(struct broker *b)
{
	if (b->wrote_file && unlink(b->bootstrap_file) != 0)
		log_warn("cannot remove the bootstrap file", LS("path", b->bootstrap_file),
			 LS("error", strerror(errno)));
	if (b->mc)
		rd_kafka_mock_cluster_destroy(b->mc);
	b->mc = NULL;
	if (b->rk)
		rd_kafka_destroy(b->rk);
	b->rk = NULL;
}

int main(int argc, char **argv)
{
	struct broker b;
	int i = 1, rc = 1;

	memset(&b, 0, sizeof b);
	if (i < argc && strcmp(argv[i], "serve") == 0)
		i++;
	for (; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs(usage, stdout);
			return 0;
		} else if (strcmp(argv[i], "--bootstrap-file") == 0 && i + 1 < argc &&
			   argv[i + 1][0]) {
			b.bootstrap_file = argv[++i];
		} else if (strncmp(argv[i], "--bootstrap-file=", 17) == 0 && argv[i][17]) {
			b.bootstrap_file = argv[i] + 17;
		} else {
			fputs(usage, stderr);
			return 2;
		}
	}

	if (runtime_setup(&b.rt, "gw-broker", "off") < 0)
		goto out;
	/* runtime_setup reset rt: hooks go in afterwards. No on_stop: a stop signal
	 * leaves the loop at once, the cluster holds nothing worth draining. */
	b.rt.ready = ready;
	b.rt.arg = &b;
	if (start(&b) < 0)
		goto out;
	if (b.rt.admin) {
		evhttp_set_allowed_methods(b.rt.admin,
					   EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
		evhttp_set_cb(b.rt.admin, "/mock/brokers/down", on_brokers_down, &b);
		evhttp_set_cb(b.rt.admin, "/mock/brokers/up", on_brokers_up, &b);
	}
	if (runtime_run(&b.rt) == 0)
		rc = 0;
	log_info("mock cluster stopping");
out:
	stop(&b);
	runtime_free(&b.rt);
	return rc;
}
