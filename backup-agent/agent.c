/* `backup-agent serve`: the interval timer, gw.control commands, one snapshot at a time
 * (commands arriving meanwhile are answered by it), audit events, metrics and the
 * graceful stop. A command's offset is stored only once its snapshot has finished and
 * the backup.snapshot event saying how it went is acknowledged by the broker. */
#include "agent.h"

#include <errno.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "log.h"
#include "wire.h"

#define JANITOR_MS          1000
/* After a failed snapshot, try again sooner than a whole interval. */
#define RETRY_AFTER_ERROR_S 300
/* At stop, how long unacknowledged audit events are waited for. */
#define DRAIN_MS            10000
#define PRODUCER_CLOSE_MS   5000

static void schedule_stop_step(struct agent *a, int64_t at_ms)
{
	int64_t left = at_ms - wire_now_ms();
	if (left < 0)
		left = 0;
	struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
	if (event_add(a->stop_ev, &tv) != 0)
		log_error("cannot schedule the shutdown step");
}

static void stop_kick(struct agent *a)
{
	if (a->stopping && !a->closed)
		event_active(a->stop_ev, EV_TIMEOUT, 0);
}

/* ---- commands and reports ---- */

static void cmd_release(struct kafka_work *w)
{
	free((struct agent_cmd *)((char *)w - offsetof(struct agent_cmd, work)));
}

/* Lets go of the commands a report answers; failed keeps their offsets unstored so the
 * command is seen again after a restart. */
static void report_release_cmds(struct agent_report *r, int failed)
{
	struct agent_cmd *c = r->cmds;
	r->cmds = NULL;
	while (c) {
		struct agent_cmd *next = c->next;
		if (failed)
			c->work.failed = 1;
		kafka_work_release(&c->work);
		c = next;
	}
}

static void report_unlink_free(struct agent *a, struct agent_report *r)
{
	for (struct agent_report **pp = &a->reports; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	}
	free(r);
}

static void report_delivered(struct kafka_done *d, rd_kafka_resp_err_t err)
{
	struct agent_report *r =
	    (struct agent_report *)((char *)d - offsetof(struct agent_report, done));
	struct agent *a = r->a;
	report_release_cmds(r, err != RD_KAFKA_RESP_ERR_NO_ERROR);
	report_unlink_free(a, r);
	stop_kick(a);
}

/* ---- snapshots ---- */

static void start_snapshot(struct agent *a, const char *trigger)
{
	if (snapshot_start(&a->snap) != 0)
		return; /* one is running: it answers */
	a->trigger = trigger;
	metric_set(a->m_running, 1);
}

static void on_snapshot_done(void *arg, const struct snapshot_result *res)
{
	struct agent *a = arg;
	int64_t now = wire_now_ms();
	metric_set(a->m_running, 0);
	metric_add(res->ok ? a->m_ok : a->m_error, 1);
	if (res->ok) {
		metric_set(a->m_last_success, (double)now / 1000.0);
		metric_set(a->m_last_duration, (double)res->m.duration_ms / 1000.0);
	}
	if (a->cfg->interval_s > 0) {
		int64_t wait_s = a->cfg->interval_s;
		if (!res->ok && wait_s > RETRY_AFTER_ERROR_S)
			wait_s = RETRY_AFTER_ERROR_S;
		/* From the start, so the period does not drift by each dump's duration. */
		a->next_due_ms = (res->ok ? now - res->m.duration_ms : now) + wait_s * 1000;
	}
	struct agent_report *r = calloc(1, sizeof *r);
	if (!r) {
		log_error("out of memory reporting a snapshot", LS("snapshot_id", res->id));
		struct agent_report tmp = {.cmds = a->waiting};
		a->waiting = a->next;
		a->next = NULL;
		report_release_cmds(&tmp, 1);
		if (a->waiting && !a->stopping)
			start_snapshot(a, "command");
		stop_kick(a);
		return;
	}
	r->a = a;
	r->done.fn = report_delivered;
	r->cmds = a->waiting;
	a->waiting = NULL;
	if (!res->ok && a->stopping && r->cmds) {
		/* Cut short by our own shutdown: hand the commands back (offsets not stored)
		 * so whoever consumes gw.control next takes the snapshot they asked for. */
		log_warn("handing back the backup commands of the aborted snapshot",
			 LS("snapshot_id", res->id));
		report_release_cmds(r, 1);
	}
	r->next = a->reports;
	a->reports = r;
	const char *by = r->cmds ? r->cmds->requested_by : NULL;
	if (by && !by[0])
		by = NULL;
	if (snapshot_audit(&a->producer, res, a->trigger ? a->trigger : "command", by, &r->done) !=
	    0) {
		report_release_cmds(r, 1);
		report_unlink_free(a, r);
	}
	a->trigger = NULL;
	/* Commands that came after the dump ended, while its result was on its way, need
	 * a snapshot of their own. */
	a->waiting = a->next;
	a->next = NULL;
	if (a->waiting && !a->stopping)
		start_snapshot(a, "command");
	stop_kick(a);
}

