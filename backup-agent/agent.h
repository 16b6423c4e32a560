/* `backup-agent serve`: one active copy per deployment (a PostgreSQL advisory lock; the
 * others stand by and retry), snapshots on a timer and on gw.control {"command":"backup"},
 * one at a time, each audited as backup.snapshot, then verified (a `backup-agent verify`
 * child, audited as backup.verify) and followed by retention (backup.retention per
 * deletion); graceful stop lets a running pg_dump or verify finish for up to
 * GW_BACKUP_STOP_WAIT_MS. */
#ifndef BACKUP_AGENT_H
#define BACKUP_AGENT_H

#include <limits.h>
#include <stdint.h>

#include "kafka.h"
#include "child.h"
#include "metrics.h"
#include "pgq.h"
#include "runtime.h"
#include "settings.h"
#include "snapshot.h"
#include "store.h"

#define AGENT_REQUESTED_BY_MAX 128

/* One gw.control command waiting for its snapshot. malloc'd in on_message; freed by its
 * work's release callback once every hold (ours, a dead letter's) is released. */
struct agent_cmd {
	struct kafka_work work;
	struct agent_cmd *next;
	char requested_by[AGENT_REQUESTED_BY_MAX + 1];
};

/* A finished snapshot's audit event on its way to the broker, with the commands it
 * answers (their offsets are stored once it is acknowledged). malloc'd when the snapshot
 * ends; freed in its delivery callback (or at close if the broker never answered). */
struct agent_report {
	struct kafka_done done;
	struct agent *a;
	struct agent_cmd *cmds;
	struct agent_report *next;
};

/* The service. Owned by main; cfg and rt are borrowed and outlive it. */
struct agent {
	struct runtime *rt;
	const struct settings *cfg;
	struct store store;
	struct snapshot snap;
	struct kafka_producer producer;
	struct kafka_consumer consumer;
	int snap_up, producer_up, consumer_up; /* initialised, not yet freed/closed */
	int subscribed;                        /* to gw.control: only while active */
	/* The advisory lock's session: holding it is being the active copy. */
	struct pgq lock;
	int active, standby_logged;
	int64_t lock_next_ms; /* standby: next attempt */
	/* The verify child (`backup-agent verify ID --format json --no-audit`). */
	struct child vchild;
	int vchild_up, verifying;
	char verify_id[MANIFEST_ID_MAX];
	char verify_out[4096];
	size_t verify_len;
	char self_exe[PATH_MAX];
	struct event *janitor;        /* 1 s: the interval schedule */
	struct event *stop_ev;        /* the shutdown sequence's next step (deadlines, wakeups) */
	struct agent_cmd *waiting;    /* answered by the running (or starting) snapshot */
	struct agent_cmd *next;       /* came after the running one's dump ended: the next one */
	struct agent_report *reports; /* audit events in flight */
	const char *trigger;          /* of the running snapshot: "interval" or "command" */
	int64_t next_due_ms;          /* 0: no timer */
	int64_t stop_deadline_ms;     /* stop: pg_dump is killed after this */
	int64_t drain_deadline_ms;    /* stop: audit events still unacknowledged are given up */
	int stopping, closed;
	struct metric *m_ok, *m_error, *m_last_success, *m_last_duration, *m_running;
	struct metric *m_active, *m_verify_ok, *m_verify_error, *m_retention_deleted;
};

/* Sets everything up (store, snapshot machine, Kafka, metrics, timers). -1 logged:
 * the caller exits 1. */
int agent_init(struct agent *a, struct runtime *rt, const struct settings *cfg);
/* Closes what is still open; kills a pg_dump still running (second stop signal). */
void agent_free(struct agent *a);

#endif
