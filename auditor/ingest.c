/* The auditor's pipeline. Every consumed message ends in exactly one of three places
 * before its offset may be stored: a committed row, a delivered dead letter, or handed
 * back to Kafka unstarted (paused and rewound) to be fetched again. The database is
 * driven with synchronous libpq calls from the loop thread, bounded by connect_timeout
 * and statement_timeout; while one runs, librdkafka keeps prefetching the next batch. */
#include "ingest.h"
#include "auditor_event.h"
#include "log.h"
#include "metrics.h"
#include "wire.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BACKOFF_MIN_MS  100
#define BACKOFF_MAX_MS  5000
#define IDLE_CHECK_MS   5000
#define STOP_BUDGET_MS  5000
/* A batch is also full at this many bytes of rows, however few events it holds (a write
 * merged back after a failure holds up to twice this; PQputCopyData takes an int). */
#define BATCH_BYTES_MAX (16u << 20)

/* One consumed message from its arrival until its offset may be stored. Owned by the
 * batch while listed there; after that by its kafka_work, whose release frees it. */
struct ingest_slot {
	struct kafka_work work;
	struct ingest *in;
	/* Owned: kept until COMMIT for a dead letter, should the database refuse the row. */
	rd_kafka_message_t *msg;
	struct auditor_row row;          /* row.line owned */
	struct ingest_slot *prev, *next; /* in ingest.dead while its dead letter flies */
	int dead;
};

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void slot_free(struct ingest_slot *s)
{
	if (s->msg)
		rd_kafka_message_destroy(s->msg);
	free(s->row.line);
	free(s);
}

/* ---- handing messages back to Kafka while the batch is full ---- */

static struct ingest_part *part_find(struct ingest *in, int32_t partition, int create)
{
	for (int i = 0; i < in->nparts; i++)
		if (in->parts[i].partition == partition)
			return &in->parts[i];
	if (!create)
		return NULL;
	if (in->nparts == in->capparts) {
		int ncap = in->capparts ? in->capparts * 2 : 8;
		struct ingest_part *np = realloc(in->parts, (size_t)ncap * sizeof *np);
		if (!np)
			return NULL;
		in->parts = np;
		in->capparts = ncap;
	}
	struct ingest_part *p = &in->parts[in->nparts++];
	p->partition = partition;
	p->paused = 0;
	p->rewind = -1;
	return p;
}

/* Pauses msg's partition and seeks it back to msg, which is dropped unstarted: its
 * offset is never stored, so it is fetched again after the resume. librdkafka's seek
 * bumps the partition's version, so copies already fetched are discarded for us. */
static void handback(struct ingest *in, rd_kafka_message_t *msg)
{
	const char *topic = rd_kafka_topic_name(msg->rkt);
	struct ingest_part *p = part_find(in, msg->partition, 1);
	int64_t to = msg->offset;
	if (p && p->paused && p->rewind >= 0 && p->rewind < to)
		to = p->rewind;
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_t *tp =
	    rd_kafka_topic_partition_list_add(l, topic, msg->partition);
	rd_kafka_resp_err_t err = rd_kafka_pause_partitions(in->consumer.rk, l);
	if (err || tp->err)
		log_error("cannot pause partition", LS("topic", topic),
			  LI("partition", msg->partition),
			  LS("error", rd_kafka_err2str(err ? err : tp->err)));
	tp->offset = to;
	rd_kafka_error_t *e = rd_kafka_seek_partitions(in->consumer.rk, l, 0);
	if (e) {
		log_error("cannot rewind partition", LS("topic", topic),
			  LI("partition", msg->partition), LI("offset", to),
			  LS("error", rd_kafka_error_string(e)));
		rd_kafka_error_destroy(e);
	}
	rd_kafka_topic_partition_list_destroy(l);
	if (!p) {
		/* Untracked, it stays paused until a restart: slow, but nothing is lost. */
		log_error("out of memory tracking a paused partition", LS("topic", topic),
			  LI("partition", msg->partition));
	} else {
		if (!p->paused)
			log_info("batch full: pausing partition until it is written",
				 LS("topic", topic), LI("partition", msg->partition),
				 LI("offset", to));
		p->paused = 1;
		p->rewind = to;
	}
	rd_kafka_message_destroy(msg);
}

