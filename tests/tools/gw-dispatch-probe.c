/* gw-dispatch-probe: a test tool that puts one request on gw.authorized the way authz
 * does, then collects what the dispatcher made of it (gw.replies until final, and the
 * gw.usage, gw.audit and gw.deadletter messages of that id) and prints it as one JSON
 * line. */
#include "config.h"
#include "log.h"
#include "wire.h"

#include <getopt.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gw-dispatch-probe --model M [options]\n"
    "  Produces one request to gw.authorized on GW_KAFKA_BROKERS and prints, as one JSON\n"
    "  line, what came back for its id: {id, status, ctype, seqs, final, body,\n"
    "  body_sha256, usage[], audit[], deadletter[]}.\n"
    "options:\n"
    "  --route R            gw-route (/v1/chat/completions)\n"
    "  --body JSON          request body (default: a small chat request for M)\n"
    "  --stream 0|1         gw-stream, and \"stream\" in the default body (0)\n"
    "  --deadline-ms N      gw-deadline relative to now; may be negative (30000)\n"
    "  --principal P        gw-principal (probe-user)\n"
    "  --hint H             gw-hint (probe-hint)\n"
    "  --reply-partition N  gw-reply (0)\n"
    "  --id ID              request id (random)\n"
    "  --omit HEADER        leave HEADER out (e.g. gw-model) to provoke a dead letter\n"
    "  --no-reply           do not wait for a reply (expired, duplicate, dead letter)\n"
    "  --wait-deadletter    wait for the dead letter of this id\n"
    "  --wait-audits N      wait for N dispatch.result events of this id (1)\n"
    "  --settle-ms N        keep collecting N ms after that (400)\n"
    "  --timeout-ms N       give up after N ms (15000)\n"
    "  --cluster C          gw-cluster (a FIRST route)\n"
    "  --framework F        gw-framework (a FIRST route)\n"
    "  --models LIST        gw-models: models the principal may use (*)\n"
    "  --cancel-after-ms N  produce a cancel for the id N ms after the request\n"
    "  --cancel-first       produce the cancel before the request\n"
    "  --from-beginning     read the topics from the beginning (default: from their end\n"
    "                       as of just before the request; use it to see events of an\n"
    "                       earlier request with the same --id)\n"
    "output also has headers (gw-retry-after of seq 0), first_ms and end_ms (ms from the\n"
    "request being produced to the first reply / the final one).\n"
    "exit: 0 when everything waited for arrived, 1 on timeout or error, 2 on bad flags.\n";

