/* The auditor's pipeline: gw.audit messages -> validated rows -> one INSERT per batch
 * -> offsets stored after COMMIT. While PostgreSQL is away the batch is kept, retried
 * with backoff, and consumption pauses once it is full. */
#ifndef GW_INGEST_H
#define GW_INGEST_H

#include "kafka.h"
#include "runtime.h"
#include "store.h"

#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdint.h>

struct ingest_slot;
struct metric;

/* A gw.audit partition we handed messages back on (paused and rewound). */
struct ingest_part {
	int32_t partition;
	int paused;
	int64_t rewind; /* the first offset handed back, fetched again after resume */
};

struct ingest_config {
	int batch_max;                    /* GW_AUDIT_BATCH */
	int flush_ms;                     /* GW_AUDIT_FLUSH_MS */
	int fetch_wait_ms;                /* GW_AUDITOR_FETCH_WAIT_MS */
	const char *group;                /* GW_AUDITOR_GROUP; borrowed, static or env storage */
	long long statement_ms;           /* GW_AUDITOR_STATEMENT_TIMEOUT_MS */
	const struct checkpoint_key *key; /* GW_AUDIT_SIGNING_KEY_FILE; borrowed, may be NULL */
	long long cp_events;              /* GW_AUDIT_CHECKPOINT_EVENTS */
	long long cp_ms;                  /* GW_AUDIT_CHECKPOINT_SECONDS, in ms */
};

/* One per `auditor serve`, owned by main. */
struct ingest {
	struct runtime *rt; /* borrowed */
	struct ingest_config cfg;
	struct kafka_consumer consumer;
	struct kafka_producer producer; /* dead letters only */
	struct store store;
	struct event *timer;        /* owned: the one timer (flush deadline, retry, idle check) */
	struct ingest_slot **batch; /* owned array of 2 * batch_max; listed slots owned here */
	int nbatch;
	size_t batch_bytes;
	/* The batch being written (store_insert_start .. on_db): same ownership as batch.
	 * At most one; the arrays swap when a write starts. */
	struct ingest_slot **inflight;
	int ninflight;
	size_t inflight_bytes;
	int64_t flush_t0;   /* when the write in flight (or the last one) started */
	struct event db_ev; /* the write in flight waits on the database socket */
	int db_ev_set;
	struct ingest_slot *dead; /* slots whose dead letter awaits its delivery report */
	int ndead;
	int64_t first_us;   /* arrival of the oldest batched event */
	int backoff_ms;     /* next retry delay; 0 while the database is healthy */
	int64_t last_db_us; /* last successful round trip */
	int db_up;
	int stopping;
	struct ingest_part *parts; /* owned */
	int nparts, capparts;
	struct auditor_row **rows; /* owned array of 2 * batch_max; points into batch slots */
	struct metric *m_written, *m_duplicates, *m_batches, *m_deadletter, *m_rejected,
	    *m_db_failures, *m_batch_seconds;
};

/* Connects Kafka (consumer in cfg->group on gw.audit, producer for dead letters) and
 * starts the timer. Takes ownership of db_url (may be NULL: GW_DATABASE_URL). The
 * database may be down: that is retried, not fatal. Returns 0 or -1 (logged). */
int ingest_init(struct ingest *in, struct runtime *rt, const struct ingest_config *cfg,
		char *db_url);
/* The runtime's hooks: graceful stop (SIGTERM) and /ready. */
void ingest_stop(void *arg);
int ingest_ready(void *arg, char *why, size_t whycap);
void ingest_free(struct ingest *in);

#endif