/* The batch and the write in flight together stay within twice the batch (the arrays'
 * size): a failed write goes back in front of the batch, so their sum is what the next
 * write may hold. */
static int batch_full(const struct ingest *in)
{
	return in->nbatch >= in->cfg.batch_max || in->batch_bytes >= BATCH_BYTES_MAX ||
	       in->nbatch + in->ninflight >= 2 * in->cfg.batch_max ||
	       in->batch_bytes + in->inflight_bytes >= 2 * (size_t)BATCH_BYTES_MAX ||
	       in->ndead >= in->cfg.batch_max;
}

static void resume_if_room(struct ingest *in)
{
	if (in->stopping || batch_full(in))
		return;
	for (int i = 0; i < in->nparts; i++) {
		struct ingest_part *p = &in->parts[i];
		if (!p->paused)
			continue;
		rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
		rd_kafka_topic_partition_list_add(l, GW_TOPIC_AUDIT, p->partition);
		rd_kafka_resp_err_t err = rd_kafka_resume_partitions(in->consumer.rk, l);
		if (err)
			log_error("cannot resume partition", LS("topic", GW_TOPIC_AUDIT),
				  LI("partition", p->partition),
				  LS("error", rd_kafka_err2str(err)));
		else
			log_info("resuming partition", LS("topic", GW_TOPIC_AUDIT),
				 LI("partition", p->partition), LI("offset", p->rewind));
		rd_kafka_topic_partition_list_destroy(l);
		p->paused = 0;
		p->rewind = -1;
	}
}

/* ---- dead letters ---- */

static void slot_release(struct kafka_work *w)
{
	struct ingest_slot *s =
	    (struct ingest_slot *)((char *)w - offsetof(struct ingest_slot, work));
	struct ingest *in = s->in;
	if (s->dead) {
		if (s->prev)
			s->prev->next = s->next;
		else
			in->dead = s->next;
		if (s->next)
			s->next->prev = s->prev;
		in->ndead--;
	}
	slot_free(s);
	resume_if_room(in);
}

/* Sends s's message to gw.deadletter; s is freed once that is acknowledged. */
static void deadletter(struct ingest *in, struct ingest_slot *s, const char *reason)
{
	s->dead = 1;
	s->prev = NULL;
	s->next = in->dead;
	if (in->dead)
		in->dead->prev = s;
	in->dead = s;
	in->ndead++;
	if (wire_deadletter(&in->producer, s->msg, reason, &s->work) == 0) {
		metric_add(in->m_deadletter, 1);
	} else {
		/* Not produced: its offset must never be stored, or the event would be lost.
		 * kafka.c then stops storing this partition until it is reassigned. */
		s->work.failed = 1;
	}
	/* The dead letter holds copies of key, value and headers. */
	rd_kafka_message_destroy(s->msg);
	s->msg = NULL;
	free(s->row.line);
	s->row.line = NULL;
	kafka_work_release(&s->work);
}

/* ---- writing batches ---- */

/* The batch's rows, in batch order, for store_insert. */
static struct auditor_row *const *batch_rows(struct ingest *in)
{
	for (int i = 0; i < in->nbatch; i++)
		in->rows[i] = &in->batch[i]->row;
	return in->rows;
}

static void db_ok(struct ingest *in)
{
	if (!in->db_up)
		log_info("database available", LI("pending", in->nbatch));
	in->db_up = 1;
	in->backoff_ms = 0;
	in->last_db_us = mono_us();
	resume_if_room(in);
}

static void db_failed(struct ingest *in)
{
	in->backoff_ms = in->backoff_ms ? in->backoff_ms * 2 : BACKOFF_MIN_MS;
	if (in->backoff_ms > BACKOFF_MAX_MS)
		in->backoff_ms = BACKOFF_MAX_MS;
	/* Once when it goes away, then at each slowest retry: not at every attempt. */
	if (!in->stopping && (in->db_up || in->backoff_ms == BACKOFF_MAX_MS))
		log_warn("database unavailable: keeping the batch and retrying",
			 LS("error", in->store.why), LI("pending", in->nbatch),
			 LI("retry_ms", in->backoff_ms));
	in->db_up = 0;
	metric_add(in->m_db_failures, 1);
}

