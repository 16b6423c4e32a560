/* Retention of the compliance log (docs/auditor.md, "Retention"): which monthly
 * partitions may go, the cut records that let verify continue each chain, the
 * audit.retention events, and serve's periodic job that also creates partitions ahead. */
#include "retention.h"
#include "timearg.h"
#include "audit.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "pg.h"
#include "schema.h"
#include "wire.h"

#include <getopt.h>
#include <jansson.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PARTITIONS_AHEAD     2
#define LOCK_TIMEOUT_MS      5000
#define STATEMENT_TIMEOUT_MS 300000
#define DELIVERY_TIMEOUT_MS  15000
#define DAYS_MAX             100000

int64_t retention_month_start_us(int year, int month)
{
	long long y = year, m0 = (long long)month - 1;
	y += m0 >= 0 ? m0 / 12 : -((11 - m0) / 12);
	m0 -= (m0 >= 0 ? m0 / 12 : -((11 - m0) / 12)) * 12;
	return timearg_days_from_civil(y, (int)m0 + 1, 1) * 86400 * 1000000;
}

int retention_month_expired(int year, int month, int64_t now_us, long long days)
{
	if (days <= 0)
		return 0;
	int64_t end = retention_month_start_us(year, month + 1);
	return end <= now_us - (int64_t)days * 86400 * 1000000;
}

int retention_parse_partition(const char *name, int *year, int *month)
{
	static const char prefix[] = "audit_events_";
	size_t n = sizeof prefix - 1;
	if (strncmp(name, prefix, n) != 0 || strlen(name) != n + 7 || name[n + 4] != '_')
		return -1;
	int y = 0, m = 0;
	for (size_t i = 0; i < 7; i++) {
		char ch = name[n + i];
		if (i == 4)
			continue;
		if (ch < '0' || ch > '9')
			return -1;
		if (i < 4)
			y = y * 10 + (ch - '0');
		else
			m = m * 10 + (ch - '0');
	}
	if (m < 1 || m > 12)
		return -1;
	*year = y;
	*month = m;
	return 0;
}

int retention_days_config(long long *days)
{
	return config_int("GW_AUDIT_RETENTION_DAYS", 0, 0, DAYS_MAX, days);
}

/* ---- the plan ---- */

/* One chain's rows inside one month (or inside the set of months being dropped). */
struct chainstat {
	int32_t chain;
	long long rows, first, last;
	char last_hash[65];
};

enum month_state { MONTH_UNSEEN, MONTH_DROP, MONTH_KEEP };

/* A partition past retention. */
struct month {
	int year, mon;
	char name[64];
	long long rows, unchained;
	struct chainstat *c; /* owned */
	int nc;
	enum month_state state;
	char why[512];
};

struct head {
	int32_t chain;
	long long seq;
};

/* Everything one evaluation read; owned by retention_run's frame. */
struct plan {
	struct month *m; /* owned */
	int nm;
	int backup_found;
	char backup_event[33], backup_snapshot[128];
	struct head *heads; /* owned: the backup's chain heads */
	int nh;
	struct head *floors; /* owned: per chain the last seq already cut */
	int nf;
	int ndrop;
};

static void plan_free(struct plan *p)
{
	for (int i = 0; i < p->nm; i++)
		free(p->m[i].c);
	free(p->m);
	free(p->heads);
	free(p->floors);
	memset(p, 0, sizeof *p);
}

static PGresult *q(PGconn *c, const char *sql, int n, const char *const *params,
		   ExecStatusType want, const char *what)
{
	PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != want) {
		log_error("retention query failed", LS("step", what),
			  LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		return NULL;
	}
	return r;
}

static int cmd(PGconn *c, const char *sql, const char *what)
{
	PGresult *r = q(c, sql, 0, NULL, PGRES_COMMAND_OK, what);
	PQclear(r);
	return r ? 0 : -1;
}

/* A fixed multi-statement script (no parameters). */
static int simple(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
	if (!ok)
		log_error("retention statement failed", LS("error", PQresultErrorMessage(r)));
	PQclear(r);
	return ok ? 0 : -1;
}

