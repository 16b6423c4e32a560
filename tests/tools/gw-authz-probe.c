/* gw-authz-probe: a test tool for authz. `request` seals the credential in GW_PROBE_KEY
 * for a fresh request id, produces one gw.requests message with the contract headers
 * and prints, as one JSON line, what authz answered (gw.authorized or gw.replies,
 * matched by gw-id) and its authz.decision audit event. `usage` produces one gw.usage
 * message. Reads from the beginning of each topic with a direct assignment (no group). */
#include "apikey.h"
#include "b64url.h"
#include "jwt.h"
#include "config.h"
#include "kafka.h"
#include "log.h"
#include "seal.h"
#include "wire.h"

#include <getopt.h>
#include <openssl/evp.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gw-authz-probe request [--model M] [--route R] [--reply-partition N]\n"
    "                              [--expired] [--no-cred] [--tamper] [--malformed]\n"
    "                              [--timeout-ms N] [--cluster C --framework F]\n"
    "                              [--hint H] [--deadline-ms N]\n"
    "       gw-authz-probe burst --count N [--model M] [--hint H] [--timeout-ms N]\n"
    "                              (N requests at once; prints {\"authorized\":A,\n"
    "                              \"status\":{\"429\":B,...},\"missing\":C})\n"
    "       gw-authz-probe dump TOPIC...   (every message, raw, one per line)\n"
    "       gw-authz-probe usage (--principal P --tokens N | --raw VALUE)\n"
    "                              [--request-id ID] [--hint H]\n"
    "  Environment: GW_KAFKA_BROKERS, GW_SEAL_KEY[_FILE], GW_PROBE_KEY (the credential\n"
    "  to seal; never argv). Prints one JSON line {id, topic, headers, value, decodes,\n"
    "  audit}, the answer being looked for on gw.authorized, gw.replies (the request's\n"
    "  reply partition) and gw.deadletter; exit 0 when an answer (or, with --expired,\n"
    "  the audit event) arrived, 1 otherwise.\n";

/* What gw.authorized and gw.replies must carry (docs/CONTRACT.md). */
#define AUTHORIZED_FIELDS                                                                          \
	(GW_F_ID | GW_F_DEADLINE | GW_F_REPLY | GW_F_ROUTE | GW_F_STREAM | GW_F_PRINCIPAL |        \
	 GW_F_GROUPS | GW_F_RULE | GW_F_HINT | GW_F_MODELS)
#define REPLY_FIELDS (GW_F_ID | GW_F_STATUS | GW_F_SEQ | GW_F_FINAL | GW_F_CTYPE)

static int delivered_err = -1;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	delivered_err = m->err;
	if (m->err)
		log_error("probe message not delivered", LS("error", rd_kafka_err2str(m->err)));
}

static rd_kafka_t *client(rd_kafka_type_t type)
{
	const char *brokers = config_str("GW_KAFKA_BROKERS", NULL);
	char err[512];
	if (!brokers) {
		log_error("GW_KAFKA_BROKERS is not set");
		return NULL;
	}
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err) ||
	    /* librdkafka wants a group.id even for a direct assignment; nothing is committed. */
	    (type == RD_KAFKA_CONSUMER &&
	     (rd_kafka_conf_set(conf, "group.id", "gw-authz-probe", err, sizeof err) ||
	      rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err) ||
	      rd_kafka_conf_set(conf, "fetch.wait.max.ms", "5", err, sizeof err))) ||
	    (type == RD_KAFKA_PRODUCER &&
	     rd_kafka_conf_set(conf, "linger.ms", "0", err, sizeof err))) {
		log_error("bad Kafka setting", LS("error", err));
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	if (type == RD_KAFKA_PRODUCER)
		rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	rd_kafka_t *rk = rd_kafka_new(type, conf, err, sizeof err);
	if (!rk) {
		log_error("cannot create Kafka client", LS("error", err));
		rd_kafka_conf_destroy(conf);
	}
	return rk;
}

