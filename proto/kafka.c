/* librdkafka driven from the libevent loop, with the delivery semantics of DESIGN.md:
 * idempotent producers, offsets stored in order only once a message's outputs are
 * acknowledged, bounded in-flight work per partition (pause and rewind when full). */
#include "kafka.h"
#include "config.h"
#include "log.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PUMP_BATCH        512
/* How long a closing consumer may wait for its group leave and final commit. */
#define CONSUMER_CLOSE_MS 10000

/* One partition's in-flight offsets, a ring in arrival order. Owned by its consumer,
 * freed in kafka_consumer_close. */
struct kafka_part {
	struct kafka_consumer *c;
	char topic[128];
	int32_t partition;
	uint32_t generation; /* bumped on assign/revoke: older work no longer stores */
	uint64_t head, tail; /* slots [head, tail) are in flight */
	int cap;
	int64_t *offsets;
	unsigned char *done;
	int paused;
	int64_t rewind_to; /* first offset handed back while paused, -1 none */
	int frozen;        /* an output failed: no more stores until reassigned */
};

/* Per-message delivery context, malloc'd in kafka_produce, freed in dr_cb. */
struct kafka_dr {
	struct kafka_producer *p;
	struct kafka_work *w;
	struct kafka_done *d;
};

/* ---- the pump: rd_kafka queue -> pipe -> libevent ---- */

static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
	struct kafka_pump *p = arg;
	if (what & EV_READ) {
		char buf[64];
		while (read(fd, buf, sizeof buf) > 0)
			;
	}
	p->drain(p->arg);
}

static int pump_init(struct kafka_pump *p, struct event_base *base, rd_kafka_queue_t *q,
		     void (*drain)(void *), void *arg)
{
	p->queue = q;
	p->drain = drain;
	p->arg = arg;
	if (pipe2(p->fds, O_NONBLOCK | O_CLOEXEC) != 0) {
		log_error("pipe2 failed", LS("error", strerror(errno)));
		return -1;
	}
	rd_kafka_queue_io_event_enable(q, p->fds[1], "1", 1);
	p->ev = event_new(base, p->fds[0], EV_READ | EV_PERSIST, pump_cb, p);
	p->timer = event_new(base, -1, EV_PERSIST, pump_cb, p);
	p->again = evtimer_new(base, pump_cb, p);
	struct timeval tv = {0, 100 * 1000};
	if (!p->ev || !p->timer || !p->again || event_add(p->ev, NULL) != 0 ||
	    event_add(p->timer, &tv) != 0) {
		log_error("cannot register kafka queue with the event loop");
		return -1;
	}
	return 0;
}

static void pump_close(struct kafka_pump *p)
{
	if (p->queue) {
		rd_kafka_queue_io_event_enable(p->queue, -1, NULL, 0);
		rd_kafka_queue_destroy(p->queue);
		p->queue = NULL;
	}
	if (p->ev)
		event_free(p->ev);
	if (p->timer)
		event_free(p->timer);
	if (p->again)
		event_free(p->again);
	p->ev = p->timer = p->again = NULL;
	if (p->fds[0] > 0) {
		close(p->fds[0]);
		close(p->fds[1]);
		p->fds[0] = p->fds[1] = -1;
	}
}

/* Re-run the drain on the next loop iteration: the queue may still hold events and
 * the io-event only fires on the empty -> non-empty edge. A zero timeout, not
 * event_active: libevent runs events activated during a pass in that same pass, so
 * a backlog would starve every socket (the admin /health among them). */
static void pump_again(struct kafka_pump *p)
{
	static const struct timeval zero = {0, 0};
	if (p->again && !evtimer_pending(p->again, NULL))
		evtimer_add(p->again, &zero);
}

/* ---- configuration ---- */

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	enum log_level l = level <= 3 ? LOG_ERROR : level <= 5 ? LOG_WARN : LOG_DEBUG;
	if (!log_enabled(l))
		return;
	log_write(l, "librdkafka",
		  (const struct log_kv[]){LS("client", rd_kafka_name(rk)), LS("facility", fac),
					  LS("detail", buf)},
		  3);
}

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
	char err[512];
	if (rd_kafka_conf_set(conf, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
		log_error("invalid Kafka setting", LS("property", k), LS("error", err));
		return -1;
	}
	return 0;
}