static long long ll(PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static const struct head *find_head(const struct head *h, int n, int32_t chain)
{
	for (int i = 0; i < n; i++)
		if (h[i].chain == chain)
			return &h[i];
	return NULL;
}

/* The partitions past retention, oldest first. */
static int load_months(PGconn *c, int64_t now_us, long long days, struct plan *p)
{
	PGresult *r = q(c,
			"SELECT k.relname FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid "
			"WHERE i.inhparent = 'audit.audit_events'::regclass ORDER BY k.relname",
			0, NULL, PGRES_TUPLES_OK, "list partitions");
	if (!r)
		return -1;
	int n = PQntuples(r);
	p->m = calloc((size_t)(n ? n : 1), sizeof *p->m);
	if (!p->m) {
		PQclear(r);
		log_error("out of memory");
		return -1;
	}
	for (int i = 0; i < n; i++) {
		const char *name = PQgetvalue(r, i, 0);
		int y, m;
		if (retention_parse_partition(name, &y, &m) != 0) {
			log_warn(
			    "partition not named audit_events_YYYY_MM: retention leaves it alone",
			    LS("partition", name));
			continue;
		}
		if (!retention_month_expired(y, m, now_us, days))
			continue;
		struct month *mo = &p->m[p->nm++];
		mo->year = y;
		mo->mon = m;
		snprintf(mo->name, sizeof mo->name, "%s", name);
	}
	PQclear(r);
	return 0;
}

/* The newest backup.verify event that says ok, that auditor verify ran on the restored
 * copy, and that carries the snapshot's chain heads. serve's events name the snapshot
 * snapshot_id, the CLI's id. */
static int load_backup(PGconn *c, struct plan *p)
{
	PGresult *r =
	    q(c,
	      "SELECT event_id, coalesce(event->'extra'->>'snapshot_id', event->'extra'->>'id'), "
	      "(event->'extra'->'audit_heads')::text FROM audit.audit_events "
	      "WHERE event_type = 'backup.verify' AND service = 'backup-agent' AND outcome = 'ok' "
	      "AND "
	      "event->'extra'->>'chain_checked' = 'true' AND "
	      "json_typeof(event->'extra'->'audit_heads') = 'array' "
	      "ORDER BY event_time DESC LIMIT 1",
	      0, NULL, PGRES_TUPLES_OK, "find the newest verified backup");
	if (!r)
		return -1;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return 0;
	}
	json_error_t jerr;
	json_t *heads = json_loads(PQgetvalue(r, 0, 2), 0, &jerr);
	size_t n = json_array_size(heads);
	p->heads = calloc(n ? n : 1, sizeof *p->heads);
	if (!p->heads) {
		json_decref(heads);
		PQclear(r);
		log_error("out of memory");
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *h = json_array_get(heads, i);
		const char *table = json_string_value(json_object_get(h, "table"));
		const char *chain = json_string_value(json_object_get(h, "chain_id"));
		const char *seq = json_string_value(json_object_get(h, "seq"));
		if (!table || strcmp(table, "audit.audit_events") != 0 || !chain || !seq)
			continue;
		p->heads[p->nh].chain = (int32_t)strtol(chain, NULL, 10);
		p->heads[p->nh].seq = strtoll(seq, NULL, 10);
		p->nh++;
	}
	json_decref(heads);
	p->backup_found = 1;
	snprintf(p->backup_event, sizeof p->backup_event, "%s", PQgetvalue(r, 0, 0));
	snprintf(p->backup_snapshot, sizeof p->backup_snapshot, "%s", PQgetvalue(r, 0, 1));
	PQclear(r);
	return 0;
}

static int load_floors(PGconn *c, struct plan *p)
{
	PGresult *r = q(c,
			"SELECT chain_id, max(last_seq) FROM audit.retention_chain_cuts "
			"GROUP BY chain_id",
			0, NULL, PGRES_TUPLES_OK, "read earlier cuts");
	if (!r)
		return -1;
	int n = PQntuples(r);
	p->floors = calloc((size_t)(n ? n : 1), sizeof *p->floors);
	if (!p->floors) {
		PQclear(r);
		log_error("out of memory");
		return -1;
	}
	for (int i = 0; i < n; i++) {
		p->floors[i].chain = (int32_t)ll(r, i, 0);
		p->floors[i].seq = ll(r, i, 1);
	}
	p->nf = n;
	PQclear(r);
	return 0;
}

/* Rows per chain in one partition. The name passed the audit_events_YYYY_MM check. */
static int stat_month(PGconn *c, struct month *mo)
{
	char sql[256];
	snprintf(sql, sizeof sql,
		 "SELECT chain_id, count(*), min(seq), max(seq) FROM audit.%s GROUP BY chain_id "
		 "ORDER BY chain_id",
		 mo->name);
	PGresult *r = q(c, sql, 0, NULL, PGRES_TUPLES_OK, "count a month's rows");
	if (!r)
		return -1;
	int n = PQntuples(r);
	mo->c = calloc((size_t)(n ? n : 1), sizeof *mo->c);
	if (!mo->c) {
		PQclear(r);
		log_error("out of memory");
		return -1;
	}
	for (int i = 0; i < n; i++) {
		long long rows = ll(r, i, 1);
		mo->rows += rows;
		if (PQgetisnull(r, i, 0)) {
			mo->unchained += rows;
			continue;
		}
		struct chainstat *s = &mo->c[mo->nc++];
		s->chain = (int32_t)ll(r, i, 0);
		s->rows = rows;
		s->first = ll(r, i, 2);
		s->last = ll(r, i, 3);
	}
	PQclear(r);
	return 0;
}

