/* Retention of the compliance log: drops a month's partition of audit.audit_events once
 * the whole month is older than GW_AUDIT_RETENTION_DAYS and a verified backup covers it,
 * recording the cut for verify and auditing it; also creates partitions ahead. */
#ifndef GW_RETENTION_H
#define GW_RETENTION_H

#include "kafka.h"
#include "runtime.h"

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdint.h>

/* Months are UTC calendar months; month is 1..12 (values outside roll over years).
 * The first microsecond of the month, unix microseconds (may be negative). */
int64_t retention_month_start_us(int year, int month);
/* 1 when every instant of the month is older than now - days (its end <= the cutoff);
 * days <= 0 means keep forever: 0. */
int retention_month_expired(int year, int month, int64_t now_us, long long days);
/* "audit_events_YYYY_MM" -> year, month; -1 for any other name. */
int retention_parse_partition(const char *name, int *year, int *month);

/* One run's outcome, for the caller's metrics. */
struct retention_result {
	int dropped; /* partitions dropped (or, dry run, that would be) */
	int blocked; /* partitions past retention that are kept, each logged with why */
	long long rows_dropped;
};

/* Runs retention on c (the table owner: GW_DATABASE_ADMIN_URL). p produces the
 * audit.retention events and is required to drop anything (NULL: nothing is dropped,
 * say why). who is the principal written into the events. Prints a line per month past
 * retention to out when out is not NULL. 0, or -1 when the run failed (logged). */
int retention_run(PGconn *c, long long days, int dry_run, struct kafka_producer *p, const char *who,
		  FILE *out, struct retention_result *res);

/* Creates the partitions of this month and the next `ahead` months if missing. */
int retention_ensure_partitions(PGconn *c, int ahead);

/* `auditor retention [--dry-run]`: exit 0 done (kept months are not an error), 1 failed,
 * 2 usage. */
int retention_main(int argc, char **argv);

/* serve's periodic partition and retention job (one timer). It runs on the loop and
 * blocks it while it works (seconds at most: lock_timeout and statement_timeout bound
 * it); Kafka holds the events meanwhile. */
struct retention_janitor {
	struct runtime *rt;
	struct event *timer; /* owned */
	char *admin_url;     /* owned; wiped on free */
	long long days;
	struct kafka_producer producer; /* audit.retention events */
	int producer_up;
	struct metric *m_blocked, *m_dropped, *m_rows, *m_runs_failed, *m_last_run;
};

/* Takes admin_url. Reads GW_AUDIT_RETENTION_DAYS and GW_AUDIT_RETENTION_INTERVAL_S.
 * Runs the first job at once. -1 on failure (logged). */
int retention_janitor_start(struct retention_janitor *j, struct runtime *rt, char *admin_url);
void retention_janitor_free(struct retention_janitor *j);

/* GW_AUDIT_RETENTION_DAYS (0 = keep forever); -1 when invalid (logged). */
int retention_days_config(long long *days);

#endif