static int produce(rd_kafka_t *p, const char *topic, const char *key, const char *value,
		   rd_kafka_headers_t *h)
{
	rd_kafka_resp_err_t err = rd_kafka_producev(
	    p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
	    RD_KAFKA_V_VALUE((void *)value, strlen(value)),
	    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
	if (err) {
		rd_kafka_headers_destroy(h);
		log_error("produce failed", LS("topic", topic), LS("error", rd_kafka_err2str(err)));
		return -1;
	}
	rd_kafka_flush(p, 10000);
	return delivered_err == 0 ? 0 : -1;
}

static int partitions(rd_kafka_t *rk, const char *topic)
{
	rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	int n = -1;
	if (t && rd_kafka_metadata(rk, 0, t, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR &&
	    md->topic_cnt == 1 && md->topics[0].err == 0)
		n = md->topics[0].partition_cnt;
	if (md)
		rd_kafka_metadata_destroy(md);
	if (t)
		rd_kafka_topic_destroy(t);
	return n;
}

static json_t *headers_json(const rd_kafka_message_t *m)
{
	json_t *o = json_object();
	rd_kafka_headers_t *h = NULL;
	if (rd_kafka_message_headers(m, &h) || !h)
		return o;
	const char *name;
	const void *val;
	size_t size;
	for (size_t i = 0; rd_kafka_header_get_all(h, i, &name, &val, &size) == 0; i++) {
		int text = 1;
		for (size_t j = 0; j < size; j++)
			if (((const unsigned char *)val)[j] < 0x20 ||
			    ((const unsigned char *)val)[j] >= 0x7f)
				text = 0;
		char buf[64];
		snprintf(buf, sizeof buf, "<binary %zu bytes>", size);
		json_object_set_new(o, name,
				    text ? json_stringn(val ? val : "", size) : json_string(buf));
	}
	return o;
}

static int header_is(const rd_kafka_message_t *m, const char *name, const char *want)
{
	rd_kafka_headers_t *h = NULL;
	const void *v;
	size_t n;
	return rd_kafka_message_headers(m, &h) == 0 && h &&
	       rd_kafka_header_get_last(h, name, &v, &n) == 0 && v && n == strlen(want) &&
	       memcmp(v, want, n) == 0;
}

/* The principal hint ingress would compute: the key id of an API key, the unverified
 * sub of a JWT, else a digest of the credential. */
static void hint_of(const char *cred, char *hint, size_t cap)
{
	char id[APIKEY_ID_HEX + 1];
	snprintf(hint, cap, "anonymous");
	if (!cred)
		return;
	if (strncmp(cred, "Bearer ", 7) == 0)
		cred += 7;
	if (apikey_parse(cred, id) == 0) {
		snprintf(hint, cap, "%s", id);
		return;
	}
	const char *d1 = strchr(cred, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
	if (jwt_looks_like(cred, strlen(cred)) && d2) {
		unsigned char buf[JWT_MAX_LEN];
		long n = b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), buf, sizeof buf);
		json_t *c = n > 0 ? json_loadb((char *)buf, (size_t)n, 0, NULL) : NULL;
		const char *sub = json_string_value(json_object_get(c, "sub"));
		if (sub && strlen(sub) < cap)
			snprintf(hint, cap, "%s", sub);
		json_decref(c);
		if (sub)
			return;
	}
	unsigned char md[32];
	unsigned int ml = 0;
	if (EVP_Digest(cred, strlen(cred), md, &ml, EVP_sha256(), NULL) == 1)
		for (int i = 0; i < 16 && 2 * i + 2 < (int)cap; i++)
			snprintf(hint + 2 * i, 3, "%02x", md[i]);
}

static int cmd_burst(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"count", required_argument, NULL, 'c'},
	    {"model", required_argument, NULL, 'm'},
	    {"hint", required_argument, NULL, 'h'},
	    {"timeout-ms", required_argument, NULL, 'T'},
	    {NULL, 0, NULL, 0},
	};
	const char *model = "mock-small", *hintopt = NULL;
	int count = 0, timeout_ms = 20000, c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c': count = atoi(optarg); break;
		case 'm': model = optarg; break;
		case 'h': hintopt = optarg; break;
		case 'T': timeout_ms = atoi(optarg); break;
		default: fputs(usage, stderr); return 2;
		}
	}
	const char *cred = config_str("GW_PROBE_KEY", NULL);
	unsigned char key[SEAL_KEY_LEN];
	if (count <= 0 || count > 100000 || !cred) {
		fputs(usage, stderr);
		return 2;
	}
	if (seal_key_load(key) != 0)
		return 1;
	char hint[128];
	if (hintopt)
		snprintf(hint, sizeof hint, "%s", hintopt);
	else
		hint_of(cred, hint, sizeof hint);
	char(*ids)[GW_ID_HEX + 1] = calloc((size_t)count, sizeof *ids);
	char *seen = calloc((size_t)count, 1);
	struct gw_meta *m = calloc(1, sizeof *m);
	rd_kafka_t *p = client(RD_KAFKA_PRODUCER), *k = client(RD_KAFKA_CONSUMER);
	json_t *status = json_object();
	int rc = 1, authorized = 0, answered = 0;
	if (!ids || !seen || !m || !p || !k)
		goto out;
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(32);
	int n = partitions(k, GW_TOPIC_AUTHORIZED);
	for (int i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(l, GW_TOPIC_AUTHORIZED, i)->offset =
		    RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_topic_partition_list_add(l, GW_TOPIC_REPLIES, 0)->offset =
	    RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_resp_err_t aerr = rd_kafka_assign(k, l);
	rd_kafka_topic_partition_list_destroy(l);
	if (aerr)
		goto out;
	const char *body = "{\"model\":\"mock-small\",\"messages\":[]}";
	partitions(p, GW_TOPIC_REQUESTS); /* see cmd_request */
	for (int i = 0; i < count; i++) {
		memset(m, 0, sizeof *m);
		if (wire_id_new(m->id) != 0)
			goto out;
		memcpy(ids[i], m->id, sizeof ids[i]);
		m->deadline_ms = wire_now_ms() + 60000;
		m->reply_partition = 0;
		snprintf(m->route, sizeof m->route, "/v1/chat/completions");
		snprintf(m->model, sizeof m->model, "%s", model);
		if (seal_encrypt(key, cred, strlen(cred), m->id, m->cred, sizeof m->cred,
				 &m->cred_len) != 0)
			goto out;
		rd_kafka_headers_t *h = rd_kafka_headers_new(10);
		if (wire_encode(m,
				GW_F_ID | GW_F_DEADLINE | GW_F_REPLY | GW_F_ROUTE | GW_F_MODEL |
				    GW_F_STREAM | GW_F_CRED,
				h) != 0) {
			rd_kafka_headers_destroy(h);
			goto out;
		}
		rd_kafka_resp_err_t err = rd_kafka_producev(
		    p, RD_KAFKA_V_TOPIC(GW_TOPIC_REQUESTS), RD_KAFKA_V_KEY(hint, strlen(hint)),
		    RD_KAFKA_V_VALUE((void *)body, strlen(body)),
		    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
		    RD_KAFKA_V_END);
		if (err) {
			rd_kafka_headers_destroy(h);
			log_error("produce failed", LS("error", rd_kafka_err2str(err)));
			goto out;
		}
		rd_kafka_poll(p, 0);
	}
	rd_kafka_flush(p, 10000);
	int64_t end = wire_now_ms() + timeout_ms;
	while (answered < count && wire_now_ms() < end) {
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(k, 50);
		if (!msg)
			continue;
		char id[GW_ID_HEX + 1], st[8];
		if (!msg->err && kafka_header_str(msg, GW_H_ID, id, sizeof id) == 0) {
			for (int i = 0; i < count; i++) {
				if (seen[i] || strcmp(ids[i], id) != 0)
					continue;
				seen[i] = 1;
				answered++;
				if (strcmp(rd_kafka_topic_name(msg->rkt), GW_TOPIC_AUTHORIZED) ==
				    0) {
					authorized++;
				} else if (kafka_header_str(msg, GW_H_STATUS, st, sizeof st) == 0) {
					json_t *v = json_object_get(status, st);
					json_object_set_new(
					    status, st, json_integer(json_integer_value(v) + 1));
				}
				break;
			}
		}
		rd_kafka_message_destroy(msg);
	}
	rc = answered == count ? 0 : 1;
out:;
	json_t *o = json_pack("{s:i, s:O, s:i}", "authorized", authorized, "status", status,
			      "missing", count - answered);
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	if (s)
		printf("%s\n", s);
	free(s);
	json_decref(o);
	json_decref(status);
	if (k) {
		rd_kafka_consumer_close(k);
		rd_kafka_destroy(k);
	}
	if (p)
		rd_kafka_destroy(p);
	free(ids);
	free(seen);
	free(m);
	return rc;
}

