/* `backup-agent serve`: the interval timer, gw.control commands, one snapshot at a time
 * (commands arriving meanwhile are answered by it), audit events, metrics and the
 * graceful stop. A command's offset is stored only once its snapshot has finished and
 * the backup.snapshot event saying how it went is acknowledged by the broker. */
#include "agent.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "audit.h"
#include "config.h"
#include "log.h"
#include "retention.h"
#include "wire.h"

extern char **environ;

#define JANITOR_MS          1000
/* After a failed snapshot, try again sooner than a whole interval. */
#define RETRY_AFTER_ERROR_S 300
/* At stop, how long unacknowledged audit events are waited for. */
#define DRAIN_MS            10000
#define PRODUCER_CLOSE_MS   5000
#define LOCK_TIMEOUT_MS     10000

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
	/* A standby never dumps; a verify in progress finishes first (the commands wait). */
	if (!a->active || a->verifying)
		return;
	if (snapshot_start(&a->snap) != 0)
		return; /* one is running: it answers */
	a->trigger = trigger;
	metric_set(a->m_running, 1);
}

static int start_verify(struct agent *a, const char *id);
static void after_snapshot(struct agent *a, int ran_ok);

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
	if (!res->ok && (a->stopping || !a->active) && r->cmds) {
		/* Cut short by our own shutdown or a lost lock: hand the commands back
		 * (offsets not stored) so whoever consumes gw.control next takes the
		 * snapshot they asked for. */
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
	 * a snapshot of their own (after the verify, if one starts). */
	a->waiting = a->next;
	a->next = NULL;
	if (res->ok && a->cfg->verify && !a->stopping && a->active &&
	    start_verify(a, res->id) == 0) {
		stop_kick(a);
		return;
	}
	after_snapshot(a, res->ok);
}

/* ---- retention ---- */

static void on_retention_deleted(void *arg, const struct store_entry *e)
{
	struct agent *a = arg;
	metric_add(a->m_retention_deleted, 1);
	json_t *extra = json_pack(
	    "{s:s,s:s,s:I,s:I}", "snapshot_id", e->id, "status", store_status_name(e->status),
	    "keep_last", (json_int_t)a->cfg->keep_last, "keep_days", (json_int_t)a->cfg->keep_days);
	if (extra && e->has_manifest)
		json_object_set_new(extra, "created_at", json_string(e->m.created_at));
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "backup.retention";
	ev.outcome = "ok";
	ev.reason = "deleted: beyond GW_BACKUP_KEEP_LAST and older than GW_BACKUP_KEEP_DAYS";
	ev.extra = extra;
	if (!extra || audit_emit(&a->producer, &ev, NULL, NULL) != 0)
		log_error("cannot emit the backup.retention audit event", LS("snapshot_id", e->id));
	json_decref(extra);
}

static void run_retention(struct agent *a)
{
	int n = retention_apply(&a->store, a->cfg->keep_last, a->cfg->keep_days, time(NULL),
				on_retention_deleted, a);
	if (n > 0)
		log_info("retention done", LI("deleted", n), LI("keep_last", a->cfg->keep_last),
			 LI("keep_days", a->cfg->keep_days));
}

/* After a snapshot (and its verify): retention, then the commands that waited. */
static void after_snapshot(struct agent *a, int ran_ok)
{
	if (ran_ok && a->active && !a->stopping)
		run_retention(a);
	if (a->waiting && !a->stopping)
		start_snapshot(a, "command");
	stop_kick(a);
}

/* ---- verify ---- */

static int vchild_out(void *arg, const void *buf, size_t n)
{
	struct agent *a = arg;
	size_t room = sizeof a->verify_out - 1 - a->verify_len;
	size_t take = n < room ? n : room;
	memcpy(a->verify_out + a->verify_len, buf, take);
	a->verify_len += take;
	a->verify_out[a->verify_len] = 0;
	return 0;
}