/* Whether the backup's heads cover every chain's highest seq in the month: cheap (a skip
 * scan of the (chain_id, seq) index, then one max per chain), so a month a backup does
 * not cover yet costs no scan of its rows. 1 covered, 0 not (why set), -1 error. */
static int covered(PGconn *c, const struct plan *p, struct month *mo)
{
	char sql[600];
	snprintf(sql, sizeof sql,
		 "WITH RECURSIVE k AS (SELECT min(chain_id) AS id FROM audit.%1$s UNION ALL "
		 "SELECT (SELECT min(chain_id) FROM audit.%1$s WHERE chain_id > k.id) FROM k "
		 "WHERE k.id IS NOT NULL) SELECT id, (SELECT max(seq) FROM audit.%1$s WHERE "
		 "chain_id = k.id) FROM k WHERE id IS NOT NULL",
		 mo->name);
	PGresult *r = q(c, sql, 0, NULL, PGRES_TUPLES_OK, "read a month's chain heads");
	if (!r)
		return -1;
	int ok = 1;
	for (int i = 0; i < PQntuples(r) && ok; i++) {
		int32_t chain = (int32_t)ll(r, i, 0);
		long long last = ll(r, i, 1);
		const struct head *h = find_head(p->heads, p->nh, chain);
		if (!h || h->seq < last) {
			snprintf(
			    mo->why, sizeof mo->why,
			    "not covered by the newest verified backup (snapshot %s): chain %d "
			    "has rows up to seq %lld here, the backup's head is %lld",
			    p->backup_snapshot, (int)chain, last, h ? h->seq : 0);
			ok = 0;
		}
	}
	PQclear(r);
	return ok;
}

static struct chainstat *acc_get(struct chainstat **acc, int *n, int *cap, int32_t chain)
{
	for (int i = 0; i < *n; i++)
		if ((*acc)[i].chain == chain)
			return &(*acc)[i];
	if (*n == *cap) {
		int nc = *cap ? *cap * 2 : 64;
		struct chainstat *na = realloc(*acc, (size_t)nc * sizeof *na);
		if (!na)
			return NULL;
		*acc = na;
		*cap = nc;
	}
	struct chainstat *s = &(*acc)[(*n)++];
	memset(s, 0, sizeof *s);
	s->chain = chain;
	return s;
}

/* Checks the accumulated set against the rest of its chain. 0: the set holds exactly
 * seqs floor+1 .. last of every chain and each chain keeps a newer row; 1: not yet
 * (why says which chain), the next month may complete it; 2: never (seqs are missing:
 * a deletion retention must not launder); -1: error. */
static int check_set(PGconn *c, const struct plan *p, const struct chainstat *acc, int nacc,
		     char *why, size_t whycap)
{
	int newer_missing = -1;
	long long *totals = calloc((size_t)(nacc ? nacc : 1), sizeof *totals);
	if (!totals) {
		log_error("out of memory");
		return -1;
	}
	/* Damage first, in every chain: it must never be hidden behind a reason to wait. */
	for (int i = 0; i < nacc; i++) {
		const struct chainstat *s = &acc[i];
		const struct head *f = find_head(p->floors, p->nf, s->chain);
		long long floor = f ? f->seq : 0;
		char ch[16], lo[24], hi[24];
		snprintf(ch, sizeof ch, "%d", (int)s->chain);
		snprintf(lo, sizeof lo, "%lld", floor);
		snprintf(hi, sizeof hi, "%lld", s->last);
		const char *params[] = {ch, lo, hi};
		PGresult *r = q(c,
				"SELECT count(*), (SELECT seq FROM audit.audit_events WHERE "
				"chain_id = $1 AND seq > $3 LIMIT 1) FROM audit.audit_events WHERE "
				"chain_id = $1 AND seq > $2 AND seq <= $3",
				3, params, PGRES_TUPLES_OK, "check a chain's seqs");
		if (!r) {
			free(totals);
			return -1;
		}
		totals[i] = ll(r, 0, 0);
		if (PQgetisnull(r, 0, 1) && newer_missing < 0)
			newer_missing = i;
		PQclear(r);
		if (totals[i] != s->last - floor || s->first <= floor) {
			snprintf(why, whycap,
				 "chain %d does not hold every seq from %lld to %lld (%lld rows): "
				 "run `auditor verify`; retention never drops a damaged chain",
				 (int)s->chain, floor + 1, s->last, totals[i]);
			free(totals);
			return 2;
		}
	}
	int rc = 0;
	for (int i = 0; i < nacc && rc == 0; i++) {
		const struct chainstat *s = &acc[i];
		if (totals[i] != s->rows) {
			snprintf(
			    why, whycap,
			    "chain %d has %lld rows up to seq %lld in newer months (events that "
			    "arrived late): this month goes together with the next one",
			    (int)s->chain, totals[i] - s->rows, s->last);
			rc = 1;
		}
	}
	if (rc == 0 && newer_missing >= 0) {
		snprintf(why, whycap,
			 "chain %d's newest row (seq %lld) is in this month and the writer "
			 "continues the chain from it: kept until the chain moves on",
			 (int)acc[newer_missing].chain, acc[newer_missing].last);
		rc = 1;
	}
	free(totals);
	return rc;
}