static void on_janitor(evutil_socket_t fd, short what, void *arg)
{
	struct agent *a = arg;
	if (a->stopping || a->next_due_ms == 0 || snapshot_running(&a->snap))
		return;
	if (wire_now_ms() >= a->next_due_ms) {
		log_info("interval snapshot due", LI("interval_s", a->cfg->interval_s));
		start_snapshot(a, "interval");
	}
}

/* Keeps only printable ASCII: the value is free text from a message and goes into
 * logs and the audit log. */
static void copy_requested_by(char *dst, const char *src)
{
	size_t n = 0;
	for (; src && *src && n < AGENT_REQUESTED_BY_MAX; src++)
		dst[n++] = (*src >= 0x20 && *src < 0x7f) ? *src : '?';
	dst[n] = 0;
}

/* Returns NULL when msg is a valid backup command (requested_by copied), else the
 * dead-letter reason. */
static const char *decode_command(const rd_kafka_message_t *msg, struct agent_cmd *cmd)
{
	static struct gw_meta meta; /* large (sealed credential buffer): keep it off the stack */
	const char *reason = NULL;
	if (wire_decode(msg, 0, &meta, &reason) != 0)
		return reason;
	if (!msg->payload || msg->len == 0)
		return "empty command";
	json_error_t jerr;
	json_t *o = json_loadb(msg->payload, msg->len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(o)) {
		json_decref(o);
		return "command is not a JSON object";
	}
	json_t *c = json_object_get(o, "command");
	json_t *by = json_object_get(o, "requested_by");
	if (!json_is_string(c))
		reason = "command has no \"command\" string";
	else if (strcmp(json_string_value(c), "backup") != 0)
		reason = "unknown command";
	else if (by && !json_is_string(by))
		reason = "\"requested_by\" is not a string";
	else
		copy_requested_by(cmd->requested_by, by ? json_string_value(by) : NULL);
	json_decref(o);
	return reason;
}

static void on_message(void *arg, rd_kafka_message_t *msg)
{
	struct agent *a = arg;
	if (a->stopping) {
		/* Not begun, so never stored: whoever consumes next runs it. */
		rd_kafka_message_destroy(msg);
		return;
	}
	struct agent_cmd *cmd = calloc(1, sizeof *cmd);
	if (!cmd) {
		log_error("out of memory taking a command", LI("partition", msg->partition),
			  LI("offset", msg->offset));
		rd_kafka_message_destroy(msg);
		return;
	}
	if (kafka_work_begin(&a->consumer, &cmd->work, msg, cmd_release) != 0) {
		free(cmd);
		rd_kafka_message_destroy(msg);
		return;
	}
	const char *reason = decode_command(msg, cmd);
	if (reason) {
		if (wire_deadletter(&a->producer, msg, reason, &cmd->work) != 0)
			cmd->work.failed = 1;
		kafka_work_release(&cmd->work);
		rd_kafka_message_destroy(msg);
		return;
	}
	/* A dump in progress answers the command; one already finished (its result not yet
	 * delivered) is older than the command, so the command gets the next one. */
	int running = snapshot_running(&a->snap), finished = a->snap.state == SNAP_DONE;
	log_info(running && !finished ? "backup requested: answered by the snapshot running"
				      : "backup requested",
		 LS("topic", GW_TOPIC_CONTROL), LI("partition", msg->partition),
		 LI("offset", msg->offset), LS("requested_by", cmd->requested_by));
	rd_kafka_message_destroy(msg);
	struct agent_cmd **list = finished ? &a->next : &a->waiting;
	cmd->next = *list;
	*list = cmd;
	if (!running)
		start_snapshot(a, "command");
}