static rd_kafka_conf_t *conf_base(const char *client_id)
{
	const char *brokers = config_str("GW_KAFKA_BROKERS", NULL);
	if (!brokers) {
		log_error("GW_KAFKA_BROKERS is not set: give the Kafka bootstrap servers "
			  "(host:port,...); `make run` writes it to .run/env");
		return NULL;
	}
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_conf_set_log_cb(conf, log_cb);
	if (conf_set(conf, "bootstrap.servers", brokers) ||
	    conf_set(conf, "client.id", client_id) ||
	    conf_set(conf, "socket.nagle.disable", "true") ||
	    conf_set(conf, "log.connection.close", "false"))
		goto fail;
	/* Extra properties for a real cluster: "k=v;k=v" (SASL, TLS, timeouts). */
	const char *extra = config_str("GW_KAFKA_PROPERTIES", NULL);
	if (extra) {
		char *copy = strdup(extra), *save = NULL;
		if (!copy)
			goto fail;
		for (char *kv = strtok_r(copy, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
			char *eq = strchr(kv, '=');
			if (!eq) {
				log_error("GW_KAFKA_PROPERTIES entry is not key=value");
				free(copy);
				goto fail;
			}
			*eq = 0;
			if (conf_set(conf, kv, eq + 1)) {
				free(copy);
				goto fail;
			}
		}
		free(copy);
	}
	return conf;
fail:
	rd_kafka_conf_destroy(conf);
	return NULL;
}

/* ---- producer ---- */

static void producer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	struct kafka_producer *p = opaque;
	if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
		p->broker_up = 0;
	if (err == RD_KAFKA_RESP_ERR__FATAL) {
		char buf[512];
		rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof buf);
		p->fatal = 1;
		log_error("fatal Kafka producer error: restart required", LS("error", buf),
			  LS("code", rd_kafka_err2name(orig)));
		return;
	}
	log_warn("Kafka producer error", LS("error", reason),
		 LS("code", rd_kafka_err2name((rd_kafka_resp_err_t)err)));
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct kafka_producer *p = opaque;
	struct kafka_dr *dr = m->_private;
	if (m->err) {
		p->failed++;
		log_error("message not delivered", LS("topic", rd_kafka_topic_name(m->rkt)),
			  LI("partition", m->partition), LS("error", rd_kafka_err2str(m->err)));
	} else {
		p->delivered++;
		p->broker_up = 1;
	}
	if (!dr)
		return;
	if (dr->d)
		dr->d->fn(dr->d, m->err);
	if (dr->w) {
		if (m->err)
			dr->w->failed = 1;
		kafka_work_release(dr->w);
	}
	free(dr);
}

static void producer_drain(void *arg)
{
	struct kafka_producer *p = arg;
	for (int i = 0; i < PUMP_BATCH; i++) {
		if (rd_kafka_poll(p->rk, 0) <= 0)
			return;
	}
	pump_again(&p->pump);
}