/* SHARE on the partitions past retention: no row can be added to them (a late event's
 * insert waits) while they are counted; reads and the writer's other months go on. */
static int lock_months(PGconn *c, const struct plan *p)
{
	size_t cap = 64 + (size_t)p->nm * 80, len = 0;
	char *sql = malloc(cap);
	if (!sql) {
		log_error("out of memory");
		return -1;
	}
	len += (size_t)snprintf(sql + len, cap - len, "LOCK TABLE ");
	for (int k = 0; k < p->nm; k++)
		len += (size_t)snprintf(sql + len, cap - len, "%saudit.%s", k ? ", " : "",
					p->m[k].name);
	snprintf(sql + len, cap - len, " IN SHARE MODE");
	int rc = cmd(c, sql, "lock the months past retention");
	free(sql);
	return rc;
}

/* Decides which partitions past retention go: the longest run of the oldest ones that
 * the newest verified backup covers and whose rows are, per chain, a whole prefix of
 * what remains. */
static int evaluate(PGconn *c, int64_t now_us, long long days, int lock, struct plan *p)
{
	if (load_months(c, now_us, days, p) != 0)
		return -1;
	if (p->nm == 0)
		return 0;
	if (lock && lock_months(c, p) != 0)
		return -1;
	if (load_backup(c, p) != 0 || load_floors(c, p) != 0)
		return -1;
	struct chainstat *acc = NULL;
	int nacc = 0, capacc = 0, drop_upto = -1, stop = 0, rc = 0;
	for (int k = 0; k < p->nm && !stop; k++) {
		struct month *mo = &p->m[k];
		if (!p->backup_found) {
			snprintf(mo->why, sizeof mo->why,
				 "no verified backup: no backup.verify event with outcome ok, "
				 "chain_checked and audit_heads in the log");
			continue;
		}
		int cov = covered(c, p, mo);
		if (cov < 0 || (cov == 1 && stat_month(c, mo) != 0)) {
			rc = -1;
			break;
		}
		if (cov == 0)
			break;
		for (int i = 0; i < mo->nc && !stop; i++) {
			const struct chainstat *s = &mo->c[i];
			struct chainstat *a = acc_get(&acc, &nacc, &capacc, s->chain);
			if (!a) {
				log_error("out of memory");
				rc = -1;
				stop = 1;
				break;
			}
			if (a->rows == 0 || s->first < a->first)
				a->first = s->first;
			if (s->last > a->last)
				a->last = s->last;
			a->rows += s->rows;
		}
		if (stop)
			break;
		int st = check_set(c, p, acc, nacc, mo->why, sizeof mo->why);
		if (st < 0)
			rc = -1;
		if (st == 0)
			drop_upto = k;
		if (st < 0 || st == 2)
			break;
	}
	free(acc);
	if (rc != 0)
		return -1;
	for (int k = 0; k < p->nm; k++) {
		struct month *mo = &p->m[k];
		if (k <= drop_upto) {
			mo->state = MONTH_DROP;
			p->ndrop++;
		} else {
			mo->state = MONTH_KEEP;
			if (!mo->why[0])
				snprintf(mo->why, sizeof mo->why, "an older month is kept");
		}
	}
	return 0;
}

/* ---- dropping ---- */

/* Delivery of one run's events. Heap-allocated and shared: the run holds one reference
 * and each produced event one, so a report arriving after the run gave up (and rolled
 * back) still finds it; the last holder frees it. */
struct delivery {
	struct kafka_done done; /* first: the callback casts back */
	int refs, pending, failed;
};