struct probe {
	char id[GW_ID_HEX + 1];
	int32_t reply_partition;
	int status;
	char ctype[128];
	json_t *seqs, *usage, *audit, *deadletter, *headers;
	int final;
	int64_t t0_ms, first_ms, end_ms;
	int audit_done; /* dispatch.result events that arrived */
	unsigned char *body;
	size_t len, cap;
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

static json_t *value_json(const rd_kafka_message_t *m)
{
	json_t *j = json_loadb(m->payload, m->len, 0, NULL);
	return j ? j : json_stringn(m->payload ? m->payload : "", m->len);
}

static void take(struct probe *p, const rd_kafka_message_t *m)
{
	char id[64], buf[256];
	const char *topic = rd_kafka_topic_name(m->rkt);
	if (header(m, GW_H_ID, id, sizeof id) != 0 || strcmp(id, p->id) != 0)
		return;
	if (strcmp(topic, GW_TOPIC_REPLIES) == 0) {
		if (!p->first_ms)
			p->first_ms = wire_now_ms();
		if (header(m, GW_H_SEQ, buf, sizeof buf) == 0) {
			json_array_append_new(p->seqs, json_integer(atoll(buf)));
			char ra[32];
			if (atoll(buf) == 0 && header(m, "gw-retry-after", ra, sizeof ra) == 0)
				json_object_set_new(p->headers, "gw-retry-after",
						    json_integer(atoll(ra)));
		}
		if (header(m, GW_H_STATUS, buf, sizeof buf) == 0 && p->status == 0)
			p->status = atoi(buf);
		if (!p->ctype[0])
			header(m, GW_H_CTYPE, p->ctype, sizeof p->ctype);
		if (header(m, GW_H_FINAL, buf, sizeof buf) == 0 && strcmp(buf, "1") == 0) {
			p->final++;
			p->end_ms = wire_now_ms();
		}
		if (p->len + m->len + 1 > p->cap) {
			size_t nc = (p->len + m->len + 1) * 2;
			unsigned char *nb = realloc(p->body, nc);
			if (!nb)
				return;
			p->body = nb;
			p->cap = nc;
		}
		if (m->len)
			memcpy(p->body + p->len, m->payload, m->len);
		p->len += m->len;
	} else if (strcmp(topic, GW_TOPIC_USAGE) == 0) {
		json_t *u = value_json(m);
		char key[256];
		size_t kl = m->key_len < sizeof key - 1 ? m->key_len : sizeof key - 1;
		memcpy(key, m->key ? m->key : "", kl);
		key[kl] = 0;
		if (json_is_object(u))
			json_object_set_new(u, "_key", json_string(key));
		json_array_append_new(p->usage, u);
	} else if (strcmp(topic, GW_TOPIC_AUDIT) == 0) {
		json_t *a = value_json(m);
		json_t *type = json_object_get(a, "type");
		if (json_is_string(type) && strcmp(json_string_value(type), "dispatch.result") == 0)
			p->audit_done++;
		json_array_append_new(p->audit, a);
	} else if (strcmp(topic, GW_TOPIC_DEADLETTER) == 0) {
		json_t *d = json_object();
		if (header(m, GW_H_REASON, buf, sizeof buf) == 0)
			json_object_set_new(d, "reason", json_string(buf));
		json_array_append_new(p->deadletter, d);
	}
}

/* Reading starts at the current end (queried before the request is produced, so
 * nothing of it can be missed), not at the beginning: the topics grow with every
 * request of a test run. */
static int from_beginning;

static int64_t start_at(rd_kafka_t *rk, const char *topic, int32_t part)
{
	int64_t lo = 0, hi = 0;
	if (from_beginning ||
	    rd_kafka_query_watermark_offsets(rk, topic, part, &lo, &hi, 5000) != 0)
		return RD_KAFKA_OFFSET_BEGINNING;
	return hi;
}

static int add_topic(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *l, const char *topic,
		     int32_t only)
{
	if (only >= 0) {
		rd_kafka_topic_partition_list_add(l, topic, only)->offset =
		    start_at(rk, topic, only);
		return 0;
	}
	rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err =
	    t ? rd_kafka_metadata(rk, 0, t, &md, 10000) : RD_KAFKA_RESP_ERR__FAIL;
	if (err || md->topic_cnt != 1 || md->topics[0].err) {
		log_error("no metadata for topic", LS("topic", topic),
			  LS("error", rd_kafka_err2str(err ? err : md->topics[0].err)));
		if (md)
			rd_kafka_metadata_destroy(md);
		if (t)
			rd_kafka_topic_destroy(t);
		return -1;
	}
	for (int i = 0; i < md->topics[0].partition_cnt; i++)
		rd_kafka_topic_partition_list_add(l, topic, md->topics[0].partitions[i].id)
		    ->offset = start_at(rk, topic, md->topics[0].partitions[i].id);
	rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(t);
	return 0;
}

static int produce(const char *brokers, const struct probe *p, const char *body, const char *omit,
		   const char *const *hv, int nh);

/* A cancel the way ingress sends one: keyed by the id, empty value. */
static int produce_cancel(const char *brokers, const struct probe *p, const char *deadline)
{
	const char *hv[] = {GW_H_VERSION, GW_WIRE_VERSION, GW_H_ID, p->id, GW_H_CANCEL,
			    "1",          GW_H_DEADLINE,   deadline};
	return produce(brokers, p, "", NULL, hv, 8);
}

static int produce(const char *brokers, const struct probe *p, const char *body, const char *omit,
		   const char *const *hv, int nh)
{
	char err[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err) ||
	    rd_kafka_conf_set(conf, "linger.ms", "0", err, sizeof err)) {
		log_error("bad Kafka setting", LS("error", err));
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
	if (!rk) {
		log_error("cannot create producer", LS("error", err));
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	rd_kafka_headers_t *h = rd_kafka_headers_new(16);
	for (int i = 0; i + 1 < nh; i += 2)
		if (!omit || strcmp(omit, hv[i]) != 0)
			rd_kafka_header_add(h, hv[i], -1, hv[i + 1], -1);
	rd_kafka_resp_err_t e = rd_kafka_producev(
	    rk, RD_KAFKA_V_TOPIC(GW_TOPIC_AUTHORIZED), RD_KAFKA_V_KEY(p->id, strlen(p->id)),
	    RD_KAFKA_V_VALUE((void *)body, strlen(body)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	    RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
	if (e) {
		log_error("produce failed", LS("error", rd_kafka_err2str(e)));
		rd_kafka_headers_destroy(h);
		rd_kafka_destroy(rk);
		return -1;
	}
	e = rd_kafka_flush(rk, 10000);
	rd_kafka_destroy(rk);
	if (e) {
		log_error("request not delivered", LS("error", rd_kafka_err2str(e)));
		return -1;
	}
	return 0;
}

static void sha256_hex(const unsigned char *b, size_t n, char out[65])
{
	unsigned char md[32];
	unsigned int ml = 0;
	static const char hex[] = "0123456789abcdef";
	EVP_Digest(b, n, md, &ml, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[64] = 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"model", required_argument, NULL, 'm'},
	    {"route", required_argument, NULL, 'r'},
	    {"body", required_argument, NULL, 'b'},
	    {"stream", required_argument, NULL, 's'},
	    {"deadline-ms", required_argument, NULL, 'd'},
	    {"principal", required_argument, NULL, 'p'},
	    {"hint", required_argument, NULL, 'H'},
	    {"reply-partition", required_argument, NULL, 'R'},
	    {"id", required_argument, NULL, 'i'},
	    {"omit", required_argument, NULL, 'o'},
	    {"no-reply", no_argument, NULL, 'n'},
	    {"wait-deadletter", no_argument, NULL, 'D'},
	    {"timeout-ms", required_argument, NULL, 't'},
	    {"wait-audits", required_argument, NULL, 'A'},
	    {"settle-ms", required_argument, NULL, 'S'},
	    {"cluster", required_argument, NULL, 'c'},
	    {"framework", required_argument, NULL, 'f'},
	    {"models", required_argument, NULL, 'M'},
	    {"cancel-after-ms", required_argument, NULL, 'C'},
	    {"cancel-first", no_argument, NULL, 'F'},
	    {"from-beginning", no_argument, NULL, 'B'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *model = NULL, *route = "/v1/chat/completions", *body = NULL,
		   *principal = "probe-user";
	const char *hint = "probe-hint", *omit = NULL;
	long long deadline_rel = 30000, timeout_ms = 15000, settle_ms = 400;
	int want_audits = 1, cancel_first = 0;
	long long cancel_after = -1;
	const char *cluster = NULL, *framework = NULL, *models = NULL;
	int stream = 0, no_reply = 0, wait_dl = 0, c;
	struct probe p;
	memset(&p, 0, sizeof p);
	log_init("gw-dispatch-probe", NULL);
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'r': route = optarg; break;
		case 'b': body = optarg; break;
		case 's': stream = atoi(optarg) ? 1 : 0; break;
		case 'd': deadline_rel = atoll(optarg); break;
		case 'p': principal = optarg; break;
		case 'H': hint = optarg; break;
		case 'R': p.reply_partition = atoi(optarg); break;
		case 'i':
			if (!wire_id_valid(optarg)) {
				fputs("--id must be 32 lowercase hex digits\n", stderr);
				return 2;
			}
			snprintf(p.id, sizeof p.id, "%s", optarg);
			break;
		case 'o': omit = optarg; break;
		case 'n': no_reply = 1; break;
		case 'D': wait_dl = 1; break;
		case 't': timeout_ms = atoll(optarg); break;
		case 'A': want_audits = atoi(optarg); break;
		case 'S': settle_ms = atoll(optarg); break;
		case 'c': cluster = optarg; break;
		case 'f': framework = optarg; break;
		case 'M': models = optarg; break;
		case 'C': cancel_after = atoll(optarg); break;
		case 'F': cancel_first = 1; break;
		case 'B': from_beginning = 1; break;
		case 'h': fputs(usage, stdout); return 0;
		default: fputs(usage, stderr); return 2;
		}
	}
	if (!model || optind != argc) {
		fputs(usage, stderr);
		return 2;
	}
	const char *brokers = config_str("GW_KAFKA_BROKERS", NULL);
	if (!brokers) {
		log_error("GW_KAFKA_BROKERS is not set");
		return 1;
	}
	if (!p.id[0] && wire_id_new(p.id) != 0)
		return 1;
	char defbody[1024];
	if (!body) {
		snprintf(defbody, sizeof defbody,
			 "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"hello "
			 "probe\"}],\"stream\":%s}",
			 model, stream ? "true" : "false");
		body = defbody;
	}
	char deadline[32], reply[16], streams[4];
	snprintf(deadline, sizeof deadline, "%lld", (long long)wire_now_ms() + deadline_rel);
	snprintf(reply, sizeof reply, "%d", (int)p.reply_partition);
	snprintf(streams, sizeof streams, "%d", stream);
	const char *hv[] = {
	    GW_H_VERSION, GW_WIRE_VERSION, GW_H_ID,     p.id,         GW_H_DEADLINE,
	    deadline,     GW_H_REPLY,      reply,       GW_H_ROUTE,   route,
	    GW_H_MODEL,   model,           GW_H_STREAM, streams,      GW_H_PRINCIPAL,
	    principal,    GW_H_HINT,       hint,        GW_H_CLIENT,  "127.0.0.1",
	    GW_H_GROUPS,  "probe-group",   GW_H_RULE,   "probe-rule", GW_H_CLUSTER,
	    cluster,      GW_H_FRAMEWORK,  framework,   GW_H_MODELS,  models};
	/* Optional headers at the end are left out when not given. */
	int nh = (int)(sizeof hv / sizeof hv[0]);
	const char *hv2[sizeof hv / sizeof hv[0]];
	int n2 = 0;
	for (int i = 0; i + 1 < nh; i += 2)
		if (hv[i + 1]) {
			hv2[n2++] = hv[i];
			hv2[n2++] = hv[i + 1];
		}

	/* The consumer is set up first so nothing is missed; it reads from the beginning
	 * and keeps only this id. */
	char err[512], group[64];
	snprintf(group, sizeof group, "gw-dispatch-probe-%s", p.id);
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err) ||
	    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err) ||
	    /* assign() needs a group id; nothing is ever committed under it. */
	    rd_kafka_conf_set(conf, "group.id", group, err, sizeof err) ||
	    rd_kafka_conf_set(conf, "fetch.wait.max.ms", "5", err, sizeof err)) {
		log_error("bad Kafka setting", LS("error", err));
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
	if (!rk) {
		log_error("cannot create consumer", LS("error", err));
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	rd_kafka_poll_set_consumer(rk);
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(32);
	rd_kafka_resp_err_t aerr = RD_KAFKA_RESP_ERR_NO_ERROR;
	if (add_topic(rk, l, GW_TOPIC_REPLIES, p.reply_partition) ||
	    add_topic(rk, l, GW_TOPIC_USAGE, -1) || add_topic(rk, l, GW_TOPIC_AUDIT, -1) ||
	    add_topic(rk, l, GW_TOPIC_DEADLETTER, -1) || (aerr = rd_kafka_assign(rk, l))) {
		if (aerr)
			log_error("assign failed", LS("error", rd_kafka_err2str(aerr)));
		rd_kafka_topic_partition_list_destroy(l);
		rd_kafka_destroy(rk);
		return 1;
	}
	rd_kafka_topic_partition_list_destroy(l);
	p.seqs = json_array();
	p.usage = json_array();
	p.audit = json_array();
	p.deadletter = json_array();
	p.headers = json_object();

	int rc = 0;
	if (cancel_first && produce_cancel(brokers, &p, deadline) != 0)
		return 1;
	p.t0_ms = wire_now_ms();
	if (produce(brokers, &p, body, omit, hv2, n2) != 0) {
		rc = 1;
	} else {
		int64_t end = wire_now_ms() + timeout_ms, settle = 0;
		int64_t cancel_at = cancel_after >= 0 ? p.t0_ms + cancel_after : 0;
		for (;;) {
			int64_t now = wire_now_ms();
			if (cancel_at && now >= cancel_at) {
				cancel_at = 0;
				if (produce_cancel(brokers, &p, deadline) != 0)
					rc = 1;
			}
			int done =
			    (no_reply || p.final) && (wait_dl ? json_array_size(p.deadletter) > 0
							      : p.audit_done >= want_audits);
			/* Once done, a short settle picks up usage and stray extra replies. */
			if (done && !settle)
				settle = now + settle_ms;
			if ((settle && now >= settle) || now >= end)
				break;
			rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 50);
			if (!m)
				continue;
			if (!m->err)
				take(&p, m);
			rd_kafka_message_destroy(m);
		}
		if (!settle)
			rc = 1;
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);

	char sha[65];
	sha256_hex(p.body ? p.body : (const unsigned char *)"", p.len, sha);
	json_t *out = json_object();
	json_object_set_new(out, "id", json_string(p.id));
	json_object_set_new(out, "status", p.status ? json_integer(p.status) : json_null());
	json_object_set_new(out, "ctype", json_string(p.ctype));
	json_object_set_new(out, "seqs", p.seqs);
	json_object_set_new(out, "final", json_integer(p.final));
	json_t *bj = json_stringn(p.body ? (const char *)p.body : "", p.len);
	json_object_set_new(out, "body", bj ? bj : json_string("<not utf-8>"));
	json_object_set_new(out, "body_size", json_integer((json_int_t)p.len));
	json_object_set_new(out, "body_sha256", json_string(sha));
	json_object_set_new(out, "usage", p.usage);
	json_object_set_new(out, "audit", p.audit);
	json_object_set_new(out, "deadletter", p.deadletter);
	json_object_set_new(out, "timed_out", json_boolean(rc != 0));
	json_object_set_new(out, "headers", p.headers);
	json_object_set_new(out, "first_ms",
			    p.first_ms ? json_integer(p.first_ms - p.t0_ms) : json_null());
	json_object_set_new(out, "end_ms",
			    p.end_ms ? json_integer(p.end_ms - p.t0_ms) : json_null());
	char *s = json_dumps(out, JSON_COMPACT);
	if (s)
		printf("%s\n", s);
	free(s);
	json_decref(out);
	free(p.body);
	return rc;
}