/* Releases batch[i]: its row is committed, so its offset may be stored. */
static void committed(struct ingest *in, int i)
{
	struct ingest_slot *s = in->batch[i];
	in->batch[i] = NULL;
	in->batch_bytes -= s->row.len;
	kafka_work_release(&s->work);
}

/* A batch the database refused as a whole: find the rows it refuses by writing them
 * one by one, and dead-letter only those. */
static int flush_rows(struct ingest *in)
{
	log_warn("batch refused by the database: writing its events one by one",
		 LS("sqlstate", in->store.sqlstate), LS("error", in->store.why),
		 LI("events", in->nbatch));
	int i, n = in->nbatch, rc = 0;
	for (i = 0; i < n; i++) {
		struct ingest_slot *s = in->batch[i];
		long long inserted = 0;
		struct auditor_row *one = &s->row;
		enum store_result r = store_insert(&in->store, &one, 1, STORE_DUPS_ALL, &inserted);
		if (r == STORE_RETRY) {
			rc = -1;
			break;
		}
		if (r == STORE_OK) {
			metric_add(in->m_written, (double)inserted);
			metric_add(in->m_duplicates, (double)(1 - inserted));
			committed(in, i);
			continue;
		}
		log_error("event refused by the database", LS("event_id", s->row.event_id),
			  LS("topic", GW_TOPIC_AUDIT), LI("partition", s->msg->partition),
			  LI("offset", s->msg->offset), LS("sqlstate", in->store.sqlstate),
			  LS("error", in->store.why));
		metric_add(in->m_rejected, 1);
		in->batch[i] = NULL;
		in->batch_bytes -= s->row.len;
		deadletter(in, s, "refused by the database");
	}
	memmove(in->batch, in->batch + i, (size_t)(n - i) * sizeof *in->batch);
	in->nbatch = n - i;
	if (rc)
		db_failed(in);
	else
		db_ok(in);
	return rc;
}

/* The outcome of writing the whole batch (r from store_insert, or from a write that was
 * in flight and has been put back in front of it). Returns 0 when the batch is empty. */
static int settle(struct ingest *in, enum store_result r, long long inserted)
{
	if (r == STORE_REJECTED && strncmp(in->store.sqlstate, "23", 2) == 0) {
		/* An event produced twice (a unique key conflict), or a month whose partition
		 * went away: once more with every row looked up and the months ensured again. */
		log_info("batch conflicts with stored events: writing it again with every event "
			 "looked up",
			 LS("sqlstate", in->store.sqlstate), LS("error", in->store.why),
			 LI("events", in->nbatch));
		r = store_insert(&in->store, batch_rows(in), in->nbatch, STORE_DUPS_ALL, &inserted);
	}
	if (r == STORE_REJECTED)
		return flush_rows(in);
	if (r == STORE_RETRY) {
		db_failed(in);
		return -1;
	}
	int n = in->nbatch;
	metric_observe(in->m_batch_seconds, (double)(mono_us() - in->flush_t0) / 1e6);
	metric_add(in->m_batches, 1);
	metric_add(in->m_written, (double)inserted);
	metric_add(in->m_duplicates, (double)(n - inserted));
	for (int i = 0; i < n; i++)
		committed(in, i);
	in->nbatch = 0;
	in->batch_bytes = 0;
	db_ok(in);
	return 0;
}

static void on_db(evutil_socket_t fd, short what, void *arg);
static void landed(struct ingest *in, enum store_result r);
static int flush(struct ingest *in, int wait);
static void schedule(struct ingest *in);

/* Waits (on the loop) for the socket to be ready for the write in flight. */
static void arm(struct ingest *in, short want)
{
	long long ms = in->cfg.statement_ms + STORE_STALL_SLACK_MS;
	struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
	if (in->db_ev_set)
		event_del(&in->db_ev);
	event_assign(&in->db_ev, in->rt->base, store_socket(&in->store), want, on_db, in);
	in->db_ev_set = 1;
	if (event_add(&in->db_ev, &tv) != 0) {
		/* Cannot wait on it: give it up; its rows are retried after a backoff. */
		store_insert_abort(&in->store, "cannot wait for the database");
		landed(in, STORE_RETRY);
		schedule(in);
	}
}