static void delivery_unref(struct delivery *dl)
{
	if (--dl->refs == 0)
		free(dl);
}

static void delivered(struct kafka_done *d, rd_kafka_resp_err_t err)
{
	struct delivery *dl = (struct delivery *)d;
	dl->pending--;
	if (err)
		dl->failed++;
	delivery_unref(dl);
}

/* Fills each chain's last_hash for the cut record. */
static int last_hashes(PGconn *c, struct month *mo)
{
	char sql[200];
	snprintf(sql, sizeof sql, "SELECT hash FROM audit.%s WHERE chain_id = $1 AND seq = $2",
		 mo->name);
	for (int i = 0; i < mo->nc; i++) {
		char ch[16], seq[24];
		snprintf(ch, sizeof ch, "%d", (int)mo->c[i].chain);
		snprintf(seq, sizeof seq, "%lld", mo->c[i].last);
		const char *params[] = {ch, seq};
		PGresult *r = q(c, sql, 2, params, PGRES_TUPLES_OK, "read a chain's last hash");
		if (!r)
			return -1;
		if (PQntuples(r) != 1) {
			PQclear(r);
			log_error("a chain's last row vanished under the lock",
				  LS("partition", mo->name));
			return -1;
		}
		snprintf(mo->c[i].last_hash, sizeof mo->c[i].last_hash, "%s", PQgetvalue(r, 0, 0));
		PQclear(r);
	}
	return 0;
}

/* The audit.retention event of one month (malloc'd JSON, event id in id). */
static char *month_event(const struct plan *p, const struct month *mo, long long days,
			 const char *who, char id[33])
{
	json_t *chains = json_array();
	for (int i = 0; chains && i < mo->nc; i++) {
		const struct chainstat *s = &mo->c[i];
		json_array_append_new(chains,
				      json_pack("{s:i,s:I,s:I,s:s,s:I}", "chain_id", (int)s->chain,
						"first_seq", (json_int_t)s->first, "last_seq",
						(json_int_t)s->last, "last_hash", s->last_hash,
						"rows", (json_int_t)s->rows));
	}
	char month[16];
	snprintf(month, sizeof month, "%04d-%02d", mo->year, mo->mon);
	char partition[80];
	snprintf(partition, sizeof partition, "audit.%s", mo->name);
	json_t *extra =
	    chains ? json_pack("{s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:o}", "month", month, "partition",
			       partition, "rows", (json_int_t)mo->rows, "unchained_rows",
			       (json_int_t)mo->unchained, "retention_days", (json_int_t)days,
			       "backup_snapshot_id", p->backup_snapshot, "backup_event_id",
			       p->backup_event, "chains", chains)
		   : NULL;
	if (!extra)
		return NULL;
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = "audit.retention";
	ev.outcome = "ok";
	ev.principal = who;
	ev.extra = extra;
	char *js = audit_event_json(&ev, id);
	json_decref(extra);
	return js;
}

static int record_cut(PGconn *c, const struct plan *p, const struct month *mo, long long days,
		      const char *event_id)
{
	char month[16], rows[24], unch[24], d[24];
	snprintf(month, sizeof month, "%04d-%02d-01", mo->year, mo->mon);
	snprintf(rows, sizeof rows, "%lld", mo->rows);
	snprintf(unch, sizeof unch, "%lld", mo->unchained);
	snprintf(d, sizeof d, "%lld", days);
	const char *params[] = {month,           mo->name, rows, unch, d, p->backup_snapshot,
				p->backup_event, event_id};
	PGresult *r = q(c,
			"INSERT INTO audit.retention_cuts (month, partition_name, rows, "
			"unchained_rows, retention_days, backup_snapshot_id, backup_event_id, "
			"event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING cut_id",
			8, params, PGRES_TUPLES_OK, "record the cut");
	if (!r)
		return -1;
	char cut[24];
	snprintf(cut, sizeof cut, "%s", PQgetvalue(r, 0, 0));
	PQclear(r);
	for (int i = 0; i < mo->nc; i++) {
		const struct chainstat *s = &mo->c[i];
		char ch[16], first[24], last[24], n[24];
		snprintf(ch, sizeof ch, "%d", (int)s->chain);
		snprintf(first, sizeof first, "%lld", s->first);
		snprintf(last, sizeof last, "%lld", s->last);
		snprintf(n, sizeof n, "%lld", s->rows);
		const char *cp[] = {cut, ch, first, last, s->last_hash, n};
		r = q(c,
		      "INSERT INTO audit.retention_chain_cuts (cut_id, chain_id, first_seq, "
		      "last_seq, last_hash, rows) VALUES ($1, $2, $3, $4, $5, $6)",
		      6, cp, PGRES_COMMAND_OK, "record a chain's cut");
		if (!r)
			return -1;
		PQclear(r);
	}
	return 0;
}