int kafka_producer_init(struct kafka_producer *p, struct event_base *base, const char *client_id)
{
	char err[512];
	memset(p, 0, sizeof *p);
	p->pump.fds[0] = p->pump.fds[1] = -1;
	p->broker_up = 1;
	rd_kafka_conf_t *conf = conf_base(client_id);
	if (!conf)
		return -1;
	char linger[16];
	long long lg;
	if (config_int("GW_KAFKA_LINGER_MS", 1, 0, 1000, &lg) != 0) {
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	snprintf(linger, sizeof linger, "%lld", lg);
	if (conf_set(conf, "enable.idempotence", "true") || conf_set(conf, "linger.ms", linger)) {
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
	rd_kafka_conf_set_error_cb(conf, producer_error_cb);
	rd_kafka_conf_set_opaque(conf, p);
	p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
	if (!p->rk) {
		log_error("cannot create Kafka producer", LS("error", err));
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	if (pump_init(&p->pump, base, rd_kafka_queue_get_main(p->rk), producer_drain, p) != 0)
		return -1;
	return 0;
}

rd_kafka_resp_err_t kafka_produce(struct kafka_producer *p, const char *topic, int32_t partition,
				  const void *key, size_t keylen, const void *value, size_t vlen,
				  rd_kafka_headers_t *hdrs, struct kafka_work *w,
				  struct kafka_done *d)
{
	struct kafka_dr *dr = NULL;
	if (w || d) {
		dr = malloc(sizeof *dr);
		if (!dr) {
			if (hdrs)
				rd_kafka_headers_destroy(hdrs);
			return RD_KAFKA_RESP_ERR__FAIL;
		}
		dr->p = p;
		dr->w = w;
		dr->d = d;
	}
	/* RD_KAFKA_V_HEADERS expands to two arguments: never put it behind a ?:. */
	if (!hdrs)
		hdrs = rd_kafka_headers_new(0);
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
	/* Bounded wait on a full queue: poll to serve delivery reports, then retry. */
	for (int attempt = 0; attempt < 20; attempt++) {
		err = rd_kafka_producev(
		    p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
		    RD_KAFKA_V_KEY(key, keylen), RD_KAFKA_V_VALUE((void *)value, vlen),
		    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hdrs),
		    RD_KAFKA_V_OPAQUE(dr), RD_KAFKA_V_END);
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		rd_kafka_poll(p->rk, 5);
	}
	if (err) {
		log_error("produce failed", LS("topic", topic), LI("partition", partition),
			  LS("error", rd_kafka_err2str(err)));
		rd_kafka_headers_destroy(hdrs);
		free(dr);
		return err;
	}
	p->produced++;
	if (w)
		kafka_work_hold(w);
	return RD_KAFKA_RESP_ERR_NO_ERROR;
}

int kafka_producer_close(struct kafka_producer *p, int timeout_ms)
{
	if (!p->rk)
		return 0;
	rd_kafka_resp_err_t err = rd_kafka_flush(p->rk, timeout_ms);
	int left = rd_kafka_outq_len(p->rk);
	if (err || left > 0)
		log_error("producer closed with messages not delivered", LI("left", left),
			  LS("error", rd_kafka_err2str(err)));
	pump_close(&p->pump);
	rd_kafka_destroy(p->rk);
	p->rk = NULL;
	return left;
}

/* ---- consumer and offset tracking ---- */

static struct kafka_part *part_get(struct kafka_consumer *c, const char *topic, int32_t partition)
{
	for (int i = 0; i < c->nparts; i++)
		if (c->parts[i]->partition == partition && strcmp(c->parts[i]->topic, topic) == 0)
			return c->parts[i];
	if (c->nparts == c->capparts) {
		int ncap = c->capparts ? c->capparts * 2 : 16;
		struct kafka_part **np = realloc(c->parts, (size_t)ncap * sizeof *np);
		if (!np)
			return NULL;
		c->parts = np;
		c->capparts = ncap;
	}
	struct kafka_part *pt = calloc(1, sizeof *pt);
	if (!pt)
		return NULL;
	pt->c = c;
	snprintf(pt->topic, sizeof pt->topic, "%s", topic);
	pt->partition = partition;
	pt->cap = c->max_inflight_per_partition;
	pt->offsets = calloc((size_t)pt->cap, sizeof *pt->offsets);
	pt->done = calloc((size_t)pt->cap, 1);
	pt->rewind_to = -1;
	if (!pt->offsets || !pt->done) {
		free(pt->offsets);
		free(pt->done);
		free(pt);
		return NULL;
	}
	c->parts[c->nparts++] = pt;
	return pt;
}

static void part_reset(struct kafka_part *pt)
{
	pt->generation++;
	pt->head = pt->tail = 0;
	pt->paused = 0;
	pt->rewind_to = -1;
	pt->frozen = 0;
}

static void part_pause(struct kafka_part *pt, int pause)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, pt->topic, pt->partition);
	rd_kafka_resp_err_t err = pause ? rd_kafka_pause_partitions(pt->c->rk, l)
					: rd_kafka_resume_partitions(pt->c->rk, l);
	if (err)
		log_error(pause ? "pause failed" : "resume failed", LS("topic", pt->topic),
			  LI("partition", pt->partition), LS("error", rd_kafka_err2str(err)));
	pt->paused = pause;
	rd_kafka_topic_partition_list_destroy(l);
}