/* Writes every message of the topics (keys, values and header values, raw) to stdout,
 * so a test can grep the whole log for a credential. */
static int cmd_dump(int argc, char **argv)
{
	rd_kafka_t *k = client(RD_KAFKA_CONSUMER);
	if (!k || argc < 2)
		return 2;
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(64);
	int64_t want = 0, got = 0;
	for (int t = 1; t < argc; t++) {
		int n = partitions(k, argv[t]);
		for (int i = 0; i < n; i++) {
			int64_t lo = 0, hi = 0;
			if (rd_kafka_query_watermark_offsets(k, argv[t], i, &lo, &hi, 5000) == 0 &&
			    hi > lo) {
				rd_kafka_topic_partition_list_add(l, argv[t], i)->offset = lo;
				want += hi - lo;
			}
		}
	}
	if (rd_kafka_assign(k, l) != 0)
		want = -1;
	rd_kafka_topic_partition_list_destroy(l);
	int64_t end = wire_now_ms() + 15000;
	while (want > 0 && got < want && wire_now_ms() < end) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(k, 100);
		if (!m)
			continue;
		if (!m->err) {
			got++;
			printf("%s ", rd_kafka_topic_name(m->rkt));
			fwrite(m->key ? m->key : "", 1, m->key_len, stdout);
			putchar(' ');
			fwrite(m->payload ? m->payload : "", 1, m->len, stdout);
			rd_kafka_headers_t *h = NULL;
			const char *name;
			const void *val;
			size_t size;
			if (rd_kafka_message_headers(m, &h) == 0 && h)
				for (size_t i = 0;
				     rd_kafka_header_get_all(h, i, &name, &val, &size) == 0; i++) {
					printf(" %s=", name);
					fwrite(val ? val : "", 1, size, stdout);
				}
			putchar('\n');
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_consumer_close(k);
	rd_kafka_destroy(k);
	fprintf(stderr, "{\"messages\":%lld,\"expected\":%lld}\n", (long long)got, (long long)want);
	return want >= 0 && got == want ? 0 : 1;
}

static int cmd_request(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"model", required_argument, NULL, 'm'},
	    {"route", required_argument, NULL, 'r'},
	    {"reply-partition", required_argument, NULL, 'p'},
	    {"expired", no_argument, NULL, 'e'},
	    {"no-cred", no_argument, NULL, 'n'},
	    {"tamper", no_argument, NULL, 't'},
	    {"malformed", no_argument, NULL, 'x'},
	    {"timeout-ms", required_argument, NULL, 'T'},
	    {"cluster", required_argument, NULL, 'C'},
	    {"framework", required_argument, NULL, 'F'},
	    {"hint", required_argument, NULL, 'h'},
	    {"deadline-ms", required_argument, NULL, 'D'},
	    {NULL, 0, NULL, 0},
	};
	const char *model = "mock-small", *route = "/v1/chat/completions";
	const char *cluster = NULL, *framework = NULL, *hintopt = NULL;
	int reply = 0, expired = 0, nocred = 0, tamper = 0, malformed = 0, timeout_ms = 10000, c;
	int deadline = 30000;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'r': route = optarg; break;
		case 'p': reply = atoi(optarg); break;
		case 'e': expired = 1; break;
		case 'n': nocred = 1; break;
		case 't': tamper = 1; break;
		case 'x': malformed = 1; break;
		case 'T': timeout_ms = atoi(optarg); break;
		case 'C': cluster = optarg; break;
		case 'F': framework = optarg; break;
		case 'h': hintopt = optarg; break;
		case 'D': deadline = atoi(optarg); break;
		default: fputs(usage, stderr); return 2;
		}
	}
	int64_t t0 = wire_now_ms();
	struct gw_meta *m = calloc(1, sizeof *m);
	if (!m)
		return 1;
	if (wire_id_new(m->id) != 0) {
		free(m);
		return 1;
	}
	m->deadline_ms = wire_now_ms() + (expired ? -1000 : deadline);
	m->reply_partition = reply;
	snprintf(m->route, sizeof m->route, "%s", route);
	snprintf(m->model, sizeof m->model, "%s", model);
	snprintf(m->client, sizeof m->client, "127.0.0.1");
	unsigned fields = GW_F_ID | GW_F_DEADLINE | GW_F_REPLY | GW_F_ROUTE | GW_F_STREAM |
			  GW_F_CLIENT | (*model ? GW_F_MODEL : 0);
	if (cluster && framework) {
		snprintf(m->cluster, sizeof m->cluster, "%s", cluster);
		snprintf(m->framework, sizeof m->framework, "%s", framework);
		fields |= GW_F_CLUSTER | GW_F_FRAMEWORK;
	}
	char hint[128] = "anonymous";
	const char *cred = config_str("GW_PROBE_KEY", NULL);
	if (cred && !nocred) {
		unsigned char key[SEAL_KEY_LEN];
		if (seal_key_load(key) != 0 || seal_encrypt(key, cred, strlen(cred), m->id, m->cred,
							    sizeof m->cred, &m->cred_len) != 0) {
			log_error("cannot seal the credential");
			free(m);
			return 1;
		}
		if (tamper)
			m->cred[m->cred_len - 1] ^= 1;
		fields |= GW_F_CRED;
		hint_of(cred, hint, sizeof hint);
	}
	if (hintopt)
		snprintf(hint, sizeof hint, "%s", hintopt);
	rd_kafka_t *p = client(RD_KAFKA_PRODUCER), *k = client(RD_KAFKA_CONSUMER);
	int rc = 1;
	json_t *out = json_object(), *audit = NULL, *answer = NULL;
	json_object_set_new(out, "id", json_string(m->id));
	if (!p || !k)
		goto done;
	const char *topics[] = {GW_TOPIC_AUTHORIZED, GW_TOPIC_AUDIT, GW_TOPIC_DEADLETTER};
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(32);
	for (int t = 0; t < 3; t++) {
		int n = partitions(k, topics[t]);
		for (int i = 0; i < n; i++)
			rd_kafka_topic_partition_list_add(l, topics[t], i)->offset =
			    RD_KAFKA_OFFSET_BEGINNING;
	}
	rd_kafka_topic_partition_list_add(l, GW_TOPIC_REPLIES, reply)->offset =
	    RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_resp_err_t aerr = rd_kafka_assign(k, l);
	rd_kafka_topic_partition_list_destroy(l);
	if (aerr) {
		log_error("assign failed", LS("error", rd_kafka_err2str(aerr)));
		goto done;
	}
	rd_kafka_headers_t *h = rd_kafka_headers_new(10);
	const char *body = "{\"model\":\"mock-small\",\"messages\":[{\"role\":\"user\","
			   "\"content\":\"hello\"}]}";
	if (wire_encode(m, fields, h) != 0) {
		rd_kafka_headers_destroy(h);
		log_error("cannot encode headers");
		goto done;
	}
	/* A later, undecodable gw-deadline wins (the decoder reads the last one). */
	if (malformed)
		rd_kafka_header_add(h, GW_H_DEADLINE, -1, "soon", -1);
	int64_t t_prod = wire_now_ms();
	/* Metadata first: a produce to a topic the client does not know yet waits for the
	 * next metadata refresh (about a second). */
	partitions(p, GW_TOPIC_REQUESTS);
	log_debug("metadata", LI("ms", wire_now_ms() - t_prod));
	if (produce(p, GW_TOPIC_REQUESTS, hint, body, h) != 0)
		goto done;
	log_debug("produced", LI("ms", wire_now_ms() - t_prod));
	int64_t end = wire_now_ms() + timeout_ms, grace = -1;
	while (wire_now_ms() < end && (grace < 0 || wire_now_ms() < grace)) {
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(k, 50);
		if (!msg)
			continue;
		if (msg->err) {
			rd_kafka_message_destroy(msg);
			continue;
		}
		const char *topic = rd_kafka_topic_name(msg->rkt);
		if (strcmp(topic, GW_TOPIC_AUDIT) == 0) {
			if (msg->key_len == GW_ID_HEX && memcmp(msg->key, m->id, GW_ID_HEX) == 0) {
				json_t *ev = json_loadb(msg->payload, msg->len, 0, NULL);
				const char *type = json_string_value(json_object_get(ev, "type"));
				if (type && strcmp(type, "authz.decision") == 0 && !audit)
					audit = json_incref(ev);
				json_decref(ev);
			}
		} else if (header_is(msg, GW_H_ID, m->id) && !answer) {
			answer = json_object();
			json_object_set_new(answer, "topic", json_string(topic));
			json_object_set_new(answer, "partition", json_integer(msg->partition));
			json_object_set_new(answer, "key",
					    json_stringn(msg->key ? msg->key : "", msg->key_len));
			json_object_set_new(answer, "headers", headers_json(msg));
			/* Whether the next stage's decoder accepts it, with what it requires. */
			unsigned need = strcmp(topic, GW_TOPIC_AUTHORIZED) == 0 ? AUTHORIZED_FIELDS
					: strcmp(topic, GW_TOPIC_REPLIES) == 0  ? REPLY_FIELDS
										: GW_F_ID;
			const char *why = NULL;
			struct gw_meta *dm = malloc(sizeof *dm);
			int dec = dm && wire_decode(msg, need, dm, &why) == 0;
			free(dm);
			json_object_set_new(answer, "decodes", json_boolean(dec));
			json_object_set_new(
			    answer, "value",
			    json_stringn(msg->payload ? msg->payload : "", msg->len));
		}
		rd_kafka_message_destroy(msg);
		/* With both in hand, or the audit of an expired request, linger briefly so an
		 * answer that should not exist has a chance to show up. */
		if (((audit && (answer || expired)) || (malformed && answer)) && grace < 0)
			grace = wire_now_ms() + (answer ? 0 : 1000);
	}
	log_debug("answered", LI("ms", wire_now_ms() - t_prod));
	if (answer) {
		json_object_update(out, answer);
	} else {
		json_object_set_new(out, "topic", json_null());
	}
	json_object_set_new(out, "audit", audit ? audit : json_null());
	audit = NULL;
	rc = (answer || (expired && json_object_get(out, "audit") != json_null())) ? 0 : 1;
