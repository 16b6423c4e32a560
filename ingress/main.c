/* ingress: the HTTP front door. Publishes each request to gw.requests and answers it
 * from its own partition of gw.replies. */
#include "ingress.h"
#include "config.h"
#include "log.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: ingress serve     run the HTTP(S) front end (settings from the environment;\n"
	    "                         see docs/ingress.md)\n"
	    "       ingress --help\n");
}

static int load_config(struct ingress_config *c)
{
	snprintf(c->listen, sizeof c->listen, "%s", config_str("GW_HTTP_LISTEN", "127.0.0.1:8080"));
	snprintf(c->tls_cert, sizeof c->tls_cert, "%s", config_str("GW_TLS_CERT_FILE", ""));
	snprintf(c->tls_key, sizeof c->tls_key, "%s", config_str("GW_TLS_KEY_FILE", ""));
	snprintf(c->cors_origins, sizeof c->cors_origins, "%s", config_str("GW_CORS_ORIGINS", ""));
	if (config_int("GW_REQUEST_TIMEOUT", 120, 1, 86400, &c->request_timeout_s) ||
	    config_int("GW_MAX_BODY", 8 << 20, 1024, 1LL << 30, &c->max_body) ||
	    config_int("GW_MAX_INFLIGHT", 10000, 1, 1000000, &c->max_inflight) ||
	    config_int("GW_INGRESS_REPLY_PARTITION", 0, 0, 100000, &c->reply_partition) ||
	    config_int("GW_SHUTDOWN_GRACE_MS", 30000, 0, 3600000, &c->shutdown_grace_ms) ||
	    config_int("GW_MAX_JSON_DEPTH", 64, 2, 10000, &c->max_json_depth) ||
	    config_int("GW_MAX_HEADER_BYTES", 32768, 1024, 1 << 20, &c->max_header_bytes) ||
	    config_int("GW_MAX_HEADERS", 100, 8, 10000, &c->max_headers) ||
	    config_int("GW_HEADER_TIMEOUT_MS", 60000, 100, 3600000, &c->header_timeout_ms) ||
	    config_int("GW_BODY_TIMEOUT_MS", 60000, 100, 3600000, &c->body_timeout_ms) ||
	    config_int("GW_KEEPALIVE_TIMEOUT_MS", 75000, 100, 3600000, &c->keepalive_ms) ||
	    config_int("GW_MAX_CONNECTIONS", 10000, 1, 1000000, &c->max_conns) ||
	    config_int("GW_MAX_CONNECTIONS_PER_IP", 1000, 1, 1000000, &c->max_conns_per_ip) ||
	    config_int("GW_MAX_STREAM_BUFFER", 1 << 20, 4096, 1LL << 30, &c->max_stream_buffer) ||
	    config_int("GW_HSTS_MAX_AGE", 31536000, 0, 1LL << 31, &c->hsts_max_age) ||
	    config_int("GW_BROKER_PROBE_MS", 250, 50, 60000, &c->probe_interval_ms))
		return -1;
	return 0;
}

static int serve(void)
{
	static struct ingress ig;
	if (runtime_setup(&ig.rt, "ingress", "127.0.0.1:9100") != 0 || load_config(&ig.cfg) != 0 ||
	    seal_key_load(ig.seal_key) != 0 || pending_table_init(&ig.pending, 1 << 16) != 0)
		return 1;
	char client_id[128];
	snprintf(client_id, sizeof client_id, "%s", config_instance("ingress"));
	if (kafka_producer_init(&ig.producer, ig.rt.base, client_id) != 0 || relay_init(&ig) != 0 ||
	    front_init(&ig) != 0 ||
	    probe_start(&ig.probe, ig.producer.rk, (int)ig.cfg.probe_interval_ms) != 0)
		return 1;
	log_info("ingress ready", LS("address", ig.cfg.listen));
	int rc = runtime_run(&ig.rt);
	probe_stop(&ig.probe);
	if (ig.producer.rk)
		kafka_producer_close(&ig.producer, 5000);
	if (ig.replies.rk)
		kafka_consumer_close(&ig.replies);
	if (ig.janitor)
		event_free(ig.janitor);
	if (ig.http)
		evhttp_free(ig.http);
	conn_shutdown(&ig);
	pending_table_free(&ig.pending);
	OPENSSL_cleanse(ig.seal_key, sizeof ig.seal_key);
	runtime_free(&ig.rt);
	log_info("ingress stopped");
	return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage(stdout);
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "serve") == 0)
		return serve();
	usage(stderr);
	return 2;
}