static void verify_audit(struct agent *a, int ok, const char *error, json_t *res)
{
	json_t *extra = json_pack("{s:s,s:s}", "snapshot_id", a->verify_id, "trigger", "serve");
	const char *keys[] = {"chain",       "chain_checked", "scratch_database", "scratch_dropped",
			      "duration_ms", "plain_size",    "audit_heads"};
	for (size_t i = 0; extra && res && i < sizeof keys / sizeof keys[0]; i++) {
		json_t *v = json_object_get(res, keys[i]);
		if (v)
			json_object_set(extra, keys[i], v);
	}
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "backup.verify";
	ev.outcome = ok ? "ok" : "error";
	ev.reason = ok ? NULL : error;
	ev.extra = extra;
	if (!extra || audit_emit(&a->producer, &ev, NULL, NULL) != 0)
		log_error("cannot emit the backup.verify audit event",
			  LS("snapshot_id", a->verify_id));
	json_decref(extra);
}

static void vchild_exit(void *arg)
{
	struct agent *a = arg;
	char why[CHILD_ERR_MAX + 128];
	json_error_t jerr;
	/* The last line of stdout is the result. */
	char *line = a->verify_out;
	for (char *p = a->verify_out; *p; p++)
		if (*p == '\n' && p[1])
			line = p + 1;
	json_t *res = json_loads(line, JSON_DISABLE_EOF_CHECK, &jerr);
	json_t *outcome = json_object_get(res, "outcome");
	int ok = child_succeeded(&a->vchild) && json_is_string(outcome) &&
		 strcmp(json_string_value(outcome), "ok") == 0;
	const char *error = NULL;
	if (!ok) {
		json_t *e = json_object_get(res, "error");
		if (json_is_string(e)) {
			error = json_string_value(e);
		} else {
			child_describe(&a->vchild, why, sizeof why);
			error = why;
		}
		log_error("snapshot verification failed", LS("snapshot_id", a->verify_id),
			  LS("error", error));
	} else {
		json_t *chain = json_object_get(res, "chain");
		log_info("snapshot verified", LS("snapshot_id", a->verify_id),
			 LS("chain", json_is_string(chain) ? json_string_value(chain) : ""));
	}
	metric_add(ok ? a->m_verify_ok : a->m_verify_error, 1);
	verify_audit(a, ok, error, res);
	json_decref(res);
	a->verifying = 0;
	after_snapshot(a, 1);
}

static int start_verify(struct agent *a, const char *id)
{
	snprintf(a->verify_id, sizeof a->verify_id, "%s", id);
	a->verify_len = 0;
	a->verify_out[0] = 0;
	/* Its own process: a restore of a large log takes minutes of blocking libpq and
	 * pipe writes, which must not stall this loop. It reads the same environment. */
	char *argv[] = {a->self_exe, "verify",     a->verify_id, "--format",
			"json",      "--no-audit", NULL};
	if (!a->vchild_up || child_spawn(&a->vchild, a->self_exe, argv, environ) != 0) {
		log_error("cannot start the verification of a snapshot", LS("snapshot_id", id));
		metric_add(a->m_verify_error, 1);
		verify_audit(a, 0, "cannot start backup-agent verify", NULL);
		return -1;
	}
	a->verifying = 1;
	log_info("verifying the snapshot", LS("snapshot_id", id), LI("pid", a->vchild.pid));
	return 0;
}

/* ---- the lock ---- */

static void lock_try(struct agent *a);
static void schedule_from_store(struct agent *a);

static void become_active(struct agent *a)
{
	a->active = 1;
	metric_set(a->m_active, 1);
	log_info("holding the backup lock: this copy is the active one",
		 LI("lock_key", a->cfg->lock_key));
	/* Only the holder may clear temporaries: another copy's snapshot may be writing
	 * one as long as it holds the lock. */
	store_remove_stale(&a->store);
	const char *topics[] = {GW_TOPIC_CONTROL};
	if (!a->subscribed) {
		if (kafka_consumer_subscribe(&a->consumer, topics, 1) == 0)
			a->subscribed = 1;
		else
			log_error("cannot subscribe to gw.control: commands will not be seen",
				  LS("topic", GW_TOPIC_CONTROL));
	}
	schedule_from_store(a);
	run_retention(a);
}