/* Under the lock, each month to drop: its cut recorded, its event produced, its
 * partition dropped. */
static int drop_each(PGconn *c, struct plan *p, long long days, struct kafka_producer *kp,
		     const char *who, struct delivery *dl)
{
	for (int k = 0; k < p->nm; k++) {
		struct month *mo = &p->m[k];
		if (mo->state != MONTH_DROP)
			continue;
		char id[33];
		if (last_hashes(c, mo) != 0)
			return -1;
		char *js = month_event(p, mo, days, who, id);
		if (!js) {
			log_error("out of memory");
			return -1;
		}
		char sql[128];
		snprintf(sql, sizeof sql, "DROP TABLE audit.%s", mo->name);
		if (record_cut(c, p, mo, days, id) != 0 || cmd(c, sql, "drop the partition") != 0) {
			free(js);
			return -1;
		}
		rd_kafka_headers_t *h = rd_kafka_headers_new(2);
		struct gw_meta meta;
		memset(&meta, 0, sizeof meta);
		wire_encode(&meta, 0, h);
		rd_kafka_resp_err_t err =
		    kafka_produce(kp, GW_TOPIC_AUDIT, RD_KAFKA_PARTITION_UA, id, strlen(id), js,
				  strlen(js), h, NULL, &dl->done);
		free(js);
		if (err) {
			log_error("cannot produce the audit.retention event: nothing is dropped",
				  LS("partition", mo->name), LS("error", rd_kafka_err2str(err)));
			return -1;
		}
		dl->refs++;
		dl->pending++;
	}
	return 0;
}

/* Records every cut, produces the events, drops the partitions, then waits for Kafka
 * to acknowledge every event; the caller commits only on 0. A drop is never committed
 * without its event acknowledged. */
static int drop_months(PGconn *c, struct plan *p, long long days, struct kafka_producer *kp,
		       const char *who)
{
	struct delivery *dl = calloc(1, sizeof *dl);
	if (!dl) {
		log_error("out of memory");
		return -1;
	}
	dl->done.fn = delivered;
	dl->refs = 1;
	int rc = drop_each(c, p, days, kp, who, dl);
	if (rc == 0) {
		rd_kafka_flush(kp->rk, DELIVERY_TIMEOUT_MS);
		if (dl->pending > 0 || dl->failed > 0) {
			log_error("audit.retention events not acknowledged by Kafka: nothing is "
				  "dropped",
				  LI("pending", dl->pending), LI("failed", dl->failed));
			rc = -1;
		}
	}
	delivery_unref(dl);
	return rc;
}