static void part_rewind(struct kafka_part *pt, int64_t offset)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, pt->topic, pt->partition)->offset = offset;
	rd_kafka_error_t *e = rd_kafka_seek_partitions(pt->c->rk, l, 0);
	if (e) {
		log_error("seek failed", LS("topic", pt->topic), LI("partition", pt->partition),
			  LI("offset", offset), LS("error", rd_kafka_error_string(e)));
		rd_kafka_error_destroy(e);
	}
	rd_kafka_topic_partition_list_destroy(l);
}

static void part_store(struct kafka_part *pt, int64_t next_offset)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, pt->topic, pt->partition)->offset = next_offset;
	rd_kafka_resp_err_t err = rd_kafka_offsets_store(pt->c->rk, l);
	if (!err)
		err = l->elems[0].err;
	/* A partition revoked meanwhile refuses the store: its new owner redoes the work. */
	if (err && err != RD_KAFKA_RESP_ERR__STATE)
		log_warn("offset store failed", LS("topic", pt->topic),
			 LI("partition", pt->partition), LI("offset", next_offset),
			 LS("error", rd_kafka_err2str(err)));
	rd_kafka_topic_partition_list_destroy(l);
}

int kafka_work_begin(struct kafka_consumer *c, struct kafka_work *w, const rd_kafka_message_t *msg,
		     void (*release)(struct kafka_work *w))
{
	const char *topic = rd_kafka_topic_name(msg->rkt);
	struct kafka_part *pt = part_get(c, topic, msg->partition);
	if (!pt) {
		log_error("out of memory tracking partition", LS("topic", topic),
			  LI("partition", msg->partition));
		return -1;
	}
	if (pt->rewind_to >= 0 && msg->offset >= pt->rewind_to)
		return -1; /* already handed back; it will be fetched again */
	if (pt->tail - pt->head >= (uint64_t)pt->cap) {
		log_warn("partition has too much in flight: pausing", LS("topic", topic),
			 LI("partition", msg->partition), LI("offset", msg->offset),
			 LI("inflight", pt->cap));
		part_pause(pt, 1);
		part_rewind(pt, msg->offset);
		pt->rewind_to = msg->offset;
		return -1;
	}
	uint64_t slot = pt->tail++;
	pt->offsets[slot % (uint64_t)pt->cap] = msg->offset;
	pt->done[slot % (uint64_t)pt->cap] = 0;
	w->part = pt;
	w->slot = slot;
	w->generation = pt->generation;
	w->holds = 1;
	w->failed = 0;
	w->release = release;
	return 0;
}

void kafka_work_hold(struct kafka_work *w)
{
	w->holds++;
}