static void on_lock_lost(void *arg, const char *error)
{
	struct agent *a = arg;
	if (!a->active)
		return;
	a->active = 0;
	metric_set(a->m_active, 0);
	a->next_due_ms = 0;
	a->lock_next_ms = 0;
	log_error("lost the database connection holding the backup lock: standing by",
		  LS("error", error));
	if (a->subscribed) {
		rd_kafka_resp_err_t err = rd_kafka_unsubscribe(a->consumer.rk);
		if (err)
			log_error("cannot unsubscribe from gw.control",
				  LS("error", rd_kafka_err2str(err)));
		a->subscribed = 0;
	}
	if (snapshot_running(&a->snap) && a->snap.state != SNAP_DONE) {
		/* Another copy may take the lock now: two dumps at once is what the lock
		 * exists to prevent. The commands are handed back in on_snapshot_done. */
		snapshot_abort(&a->snap, "lost the backup lock");
	} else {
		struct agent_report tmp = {.cmds = a->waiting};
		report_release_cmds(&tmp, 1);
		tmp.cmds = a->next;
		report_release_cmds(&tmp, 1);
		a->waiting = a->next = NULL;
	}
}

static void on_lock_result(void *arg, PGresult *res, const char *error)
{
	struct agent *a = arg;
	if (!res) {
		log_warn("cannot ask for the backup lock: retrying", LS("error", error),
			 LI("retry_s", a->cfg->lock_retry_s));
		pgq_close(&a->lock);
		return;
	}
	if (a->stopping)
		return;
	if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
		become_active(a);
		pgq_watch(&a->lock, on_lock_lost);
		return;
	}
	if (!a->standby_logged)
		log_info("standing by: another backup-agent holds the backup lock",
			 LI("retry_s", a->cfg->lock_retry_s));
	a->standby_logged = 1;
}

static void on_lock_connected(void *arg, PGresult *res, const char *error)
{
	struct agent *a = arg;
	if (error) {
		log_warn("cannot connect for the backup lock: retrying", LS("error", error),
			 LI("retry_s", a->cfg->lock_retry_s));
		return;
	}
	lock_try(a);
}

static void lock_try(struct agent *a)
{
	a->lock_next_ms = wire_now_ms() + a->cfg->lock_retry_s * 1000;
	if (a->lock.connecting || a->lock.busy)
		return;
	if (!pgq_connected(&a->lock)) {
		pgq_close(&a->lock);
		if (pgq_connect(&a->lock, a->rt->base, a->cfg->url, LOCK_TIMEOUT_MS,
				on_lock_connected, a) != 0)
			log_warn("cannot connect for the backup lock: retrying",
				 LS("error", a->lock.error), LI("retry_s", a->cfg->lock_retry_s));
		return;
	}
	char sql[96];
	snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%lld)", a->cfg->lock_key);
	if (pgq_query(&a->lock, sql, LOCK_TIMEOUT_MS, on_lock_result) != 0) {
		log_warn("cannot ask for the backup lock: retrying", LS("error", a->lock.error));
		pgq_close(&a->lock);
	}
}