/* The write in flight is over. Committed: its offsets may be stored. Otherwise its rows
 * go back in front of the batch (they precede it in every partition) and the whole is
 * settled as a synchronous write would be: retried later, or row by row. */
static void landed(struct ingest *in, enum store_result r)
{
	int n = in->ninflight;
	in->ninflight = 0;
	if (r == STORE_OK) {
		long long fresh = in->store.fresh;
		metric_observe(in->m_batch_seconds, (double)(mono_us() - in->flush_t0) / 1e6);
		metric_add(in->m_batches, 1);
		metric_add(in->m_written, (double)fresh);
		metric_add(in->m_duplicates, (double)(n - fresh));
		for (int i = 0; i < n; i++) {
			struct ingest_slot *s = in->inflight[i];
			in->inflight[i] = NULL;
			kafka_work_release(&s->work);
		}
		in->inflight_bytes = 0;
		db_ok(in);
		return;
	}
	memmove(in->batch + n, in->batch, (size_t)in->nbatch * sizeof *in->batch);
	memcpy(in->batch, in->inflight, (size_t)n * sizeof *in->batch);
	in->nbatch += n;
	in->batch_bytes += in->inflight_bytes;
	in->inflight_bytes = 0;
	in->first_us = in->flush_t0;
	settle(in, r, 0);
}

/* Advances the write in flight. */
static void on_db(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *in = arg;
	enum store_result r;
	short want = 0;
	if (what & EV_TIMEOUT) {
		store_insert_abort(&in->store, "no answer from the database");
		r = STORE_RETRY;
	} else {
		r = store_insert_step(&in->store, &want);
	}
	if (r == STORE_PENDING) {
		arm(in, want);
		return;
	}
	landed(in, r);
	if (in->stopping)
		return;
	if (in->nbatch && !in->backoff_ms &&
	    (batch_full(in) || mono_us() >= in->first_us + (int64_t)in->cfg.flush_ms * 1000))
		flush(in, 0);
	schedule(in);
}

/* Finishes the write in flight before the deadline (mono_us), blocking: for shutdown. */
static void wait_inflight(struct ingest *in, int64_t deadline)
{
	if (!in->ninflight)
		return;
	if (in->db_ev_set)
		event_del(&in->db_ev);
	short want = 0;
	enum store_result r;
	while ((r = store_insert_step(&in->store, &want)) == STORE_PENDING) {
		int64_t left = (deadline - mono_us()) / 1000;
		struct pollfd p = {
		    store_socket(&in->store),
		    (short)((want & EV_READ ? POLLIN : 0) | (want & EV_WRITE ? POLLOUT : 0)), 0};
		if (left <= 0 || poll(&p, 1, (int)left) == 0) {
			store_insert_abort(&in->store,
					   "shutting down: no answer from the database");
			r = STORE_RETRY;
			break;
		}
	}
	landed(in, r);
}

/* Writes the whole batch in one transaction. With wait, before returning; otherwise the
 * COPY data and the COMMIT are left in flight (on_db finishes them) while the loop goes
 * on filling the next batch: decoding overlaps PostgreSQL's work. One write is in flight
 * at a time (the next one needs the chain heads it commits). Returns 0 when the batch is
 * empty after (written, or in flight). */
static int flush(struct ingest *in, int wait)
{
	if (in->nbatch == 0)
		return 0;
	if (in->ninflight)
		return -1;
	in->flush_t0 = mono_us();
	long long inserted = 0;
	enum store_result r;
	if (wait) {
		r = store_insert(&in->store, batch_rows(in), in->nbatch, STORE_DUPS_REDELIVERED,
				 &inserted);
		return settle(in, r, inserted);
	}
	r = store_insert_start(&in->store, batch_rows(in), in->nbatch, STORE_DUPS_REDELIVERED,
			       &inserted);
	if (r != STORE_PENDING)
		return settle(in, r, inserted);
	/* The batch becomes the write in flight; the arrays swap, so nothing is copied. */
	struct ingest_slot **t = in->inflight;
	in->inflight = in->batch;
	in->batch = t;
	in->ninflight = in->nbatch;
	in->inflight_bytes = in->batch_bytes;
	in->nbatch = 0;
	in->batch_bytes = 0;
	arm(in, EV_READ | EV_WRITE);
	return 0;
}