void kafka_work_release(struct kafka_work *w)
{
	if (--w->holds > 0)
		return;
	struct kafka_part *pt = w->part;
	if (pt && w->generation == pt->generation && w->slot >= pt->head && w->slot < pt->tail) {
		uint64_t cap = (uint64_t)pt->cap;
		if (w->failed && !pt->frozen) {
			pt->frozen = 1;
			log_error("an output was not acknowledged: offsets of this partition stay "
				  "where they are until it is reassigned, so the work is redone "
				  "after a restart",
				  LS("topic", pt->topic), LI("partition", pt->partition),
				  LI("offset", pt->offsets[w->slot % cap]));
		}
		pt->done[w->slot % cap] = 1;
		int64_t last = -1;
		while (pt->head < pt->tail && pt->done[pt->head % cap]) {
			last = pt->offsets[pt->head % cap];
			pt->head++;
		}
		if (last >= 0 && !pt->frozen)
			part_store(pt, last + 1);
		if (pt->paused && pt->tail - pt->head <= cap / 2 && !pt->c->closing) {
			pt->rewind_to = -1;
			if (pt->c->paused_all)
				pt->paused = 0; /* kafka_consumer_pause(c, 0) resumes it */
			else
				part_pause(pt, 0);
		}
	}
	if (w->release)
		w->release(w);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
			 rd_kafka_topic_partition_list_t *parts, void *opaque)
{
	struct kafka_consumer *c = opaque;
	for (int i = 0; i < parts->cnt; i++) {
		struct kafka_part *pt =
		    part_get(c, parts->elems[i].topic, parts->elems[i].partition);
		if (pt)
			part_reset(pt);
		log_info(err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? "partition assigned"
								     : "partition revoked",
			 LS("topic", parts->elems[i].topic),
			 LI("partition", parts->elems[i].partition));
	}
	rd_kafka_resp_err_t aerr;
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
		aerr = rd_kafka_assign(rk, parts);
		/* A stage that paused itself stays paused across a rebalance. */
		if (!aerr && c->paused_all)
			rd_kafka_pause_partitions(rk, parts);
	} else
		aerr = rd_kafka_assign(rk, NULL);
	if (aerr)
		log_error("assign failed", LS("error", rd_kafka_err2str(aerr)));
}

static void consumer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	if (err == RD_KAFKA_RESP_ERR__FATAL) {
		char buf[512];
		rd_kafka_fatal_error(rk, buf, sizeof buf);
		log_error("fatal Kafka consumer error: restart required", LS("error", buf));
		return;
	}
	log_warn("Kafka consumer error", LS("error", reason),
		 LS("code", rd_kafka_err2name((rd_kafka_resp_err_t)err)));
}

static void consumer_drain(void *arg)
{
	struct kafka_consumer *c = arg;
	for (int i = 0; i < PUMP_BATCH; i++) {
		if (c->closing)
			return;
		rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, 0);
		if (!m)
			return;
		if (m->err) {
			if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
				log_warn("consume error",
					 LS("topic", m->rkt ? rd_kafka_topic_name(m->rkt) : ""),
					 LI("partition", m->partition),
					 LS("error", rd_kafka_message_errstr(m)));
			rd_kafka_message_destroy(m);
			continue;
		}
		c->consumed++;
		c->on_message(c->arg, m);
	}
	pump_again(&c->pump);
}