static void report(const struct plan *p, int dry_run, FILE *out, struct retention_result *res)
{
	for (int k = 0; k < p->nm; k++) {
		const struct month *mo = &p->m[k];
		char month[16];
		snprintf(month, sizeof month, "%04d-%02d", mo->year, mo->mon);
		if (mo->state == MONTH_DROP) {
			res->dropped++;
			res->rows_dropped += mo->rows;
			log_info(
			    dry_run ? "retention would drop a month" : "retention dropped a month",
			    LS("month", month), LS("partition", mo->name), LI("rows", mo->rows),
			    LS("backup_snapshot_id", p->backup_snapshot));
			if (out)
				fprintf(out, "%s %s audit.%s rows=%lld backup=%s\n",
					dry_run ? "would-drop" : "dropped", month, mo->name,
					mo->rows, p->backup_snapshot);
		} else {
			res->blocked++;
			log_warn("retention keeps a month past retention", LS("month", month),
				 LS("partition", mo->name), LS("why", mo->why));
			if (out)
				fprintf(out, "kept %s audit.%s: %s\n", month, mo->name, mo->why);
		}
	}
}

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int retention_run(PGconn *c, long long days, int dry_run, struct kafka_producer *kp,
		  const char *who, FILE *out, struct retention_result *res)
{
	memset(res, 0, sizeof *res);
	if (days <= 0)
		return 0;
	int version = pg_schema_version(c, "audit");
	if (version < SCHEMA_VERSION) {
		log_error("audit schema too old for retention: run `auditor migrate`",
			  LI("have", version), LI("need", SCHEMA_VERSION));
		return -1;
	}
	int64_t now = now_us();
	struct plan p = {0};
	char sql[160];
	/* First look without locks: most runs drop nothing and must not stall the writer. */
	if (cmd(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "begin") != 0)
		return -1;
	int rc = evaluate(c, now, days, 0, &p);
	cmd(c, rc == 0 ? "COMMIT" : "ROLLBACK", "end");
	if (rc != 0)
		goto out;
	if (p.ndrop == 0 || dry_run || !kp) {
		if (p.ndrop > 0 && !dry_run) {
			for (int k = 0; k < p.nm; k++)
				if (p.m[k].state == MONTH_DROP) {
					p.m[k].state = MONTH_KEEP;
					snprintf(
					    p.m[k].why, sizeof p.m[k].why,
					    "no Kafka producer (GW_KAFKA_BROKERS) to audit the "
					    "drop");
				}
			p.ndrop = 0;
		}
		report(&p, dry_run, out, res);
		goto out;
	}
	/* Then again with the old months locked against inserts, so no row moves between
	 * the check and the drop; the parent's ACCESS EXCLUSIVE lock (which stops the
	 * writer) is taken only for the drop itself. Each lock waits at most LOCK_TIMEOUT_MS
	 * (a long reader holds it off: try next time). */
	plan_free(&p);
	snprintf(sql, sizeof sql, "SET LOCAL lock_timeout = %d; SET LOCAL statement_timeout = %d",
		 LOCK_TIMEOUT_MS, STATEMENT_TIMEOUT_MS);
	if (cmd(c, "BEGIN", "begin") != 0 || simple(c, sql) != 0 ||
	    simple(c, "SELECT pg_advisory_xact_lock(hashtext('gw-audit-retention'))") != 0 ||
	    evaluate(c, now, days, 1, &p) != 0 ||
	    (p.ndrop > 0 && (cmd(c, "LOCK TABLE ONLY audit.audit_events IN ACCESS EXCLUSIVE MODE",
				 "lock the table") != 0 ||
			     drop_months(c, &p, days, kp, who) != 0)) ||
	    cmd(c, "COMMIT", "commit") != 0) {
		cmd(c, "ROLLBACK", "rollback");
		rc = -1;
		goto out;
	}
	report(&p, 0, out, res);
out:
	plan_free(&p);
	return rc;
}

int retention_ensure_partitions(PGconn *c, int ahead)
{
	char n[16];
	snprintf(n, sizeof n, "%d", ahead);
	const char *params[] = {n};
	PGresult *r = q(c,
			"SELECT audit.ensure_month_partition(now() + make_interval(months => i)) "
			"FROM generate_series(0, $1::int) AS i",
			1, params, PGRES_TUPLES_OK, "create partitions ahead");
	PQclear(r);
	return r ? 0 : -1;
}

/* ---- `auditor retention` ---- */

static void usage(FILE *f)
{
	fputs("usage: auditor retention [--dry-run]\n"
	      "  Drops each monthly partition of audit.audit_events whose whole month is older\n"
	      "  than GW_AUDIT_RETENTION_DAYS and that the newest verified backup covers;\n"
	      "  records the cut (audit.retention_cuts) and emits an audit.retention event per\n"
	      "  month. Also creates this month's and the next two months' partitions.\n"
	      "  Needs GW_DATABASE_ADMIN_URL (the table owner) and GW_KAFKA_BROKERS.\n"
	      "  --dry-run  say what would be dropped and why the rest is kept; change nothing\n"
	      "  exit: 0 done (kept months are listed, not an error), 1 failed, 2 usage\n",
	      f);
}

int retention_main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"dry-run", no_argument, NULL, 'n'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int dry_run = 0, ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'n': dry_run = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	long long days;
	char *url = NULL;
	if (retention_days_config(&days) != 0 ||
	    config_secret("GW_DATABASE_ADMIN_URL", &url, NULL) != 0)
		return 1;
	if (!url) {
		log_error(
		    "GW_DATABASE_ADMIN_URL (or _FILE) is not set: retention drops partitions, "
		    "which only the audit tables' owner may do");
		return 1;
	}
	PGconn *c = pg_connect(url, "auditor");
	explicit_bzero(url, strlen(url));
	free(url);
	if (!c)
		return 1;
	int rc = 1;
	struct event_base *base = NULL;
	static struct kafka_producer kp;
	int kp_up = 0;
	if (!dry_run && retention_ensure_partitions(c, PARTITIONS_AHEAD) != 0)
		goto out;
	if (days == 0) {
		printf("GW_AUDIT_RETENTION_DAYS is 0: the log is kept forever, nothing to drop\n");
		rc = 0;
		goto out;
	}
	if (!dry_run) {
		if (!config_str("GW_KAFKA_BROKERS", NULL)) {
			log_error(
			    "GW_KAFKA_BROKERS is not set: every drop is audited on gw.audit, so "
			    "nothing can be dropped without it (--dry-run works without)");
			goto out;
		}
		base = event_base_new();
		if (!base || kafka_producer_init(&kp, base, config_instance("auditor")) != 0) {
			log_error("cannot start the Kafka producer for the audit.retention events");
			goto out;
		}
		kp_up = 1;
	}
	audit_set_service("auditor");
	struct passwd *pw = getpwuid(geteuid());
	struct retention_result res;
	if (retention_run(c, days, dry_run, kp_up ? &kp : NULL,
			  pw && pw->pw_name ? pw->pw_name : "unknown", stdout, &res) != 0)
		goto out;
	printf("%s: %d month%s %s, %d past retention kept\n", dry_run ? "dry run" : "done",
	       res.dropped, res.dropped == 1 ? "" : "s", dry_run ? "would be dropped" : "dropped",
	       res.blocked);
	rc = fflush(stdout) == 0 ? 0 : 1;