/* ---- stop ---- */

static void close_kafka(struct agent *a)
{
	/* Anything still unacknowledged is given up: those commands are redone after a
	 * restart. Their works must be let go while the consumer's trackers exist. */
	for (struct agent_report *r = a->reports; r; r = r->next)
		report_release_cmds(r, 1);
	struct agent_report tmp = {.cmds = a->waiting};
	report_release_cmds(&tmp, 1);
	tmp.cmds = a->next;
	report_release_cmds(&tmp, 1);
	a->waiting = a->next = NULL;
	if (a->consumer_up)
		kafka_consumer_close(&a->consumer);
	a->consumer_up = 0;
	if (a->producer_up)
		kafka_producer_close(&a->producer, PRODUCER_CLOSE_MS);
	a->producer_up = 0;
	/* Reports whose delivery report never came (the producer is gone now). */
	while (a->reports)
		report_unlink_free(a, a->reports);
}

static void on_stop_step(evutil_socket_t fd, short what, void *arg)
{
	struct agent *a = arg;
	if (!a->stopping || a->closed)
		return;
	int64_t now = wire_now_ms();
	if (snapshot_running(&a->snap)) {
		if (now < a->stop_deadline_ms) {
			schedule_stop_step(a, a->stop_deadline_ms);
			return;
		}
		log_warn("stopping: the running snapshot did not finish within "
			 "GW_BACKUP_STOP_WAIT_MS; killing pg_dump",
			 LI("stop_wait_ms", a->cfg->stop_wait_ms));
		/* Its result (an error) comes back through on_snapshot_done, which kicks. */
		snapshot_abort(&a->snap, "shutting down");
		return;
	}
	if (a->drain_deadline_ms == 0)
		a->drain_deadline_ms = now + DRAIN_MS;
	if (a->reports && now < a->drain_deadline_ms) {
		schedule_stop_step(a, a->drain_deadline_ms);
		return;
	}
	if (a->reports)
		log_warn("stopping with audit events not acknowledged: their commands will be "
			 "redone after a restart");
	a->closed = 1;
	close_kafka(a);
	log_info("stopped");
	runtime_exit(a->rt);
}

static void on_stop(void *arg)
{
	struct agent *a = arg;
	a->stopping = 1;
	a->stop_deadline_ms = wire_now_ms() + a->cfg->stop_wait_ms;
	if (snapshot_running(&a->snap))
		log_info("stopping: waiting for the running snapshot",
			 LS("snapshot_id", a->snap.res.id),
			 LI("stop_wait_ms", a->cfg->stop_wait_ms));
	stop_kick(a);
}

static int on_ready(void *arg, char *why, size_t whycap)
{
	struct agent *a = arg;
	if (a->producer.fatal) {
		snprintf(why, whycap, "the Kafka producer hit a fatal error: restart");
		return 0;
	}
	if (!a->producer.broker_up) {
		snprintf(why, whycap, "no Kafka broker reachable");
		return 0;
	}
	return 1;
}

/* ---- setup ---- */

/* The newest good snapshot sets the last-success gauge and, with a timer, when the next
 * one is due: a restart neither skips a snapshot nor takes an extra one. */