static void on_janitor(evutil_socket_t fd, short what, void *arg)
{
	struct agent *a = arg;
	if (a->stopping)
		return;
	if (!a->active) {
		if (wire_now_ms() >= a->lock_next_ms)
			lock_try(a);
		return;
	}
	if (a->next_due_ms == 0 || snapshot_running(&a->snap) || a->verifying)
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
	if (!running && !a->verifying)
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
	if (a->verifying) {
		if (now < a->stop_deadline_ms) {
			schedule_stop_step(a, a->stop_deadline_ms);
			return;
		}
		log_warn("stopping: the verification did not finish within GW_BACKUP_STOP_WAIT_MS; "
			 "killing it (a gw_verify_* scratch database may be left: drop it)",
			 LS("snapshot_id", a->verify_id));
		child_kill(&a->vchild);
		a->verifying = 0;
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
	/* Closing the session releases the advisory lock for a standby to take. */
	pgq_close(&a->lock);
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
	if (a->verifying && a->vchild.pid > 0) {
		/* verify drops its scratch database on SIGTERM, then exits. */
		log_info("stopping: asking the verification to stop",
			 LS("snapshot_id", a->verify_id));
		kill(a->vchild.pid, SIGTERM);
	}
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
	if (!a->active) {
		snprintf(why, whycap, "standby: another backup-agent holds the backup lock");
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
	a->m_active = metric_get(METRIC_GAUGE, "gw_backup_active", NULL,
				 "1 while this copy holds the backup lock (0: standby)");
	a->m_verify_ok = metric_get(METRIC_COUNTER, "gw_backup_verify_total", "outcome=\"ok\"",
				    "Snapshot verifications finished, by outcome");
	a->m_verify_error =
	    metric_get(METRIC_COUNTER, "gw_backup_verify_total", "outcome=\"error\"",
		       "Snapshot verifications finished, by outcome");
	a->m_retention_deleted = metric_get(METRIC_COUNTER, "gw_backup_retention_deleted_total",
					    NULL, "Snapshots deleted by retention");
	if (!a->m_ok || !a->m_error || !a->m_last_success || !a->m_last_duration || !a->m_running ||
	    !a->m_active || !a->m_verify_ok || !a->m_verify_error || !a->m_retention_deleted)
		return -1;
	ssize_t n = readlink("/proc/self/exe", a->self_exe, sizeof a->self_exe - 1);
	if (n <= 0) {
		log_error("cannot find our own executable (/proc/self/exe) to run verify",
			  LS("error", strerror(errno)));
		return -1;
	}
	a->self_exe[n] = 0;
	if (store_open(&a->store, cfg->dir, 1) != 0)
		return -1;
	a->snap_up = 1; /* snapshot_init leaves it safe to free even when it fails */
	if (snapshot_init(&a->snap, rt->base, &a->store, cfg->url, cfg->pg_dump, &cfg->key,
			  on_snapshot_done, a) != 0)
		return -1;
	a->vchild_up = 1; /* child_free is safe after a failed child_init */
	if (child_init(&a->vchild, rt->base, vchild_out, vchild_exit, a) != 0)
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
	/* gw.control is subscribed to once the lock is ours: a standby in the group would
	 * be handed commands it may not act on. */
	a->janitor = event_new(rt->base, -1, EV_PERSIST, on_janitor, a);
	a->stop_ev = event_new(rt->base, -1, 0, on_stop_step, a);
	struct timeval tv = {JANITOR_MS / 1000, (JANITOR_MS % 1000) * 1000};
	if (!a->janitor || !a->stop_ev || event_add(a->janitor, &tv) != 0) {
		log_error("cannot create timers");
		return -1;
	}
	metric_set(a->m_active, 0);
	log_info("backup-agent serving", LS("dir", cfg->dir), LS("pg_dump", cfg->pg_dump),
		 LS("group", cfg->group), LS("topic", GW_TOPIC_CONTROL), LS("key_id", cfg->key.id),
		 LI("verify", cfg->verify), LI("keep_last", cfg->keep_last),
		 LI("keep_days", cfg->keep_days));
	lock_try(a);
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
	if (a->vchild_up) {
		if (a->verifying)
			log_warn("leaving with a verification in progress: killing it (a "
				 "gw_verify_* scratch database may be left: drop it)",
				 LS("snapshot_id", a->verify_id));
		child_free(&a->vchild);
		a->vchild_up = 0;
	}
	pgq_close(&a->lock);
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