out:
	if (kp_up && kafka_producer_close(&kp, DELIVERY_TIMEOUT_MS) > 0)
		rc = 1;
	if (base)
		event_base_free(base);
	PQfinish(c);
	return rc;
}

/* ---- serve's janitor ---- */

static void janitor_run(evutil_socket_t fd, short what, void *arg)
{
	struct retention_janitor *j = arg;
	(void)fd;
	(void)what;
	if (j->rt->stopping)
		return;
	PGconn *c = pg_connect(j->admin_url, "auditor");
	if (!c) {
		metric_add(j->m_runs_failed, 1);
		return;
	}
	int failed = retention_ensure_partitions(c, PARTITIONS_AHEAD) != 0;
	if (j->days > 0) {
		struct retention_result res;
		if (retention_run(c, j->days, 0, j->producer_up ? &j->producer : NULL, "auditor",
				  NULL, &res) == 0) {
			metric_set(j->m_blocked, res.blocked);
			metric_add(j->m_dropped, res.dropped);
			metric_add(j->m_rows, (double)res.rows_dropped);
		} else {
			failed = 1;
		}
	}
	PQfinish(c);
	if (failed)
		metric_add(j->m_runs_failed, 1);
	else
		metric_set(j->m_last_run, (double)time(NULL));
}

int retention_janitor_start(struct retention_janitor *j, struct runtime *rt, char *admin_url)
{
	long long interval;
	memset(j, 0, sizeof *j);
	j->rt = rt;
	j->admin_url = admin_url;
	if (retention_days_config(&j->days) != 0 ||
	    config_int("GW_AUDIT_RETENTION_INTERVAL_S", 3600, 10, 86400 * 7, &interval) != 0)
		return -1;
	j->m_blocked = metric_get(METRIC_GAUGE, "gw_audit_retention_blocked", NULL,
				  "Monthly partitions past retention kept at the last run (no "
				  "covering verified backup, or chains not ready)");
	j->m_dropped = metric_get(METRIC_COUNTER, "gw_audit_retention_dropped_total", NULL,
				  "Monthly partitions dropped by retention");
	j->m_rows = metric_get(METRIC_COUNTER, "gw_audit_retention_rows_dropped_total", NULL,
			       "Rows in the partitions dropped by retention");
	j->m_runs_failed = metric_get(METRIC_COUNTER, "gw_audit_retention_failures_total", NULL,
				      "Partition/retention runs that failed (logged)");
	j->m_last_run =
	    metric_get(METRIC_GAUGE, "gw_audit_retention_last_run_timestamp_seconds", NULL,
		       "Unix time of the last successful partition/retention run");
	audit_set_service("auditor");
	if (j->days > 0) {
		if (kafka_producer_init(&j->producer, rt->base, config_instance("auditor")) != 0)
			return -1;
		j->producer_up = 1;
	}
	j->timer = event_new(rt->base, -1, EV_PERSIST, janitor_run, j);
	struct timeval tv = {.tv_sec = interval};
	if (!j->timer || event_add(j->timer, &tv) != 0) {
		log_error("cannot start the retention timer");
		return -1;
	}
	log_info("partition and retention job", LI("retention_days", j->days),
		 LI("interval_s", interval));
	janitor_run(-1, 0, j);
	return 0;
}

void retention_janitor_free(struct retention_janitor *j)
{
	if (j->timer)
		event_free(j->timer);
	if (j->producer_up)
		kafka_producer_close(&j->producer, DELIVERY_TIMEOUT_MS);
	if (j->admin_url) {
		explicit_bzero(j->admin_url, strlen(j->admin_url));
		free(j->admin_url);
	}
	memset(j, 0, sizeof *j);
}