int kafka_consumer_init(struct kafka_consumer *c, struct event_base *base, const char *group,
			const char *client_id, int fetch_wait_ms)
{
	char err[512], wait[16];
	void (*on_message)(void *, rd_kafka_message_t *) = c->on_message;
	void *arg = c->arg;
	memset(c, 0, sizeof *c);
	c->on_message = on_message;
	c->arg = arg;
	c->pump.fds[0] = c->pump.fds[1] = -1;
	long long maxin;
	if (config_int("GW_KAFKA_MAX_INFLIGHT_PER_PARTITION", 4096, 1, 1 << 20, &maxin) != 0)
		return -1;
	c->max_inflight_per_partition = (int)maxin;
	if (!c->on_message) {
		log_error("kafka_consumer_init: on_message must be set first");
		return -1;
	}
	rd_kafka_conf_t *conf = conf_base(client_id);
	if (!conf)
		return -1;
	snprintf(wait, sizeof wait, "%d", fetch_wait_ms);
	/* librdkafka has no consumer queue without a group: an assign-only consumer gets
	 * a private group that never subscribes and never commits. */
	char private_group[256];
	if (!group) {
		snprintf(private_group, sizeof private_group, "gw-assign-%s", client_id);
		if (conf_set(conf, "group.id", private_group)) {
			rd_kafka_conf_destroy(conf);
			return -1;
		}
	}
	if (conf_set(conf, "enable.auto.offset.store", "false") ||
	    conf_set(conf, "enable.auto.commit", group ? "true" : "false") ||
	    conf_set(conf, "auto.commit.interval.ms", "500") ||
	    conf_set(conf, "auto.offset.reset", "earliest") ||
	    conf_set(conf, "partition.assignment.strategy", "range") ||
	    conf_set(conf, "fetch.wait.max.ms", wait) ||
	    conf_set(conf, "fetch.error.backoff.ms", "20") ||
	    conf_set(conf, "session.timeout.ms", "10000") ||
	    conf_set(conf, "heartbeat.interval.ms", "1000") ||
	    (group && conf_set(conf, "group.id", group))) {
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
	rd_kafka_conf_set_error_cb(conf, consumer_error_cb);
	rd_kafka_conf_set_opaque(conf, c);
	c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
	if (!c->rk) {
		log_error("cannot create Kafka consumer", LS("error", err));
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	rd_kafka_poll_set_consumer(c->rk);
	rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(c->rk);
	if (!q) {
		log_error("Kafka consumer has no queue", LS("client", client_id));
		return -1;
	}
	if (pump_init(&c->pump, base, q, consumer_drain, c) != 0)
		return -1;
	return 0;
}

int kafka_consumer_subscribe(struct kafka_consumer *c, const char *const *topics, int n)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
	for (int i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(l, topics[i], RD_KAFKA_PARTITION_UA);
	rd_kafka_resp_err_t err = rd_kafka_subscribe(c->rk, l);
	rd_kafka_topic_partition_list_destroy(l);
	if (err) {
		log_error("subscribe failed", LS("topic", topics[0]),
			  LS("error", rd_kafka_err2str(err)));
		return -1;
	}
	return 0;
}

int kafka_consumer_assign(struct kafka_consumer *c, const char *topic, const int32_t *partitions,
			  int n, int64_t offset)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
	for (int i = 0; i < n; i++) {
		rd_kafka_topic_partition_list_add(l, topic, partitions[i])->offset = offset;
		struct kafka_part *pt = part_get(c, topic, partitions[i]);
		if (pt)
			part_reset(pt);
	}
	rd_kafka_resp_err_t err = rd_kafka_assign(c->rk, l);
	rd_kafka_topic_partition_list_destroy(l);
	if (err) {
		log_error("assign failed", LS("topic", topic), LS("error", rd_kafka_err2str(err)));
		return -1;
	}
	return 0;
}

void kafka_consumer_pause(struct kafka_consumer *c, int on)
{
	rd_kafka_topic_partition_list_t *l = NULL;
	if (!c->rk || c->paused_all == on)
		return;
	c->paused_all = on;
	if (rd_kafka_assignment(c->rk, &l) || !l)
		return;
	rd_kafka_topic_partition_list_t *sel = rd_kafka_topic_partition_list_new(l->cnt);
	for (int i = 0; i < l->cnt; i++) {
		struct kafka_part *pt = part_get(c, l->elems[i].topic, l->elems[i].partition);
		/* A partition whose tracker is full stays paused until it drains. */
		if (!on && pt && pt->paused)
			continue;
		rd_kafka_topic_partition_list_add(sel, l->elems[i].topic, l->elems[i].partition);
	}
	rd_kafka_resp_err_t err =
	    on ? rd_kafka_pause_partitions(c->rk, sel) : rd_kafka_resume_partitions(c->rk, sel);
	if (err)
		log_error(on ? "pause failed" : "resume failed",
			  LS("error", rd_kafka_err2str(err)));
	rd_kafka_topic_partition_list_destroy(sel);
	rd_kafka_topic_partition_list_destroy(l);
}

int kafka_consumer_close(struct kafka_consumer *c)
{
	if (!c->rk)
		return 0;
	c->closing = 1;
	/* rd_kafka_consumer_close waits for the group leave and the final commit without
	 * bound when the broker is gone, which would turn SIGTERM into a hang; the queue
	 * form lets us give up after CONSUMER_CLOSE_MS and skip the close in destroy. */
	int err = 0;
	int closed = 0;
	rd_kafka_queue_t *q = rd_kafka_queue_new(c->rk);
	rd_kafka_error_t *cerr = q ? rd_kafka_consumer_close_queue(c->rk, q) : NULL;
	if (!q) {
		log_error("consumer close: cannot create a queue");
		err = 1;
	} else if (cerr) {
		log_error("consumer close failed", LS("error", rd_kafka_error_string(cerr)));
		rd_kafka_error_destroy(cerr);
		err = 1;
	} else {
		int64_t give_up = wire_now_ms() + CONSUMER_CLOSE_MS;
		while (!(closed = rd_kafka_consumer_closed(c->rk))) {
			if (wire_now_ms() > give_up)
				break;
			rd_kafka_queue_poll_callback(q, 100); /* serves the revoke (rebalance_cb) */
		}
		if (!closed) {
			log_error("consumer close timed out: offsets stored since the last commit "
				  "were not committed and will be consumed again",
				  LI("timeout_ms", CONSUMER_CLOSE_MS));
			err = 1;
		}
	}
	if (q)
		rd_kafka_queue_destroy(q);
	pump_close(&c->pump);
	if (closed)
		rd_kafka_destroy(c->rk);
	else
		rd_kafka_destroy_flags(c->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	c->rk = NULL;
	for (int i = 0; i < c->nparts; i++) {
		free(c->parts[i]->offsets);
		free(c->parts[i]->done);
		free(c->parts[i]);
	}
	free(c->parts);
	c->parts = NULL;
	c->nparts = c->capparts = 0;
	return err ? -1 : 0;
}

int kafka_header_str(const rd_kafka_message_t *msg, const char *name, char *out, size_t cap)
{
	rd_kafka_headers_t *h;
	const void *v;
	size_t n;
	if (rd_kafka_message_headers(msg, &h) || rd_kafka_header_get_last(h, name, &v, &n) || !v ||
	    n >= cap)
		return -1;
	memcpy(out, v, n);
	out[n] = 0;
	return 0;
}

int64_t kafka_consumer_lag(struct kafka_consumer *c)
{
	rd_kafka_topic_partition_list_t *l = NULL;
	if (!c->rk || rd_kafka_assignment(c->rk, &l) || !l)
		return -1;
	int64_t lag = 0;
	if (rd_kafka_position(c->rk, l) == RD_KAFKA_RESP_ERR_NO_ERROR) {
		for (int i = 0; i < l->cnt; i++) {
			int64_t lo, hi;
			if (rd_kafka_get_watermark_offsets(c->rk, l->elems[i].topic,
							   l->elems[i].partition, &lo, &hi))
				continue;
			int64_t pos = l->elems[i].offset >= 0 ? l->elems[i].offset : lo;
			if (hi > pos)
				lag += hi - pos;
		}
	} else {
		lag = -1;
	}
	rd_kafka_topic_partition_list_destroy(l);
	return lag;
}

int wire_deadletter(struct kafka_producer *p, const rd_kafka_message_t *msg, const char *reason,
		    struct kafka_work *w)
{
	rd_kafka_headers_t *orig = NULL, *h;
	const char *topic = rd_kafka_topic_name(msg->rkt);
	char src[256];
	if (rd_kafka_message_headers(msg, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR && orig)
		h = rd_kafka_headers_copy(orig);
	else
		h = rd_kafka_headers_new(4);
	/* A dead letter keeps everything needed to replay it, except a credential. */
	rd_kafka_header_remove(h, GW_H_CRED);
	snprintf(src, sizeof src, "%s/%d/%lld", topic, (int)msg->partition, (long long)msg->offset);
	rd_kafka_header_add(h, GW_H_REASON, -1, reason, -1);
	rd_kafka_header_add(h, "gw-source", -1, src, -1);
	log_warn("message sent to dead letter", LS("topic", topic), LI("partition", msg->partition),
		 LI("offset", msg->offset), LS("reason", reason));
	return kafka_produce(p, GW_TOPIC_DEADLETTER, RD_KAFKA_PARTITION_UA, msg->key, msg->key_len,
			     msg->payload, msg->len, h, w, NULL)
		   ? -1
		   : 0;
}
