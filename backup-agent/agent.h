/* `backup-agent serve`: snapshots on a timer and on gw.control {"command":"backup"},
 * one at a time, each audited as backup.snapshot; graceful stop lets a running pg_dump
 * finish for up to GW_BACKUP_STOP_WAIT_MS. */
#ifndef BACKUP_AGENT_H
#define BACKUP_AGENT_H

#include <stdint.h>

#include "kafka.h"
#include "metrics.h"
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
	struct event *janitor;                 /* 1 s: the interval schedule */
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
};

/* Sets everything up (store, snapshot machine, Kafka, metrics, timers). -1 logged:
 * the caller exits 1. */
int agent_init(struct agent *a, struct runtime *rt, const struct settings *cfg);
/* Closes what is still open; kills a pg_dump still running (second stop signal). */
void agent_free(struct agent *a);

#endif