static void schedule_from_store(struct agent *a)
{
	struct store_entry *v;
	size_t n;
	time_t last = 0;
	if (store_list(&a->store, &v, &n) == 0) {
		/* Newest first: the first good one is the last success. */
		for (size_t i = 0; i < n; i++) {
			time_t t;
			if (v[i].status == STORE_OK &&
			    manifest_time_parse(v[i].m.created_at, &t) == 0) {
				last = t;
				break;
			}
		}
		free(v);
	}
	if (last)
		metric_set(a->m_last_success, (double)last);
	if (a->cfg->interval_s == 0) {
		log_info("no snapshot timer (GW_BACKUP_INTERVAL=0): snapshots on command only");
		return;
	}
	int64_t now = wire_now_ms();
	a->next_due_ms = last ? (int64_t)last * 1000 + a->cfg->interval_s * 1000 : now;
	if (a->next_due_ms < now)
		a->next_due_ms = now;
	log_info("snapshot timer set", LI("interval_s", a->cfg->interval_s),
		 LI("first_in_s", (a->next_due_ms - now) / 1000));
}

int agent_init(struct agent *a, struct runtime *rt, const struct settings *cfg)
{
	memset(a, 0, sizeof *a);
	a->rt = rt;
	a->cfg = cfg;
	a->store.dirfd = -1;
	rt->on_stop = on_stop;
	rt->ready = on_ready;
	rt->arg = a;
	a->m_ok = metric_get(METRIC_COUNTER, "gw_backup_snapshots_total", "outcome=\"ok\"",
			     "Snapshots finished, by outcome");
	a->m_error = metric_get(METRIC_COUNTER, "gw_backup_snapshots_total", "outcome=\"error\"",
				"Snapshots finished, by outcome");
	a->m_last_success = metric_get(METRIC_GAUGE, "gw_backup_last_success_timestamp_seconds",
				       NULL, "Unix time of the last successful snapshot");
	a->m_last_duration = metric_get(METRIC_GAUGE, "gw_backup_last_duration_seconds", NULL,
					"Duration of the last successful snapshot");
	a->m_running = metric_get(METRIC_GAUGE, "gw_backup_running", NULL,
				  "1 while a snapshot is being taken");
	if (!a->m_ok || !a->m_error || !a->m_last_success || !a->m_last_duration || !a->m_running)
		return -1;
	if (store_open(&a->store, cfg->dir, 1) != 0)
		return -1;
	a->snap_up = 1; /* snapshot_init leaves it safe to free even when it fails */
	if (snapshot_init(&a->snap, rt->base, &a->store, cfg->url, cfg->pg_dump, on_snapshot_done,
			  a) != 0)
		return -1;
	const char *client = config_instance("backup-agent");
	if (kafka_producer_init(&a->producer, rt->base, client) != 0)
		return -1;
	a->producer_up = 1;
	a->consumer.on_message = on_message;
	a->consumer.arg = a;
	if (kafka_consumer_init(&a->consumer, rt->base, cfg->group, client, 100) != 0)
		return -1;
	a->consumer_up = 1;
	const char *topics[] = {GW_TOPIC_CONTROL};
	if (kafka_consumer_subscribe(&a->consumer, topics, 1) != 0)
		return -1;
	a->janitor = event_new(rt->base, -1, EV_PERSIST, on_janitor, a);
	a->stop_ev = event_new(rt->base, -1, 0, on_stop_step, a);
	struct timeval tv = {JANITOR_MS / 1000, (JANITOR_MS % 1000) * 1000};
	if (!a->janitor || !a->stop_ev || event_add(a->janitor, &tv) != 0) {
		log_error("cannot create timers");
		return -1;
	}
	schedule_from_store(a);
	log_info("backup-agent serving", LS("dir", cfg->dir), LS("pg_dump", cfg->pg_dump),
		 LS("group", cfg->group), LS("topic", GW_TOPIC_CONTROL));
	return 0;
}

void agent_free(struct agent *a)
{
	/* A second stop signal leaves the loop with pg_dump possibly still running. */
	if (a->snap_up) {
		if (snapshot_running(&a->snap))
			log_warn("leaving with a snapshot in progress: killing pg_dump",
				 LS("snapshot_id", a->snap.res.id));
		snapshot_free(&a->snap);
		a->snap_up = 0;
	}
	if (!a->closed) {
		a->closed = 1;
		close_kafka(a);
	}
	if (a->janitor)
		event_free(a->janitor);
	if (a->stop_ev)
		event_free(a->stop_ev);
	a->janitor = a->stop_ev = NULL;
	store_close(&a->store);
}