/* The one timer: the flush deadline of a partial batch, the next retry while the
 * database is away, or the idle health check. */
static void schedule(struct ingest *in)
{
	/* While a write is in flight, its end (on_db) schedules. */
	if (in->stopping || in->ninflight)
		return;
	int64_t delay_us;
	if (in->backoff_ms) {
		delay_us = (int64_t)in->backoff_ms * 1000;
	} else if (in->nbatch) {
		delay_us = in->first_us + (int64_t)in->cfg.flush_ms * 1000 - mono_us();
		if (delay_us < 0)
			delay_us = 0;
	} else {
		delay_us = (int64_t)IDLE_CHECK_MS * 1000;
	}
	struct timeval tv = {(time_t)(delay_us / 1000000), (suseconds_t)(delay_us % 1000000)};
	evtimer_add(in->timer, &tv);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *in = arg;
	if (in->stopping || in->ninflight)
		return;
	if (in->nbatch) {
		flush(in, 0);
	} else if (!in->db_up) {
		if (store_connect(&in->store) == STORE_OK)
			db_ok(in);
		else
			db_failed(in);
	} else if (mono_us() - in->last_db_us >= (int64_t)IDLE_CHECK_MS * 1000) {
		/* The idle round trip also signs quiet chains' heads when they are due. */
		enum store_result r =
		    in->store.key ? store_checkpoint_idle(&in->store) : store_ping(&in->store);
		if (r == STORE_OK)
			db_ok(in);
		else
			db_failed(in);
	}
	schedule(in);
}

/* ---- consuming ---- */