done:;
	char *s = json_dumps(out, JSON_COMPACT);
	if (s)
		printf("%s\n", s);
	free(s);
	json_decref(out);
	json_decref(answer);
	json_decref(audit);
	if (k) {
		rd_kafka_consumer_close(k);
		rd_kafka_destroy(k);
	}
	if (p)
		rd_kafka_destroy(p);
	free(m);
	log_debug("closed", LI("ms", wire_now_ms() - t0));
	return rc;
}

static int cmd_usage(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"principal", required_argument, NULL, 'p'},
	    {"tokens", required_argument, NULL, 't'},
	    {"raw", required_argument, NULL, 'r'},
	    {"request-id", required_argument, NULL, 'i'},
	    {"hint", required_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *principal = NULL, *raw = NULL, *rid = NULL, *hintopt = NULL;
	long long tokens = -1;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'p': principal = optarg; break;
		case 't': tokens = atoll(optarg); break;
		case 'r': raw = optarg; break;
		case 'i': rid = optarg; break;
		case 'h': hintopt = optarg; break;
		default: fputs(usage, stderr); return 2;
		}
	}
	if (!raw && (!principal || tokens < 0)) {
		fputs(usage, stderr);
		return 2;
	}
	struct gw_meta *m = calloc(1, sizeof *m);
	rd_kafka_t *p = client(RD_KAFKA_PRODUCER);
	int rc = 1;
	if (!m || !p || wire_id_new(m->id) != 0)
		goto out;
	if (rid && wire_id_valid(rid))
		snprintf(m->id, sizeof m->id, "%s", rid);
	char *value = NULL;
	if (raw) {
		value = strdup(raw);
	} else {
		json_t *v = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "request_id", m->id,
				      "principal", principal, "model", "mock-small", "endpoint",
				      "probe", "prompt_tokens", (json_int_t)0, "completion_tokens",
				      (json_int_t)tokens, "total_tokens", (json_int_t)tokens);
		value = v ? json_dumps(v, JSON_COMPACT) : NULL;
		json_decref(v);
	}
	rd_kafka_headers_t *h = rd_kafka_headers_new(2);
	if (!value || wire_encode(m, GW_F_ID, h) != 0) {
		rd_kafka_headers_destroy(h);
		free(value);
		goto out;
	}
	partitions(p, GW_TOPIC_USAGE); /* see cmd_request */
	rc = produce(p, GW_TOPIC_USAGE,
		     hintopt     ? hintopt
		     : principal ? principal
				 : "probe",
		     value, h)
		 ? 1
		 : 0;
	if (rc == 0)
		printf("{\"id\":\"%s\"}\n", m->id);
	free(value);
out:
	if (p)
		rd_kafka_destroy(p);
	free(m);
	return rc;
}

int main(int argc, char **argv)
{
	log_init("gw-authz-probe", NULL);
	if (getenv("GW_PROBE_DEBUG"))
		log_set_level(LOG_DEBUG);
	if (argc < 2 || strcmp(argv[1], "--help") == 0) {
		fputs(usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	if (strcmp(argv[1], "request") == 0)
		return cmd_request(argc - 1, argv + 1);
	if (strcmp(argv[1], "usage") == 0)
		return cmd_usage(argc - 1, argv + 1);
	if (strcmp(argv[1], "burst") == 0)
		return cmd_burst(argc - 1, argv + 1);
	if (strcmp(argv[1], "dump") == 0)
		return cmd_dump(argc - 1, argv + 1);
	fputs(usage, stderr);
	return 2;
}