static void on_message(void *arg, rd_kafka_message_t *msg)
{
	struct ingest *in = arg;
	if (in->stopping) {
		/* Never begun, so its offset is not stored: the next owner reads it again. */
		rd_kafka_message_destroy(msg);
		return;
	}
	struct ingest_part *p = part_find(in, msg->partition, 0);
	if (!(p && p->paused) && batch_full(in) && in->ninflight && !in->backoff_ms) {
		/* The next batch is ready while the last is still being written: wait for it
		 * here, as a synchronous write would. That is the backpressure (librdkafka
		 * keeps prefetching into its bounded queue); handing messages back instead
		 * would make Kafka send them again. */
		long long ms = in->cfg.statement_ms + STORE_STALL_SLACK_MS;
		wait_inflight(in, mono_us() + ms * 1000);
		if (in->nbatch && !in->backoff_ms)
			flush(in, 0);
		schedule(in);
	}
	if ((p && p->paused) || batch_full(in)) {
		handback(in, msg);
		return;
	}
	struct ingest_slot *s = calloc(1, sizeof *s);
	if (!s) {
		log_error("out of memory", LS("topic", GW_TOPIC_AUDIT),
			  LI("partition", msg->partition), LI("offset", msg->offset));
		handback(in, msg);
		return;
	}
	s->in = in;
	if (kafka_work_begin(&in->consumer, &s->work, msg, slot_release) != 0) {
		free(s);
		handback(in, msg);
		return;
	}
	s->msg = msg;

	struct gw_meta meta;
	const char *reason = NULL;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int bad = wire_decode(msg, 0, &meta, &reason) != 0 ||
		  auditor_event_map(msg->payload, msg->len, msg->partition, msg->offset, &s->row,
				    &reason) != 0;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	metric_add(in->store.stage[STORE_STAGE_DECODE],
		   (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	if (bad) {
		deadletter(in, s, reason);
		return;
	}
	in->batch[in->nbatch++] = s;
	in->batch_bytes += s->row.len;
	if (in->nbatch == 1)
		in->first_us = mono_us();
	if (batch_full(in)) {
		if (!in->backoff_ms)
			flush(in, 0);
		schedule(in);
	} else if (in->nbatch == 1 && !in->backoff_ms) {
		schedule(in);
	}
}

/* ---- lifecycle ---- */

static double gauge_db_up(void *arg)
{
	return ((struct ingest *)arg)->db_up;
}

static double gauge_pending(void *arg)
{
	return ((struct ingest *)arg)->nbatch + ((struct ingest *)arg)->ninflight;
}

/* Events in gw.audit not yet written: grows while the database is away. */
static double gauge_lag(void *arg)
{
	return (double)kafka_consumer_lag(&((struct ingest *)arg)->consumer);
}

static double gauge_checkpoints(void *arg)
{
	return (double)((struct ingest *)arg)->store.checkpoints;
}

static int metrics_init(struct ingest *in)
{
	in->m_written = metric_get(METRIC_COUNTER, "gw_auditor_events_written_total", NULL,
				   "Audit events inserted (new rows, committed)");
	in->m_duplicates = metric_get(METRIC_COUNTER, "gw_auditor_duplicates_total", NULL,
				      "Audit events already stored (same event_id), skipped");
	in->m_batches =
	    metric_get(METRIC_COUNTER, "gw_auditor_batches_total", NULL, "Batches committed");
	in->m_deadletter = metric_get(METRIC_COUNTER, "gw_auditor_deadletter_total", NULL,
				      "Messages sent to gw.deadletter");
	in->m_rejected = metric_get(METRIC_COUNTER, "gw_auditor_rejected_total", NULL,
				    "Events refused by the database (sent to gw.deadletter)");
	in->m_db_failures = metric_get(METRIC_COUNTER, "gw_auditor_db_failures_total", NULL,
				       "Failed database round trips (connect, insert, check)");
	in->m_batch_seconds = metric_get(METRIC_HISTOGRAM, "gw_auditor_batch_seconds", NULL,
					 "Time to write and commit one batch");
	for (int i = 0; i < STORE_NSTAGES; i++) {
		char labels[48];
		snprintf(labels, sizeof labels, "stage=\"%s\"", store_stage_names[i]);
		in->store.stage[i] = metric_get(METRIC_COUNTER, "gw_auditor_write_seconds_total",
						labels, "Time spent writing events, by stage");
		if (!in->store.stage[i])
			return -1;
	}
	if (!in->m_written || !in->m_duplicates || !in->m_batches || !in->m_deadletter ||
	    !in->m_rejected || !in->m_db_failures || !in->m_batch_seconds ||
	    !metric_gauge_fn("gw_auditor_db_up", NULL, "1 when PostgreSQL is reachable and usable",
			     gauge_db_up, in) ||
	    !metric_gauge_fn("gw_auditor_consumer_lag", NULL,
			     "gw.audit messages behind the high watermark (-1 unknown)", gauge_lag,
			     in) ||
	    !metric_gauge_fn("gw_auditor_checkpoints_signed", NULL,
			     "Checkpoints signed since start (0 without a signing key)",
			     gauge_checkpoints, in) ||
	    !metric_gauge_fn("gw_auditor_pending_events", NULL,
			     "Events in the batch waiting to be written", gauge_pending, in))
		return -1;
	return 0;
}

int ingest_init(struct ingest *in, struct runtime *rt, const struct ingest_config *cfg,
		char *db_url)
{
	memset(in, 0, sizeof *in);
	in->rt = rt;
	in->cfg = *cfg;
	store_init(&in->store, db_url, cfg->statement_ms);
	in->store.key = cfg->key;
	in->store.cp_events = cfg->cp_events;
	in->store.cp_ms = cfg->cp_ms;
	/* Twice the batch: a write in flight that fails goes back in front of the batch. */
	in->batch = calloc(2 * (size_t)cfg->batch_max, sizeof *in->batch);
	in->inflight = calloc(2 * (size_t)cfg->batch_max, sizeof *in->inflight);
	in->rows = calloc(2 * (size_t)cfg->batch_max, sizeof *in->rows);
	in->timer = evtimer_new(rt->base, on_tick, in);
	if (!in->batch || !in->inflight || !in->rows || !in->timer || metrics_init(in) != 0) {
		log_error("out of memory starting the auditor");
		return -1;
	}
	/* The schema check comes before anything else starts: an unmigrated database is
	 * a deployment mistake to fix now, while an unreachable one is only waited for. */
	enum store_result first = store_connect(&in->store);
	if (in->store.outdated) {
		log_error("refusing to start: run `auditor migrate` (or set GW_DATABASE_ADMIN_URL "
			  "so serve migrates first)",
			  LS("detail", in->store.why));
		return -1;
	}
	in->consumer.on_message = on_message;
	in->consumer.arg = in;
	if (kafka_producer_init(&in->producer, rt->base, "auditor") != 0 ||
	    kafka_consumer_init(&in->consumer, rt->base, cfg->group, "auditor",
				cfg->fetch_wait_ms) != 0)
		return -1;
	/* Our own bound (batch plus dead letters in flight) must bite first: kafka.c's
	 * per-partition pause would fight the resume we do after each commit. */
	int need = 3 * cfg->batch_max + 2; /* batch + write in flight, dead letters */
	if (in->consumer.max_inflight_per_partition < need)
		in->consumer.max_inflight_per_partition = need;
	const char *topics[] = {GW_TOPIC_AUDIT};
	if (kafka_consumer_subscribe(&in->consumer, topics, 1) != 0)
		return -1;
	if (first == STORE_OK)
		db_ok(in);
	else
		db_failed(in);
	schedule(in);
	log_info("auditor consuming", LS("topic", GW_TOPIC_AUDIT), LS("group", cfg->group),
		 LI("batch", cfg->batch_max), LI("flush_ms", cfg->flush_ms),
		 LI("db_up", in->db_up));
	return 0;
}

void ingest_stop(void *arg)
{
	struct ingest *in = arg;
	in->stopping = 1;
	if (in->timer)
		evtimer_del(in->timer);
	log_info("stopping: writing the pending batch", LI("pending", in->nbatch));
	int64_t deadline = mono_us() + (int64_t)STOP_BUDGET_MS * 1000;
	int delay = BACKOFF_MIN_MS;
	wait_inflight(in, deadline);
	while (in->nbatch && flush(in, 1) != 0 && mono_us() + delay * 1000LL < deadline) {
		sleep_ms(delay);
		delay = delay * 2 > 1000 ? 1000 : delay * 2;
	}
	if (in->nbatch) {
		log_error("events not written at shutdown: their offsets are not stored, so they "
			  "are read again after a restart",
			  LI("pending", in->nbatch), LS("error", in->store.why));
		for (int i = 0; i < in->nbatch; i++)
			slot_free(in->batch[i]);
		in->nbatch = 0;
		in->batch_bytes = 0;
	}
	/* Dead letters first: their delivery reports store offsets while the consumer is
	 * still open to commit them. */
	kafka_producer_close(&in->producer, STOP_BUDGET_MS);
	while (in->dead) {
		struct ingest_slot *s = in->dead;
		in->dead = s->next;
		slot_free(s); /* undelivered: its offset stays unstored */
	}
	in->ndead = 0;
	kafka_consumer_close(&in->consumer);
	store_disconnect(&in->store);
	log_info("auditor stopped");
	runtime_exit(in->rt);
}

int ingest_ready(void *arg, char *why, size_t whycap)
{
	struct ingest *in = arg;
	if (in->producer.fatal) {
		snprintf(why, whycap, "Kafka producer failed fatally: restart required");
		return 0;
	}
	if (in->db_up)
		return 1;
	snprintf(why, whycap, "database unavailable: %s",
		 in->store.why[0] ? in->store.why : "not connected yet");
	return 0;
}

void ingest_free(struct ingest *in)
{
	kafka_producer_close(&in->producer, 0);
	kafka_consumer_close(&in->consumer);
	if (in->db_ev_set)
		event_del(&in->db_ev);
	for (int i = 0; i < in->nbatch; i++)
		slot_free(in->batch[i]);
	for (int i = 0; i < in->ninflight; i++)
		slot_free(in->inflight[i]);
	while (in->dead) {
		struct ingest_slot *s = in->dead;
		in->dead = s->next;
		slot_free(s);
	}
	free(in->batch);
	free(in->inflight);
	free(in->parts);
	free(in->rows);
	if (in->timer)
		event_free(in->timer);
	store_free(&in->store);
	memset(in, 0, sizeof *in);
}
