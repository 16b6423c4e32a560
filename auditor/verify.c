/* Chain verification. Rows are streamed per chain in seq order through a cursor in one
 * read-only snapshot, so memory does not grow with the table. Each row's own hash is
 * recomputed (a mismatch: altered); a seq gap names deleted rows; where a row's
 * prev_hash does not match the row before it, targeted lookups by hash find where its
 * true neighbours sit, which tells a reordered row from an inserted one. */
#include "verify.h"
#include "auditor_event.h"
#include "chain.h"
#include "checkpoint.h"
#include "config.h"
#include "log.h"
#include "pg.h"
#include "timearg.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FETCH_ROWS        5000
#define FINDINGS_MAX      10000
#define LOOKUPS_MAX       2000
#define INBETWEEN_MAX     100
#define VERIFY_SCHEMA_MIN 3 /* chains and checkpoints */
#define CUTS_SCHEMA       5 /* audit.retention_cuts */

/* The columns auditor_event_map fills, read back as the text it wrote: the same order
 * as AUDITOR_EVENT_COLUMNS, event_time in its RFC 3339 form, event verbatim (json). */
static const char row_columns[] =
    "event_id, request_id, event_type, "
    "to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
    "service, instance, client_addr, principal, idp, groups, route, model, endpoint, "
    "outcome, status, reason, prompt_tokens, completion_tokens, total_tokens, latency_us, "
    "ttft_us, body_sha256, body_size, resp_sha256, resp_size, kafka_partition, "
    "kafka_offset, event::text, seq, prev_hash, hash";
#define COL_SEQ  AUDITOR_EVENT_NCOLUMNS
#define COL_PREV (AUDITOR_EVENT_NCOLUMNS + 1)
#define COL_HASH (AUDITOR_EVENT_NCOLUMNS + 2)

enum kind { ALTERED, DELETED, INSERTED, REORDERED, BROKEN, BAD_CHECKPOINT };
static const char *const kind_names[] = {"altered",   "deleted",     "inserted",
					 "reordered", "broken-link", "bad-checkpoint"};

struct finding {
	enum kind kind;
	int32_t chain;
	long long seq, seq_end; /* a deleted range is [seq, seq_end] */
	char event_id[33];      /* "" when unknown (deleted) */
	int dropped;            /* superseded by a better explanation */
};

/* One per run, on main's stack. */
struct verify {
	PGconn *conn;      /* owned */
	struct finding *f; /* owned */
	int nf, capf;
	int lookups;
	int truncated; /* findings or lookups hit their cap */
	long long rows;
	struct checkpoint_key key; /* owned; pkey NULL when no key was given */
	long long checkpoints, unsigned_checked;
	int has_cuts; /* schema 5+: retention cut records exist */
};

static void add(struct verify *v, enum kind k, int32_t chain, long long seq, long long seq_end,
		const char *event_id)
{
	if (v->nf == v->capf) {
		if (v->capf >= FINDINGS_MAX) {
			v->truncated = 1;
			return;
		}
		int cap = v->capf ? v->capf * 2 : 64;
		struct finding *nf = realloc(v->f, (size_t)cap * sizeof *nf);
		if (!nf) {
			v->truncated = 1;
			return;
		}
		v->f = nf;
		v->capf = cap;
	}
	struct finding *f = &v->f[v->nf++];
	f->kind = k;
	f->chain = chain;
	f->seq = seq;
	f->seq_end = seq_end;
	snprintf(f->event_id, sizeof f->event_id, "%s", event_id ? event_id : "");
	f->dropped = 0;
}

static struct finding *find(struct verify *v, enum kind k, int32_t chain, long long seq)
{
	for (int i = v->nf - 1; i >= 0; i--)
		if (!v->f[i].dropped && v->f[i].kind == k && v->f[i].chain == chain &&
		    v->f[i].seq == seq)
			return &v->f[i];
	return NULL;
}

static int any_at(struct verify *v, int32_t chain, long long seq)
{
	for (int i = 0; i < v->nf; i++)
		if (!v->f[i].dropped && v->f[i].chain == chain && v->f[i].seq <= seq &&
		    seq <= v->f[i].seq_end)
			return 1;
	return 0;
}

static PGresult *exec(struct verify *v, const char *sql, int n, const char *const *params,
		      ExecStatusType want)
{
	PGresult *r = PQexecParams(v->conn, sql, n, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != want) {
		log_error("verify query failed", LS("error", PQresultErrorMessage(r)));
		PQclear(r);
		return NULL;
	}
	return r;
}

/* The row of chain whose `col` (hash or prev_hash) is hex, other than seq `not_seq`:
 * its seq (or -1 when none, -2 on error or when the lookup budget is spent). */
static long long lookup(struct verify *v, int32_t chain, const char *col, const char *hex,
			long long not_seq, char *event_id)
{
	if (++v->lookups > LOOKUPS_MAX) {
		v->truncated = 1;
		return -2;
	}
	char sql[256], c[16], ns[24];
	snprintf(sql, sizeof sql,
		 "SELECT seq, event_id FROM audit.audit_events WHERE chain_id = $1 AND %s = $2 "
		 "AND seq <> $3 ORDER BY seq LIMIT 1",
		 col);
	snprintf(c, sizeof c, "%d", (int)chain);
	snprintf(ns, sizeof ns, "%lld", not_seq);
	const char *params[] = {c, hex, ns};
	PGresult *r = exec(v, sql, 3, params, PGRES_TUPLES_OK);
	if (!r)
		return -2;
	long long seq = -1;
	if (PQntuples(r) == 1) {
		seq = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
		if (event_id)
			snprintf(event_id, 33, "%s", PQgetvalue(r, 0, 1));
	}
	PQclear(r);
	return seq;
}

/* Rows strictly between seq lo and hi are not where the chain's links put them: each
 * that some row still links to was moved (reordered), each that none links to was
 * put there (inserted). */
static void classify_between(struct verify *v, int32_t chain, long long lo, long long hi)
{
	char sql[] = "SELECT seq, event_id, hash FROM audit.audit_events WHERE chain_id = $1 "
		     "AND seq > $2 AND seq < $3 ORDER BY seq LIMIT "
		     "100";
	char c[16], a[24], b[24];
	snprintf(c, sizeof c, "%d", (int)chain);
	snprintf(a, sizeof a, "%lld", lo);
	snprintf(b, sizeof b, "%lld", hi);
	const char *params[] = {c, a, b};
	PGresult *r = exec(v, sql, 3, params, PGRES_TUPLES_OK);
	if (!r)
		return;
	if (hi - lo - 1 > INBETWEEN_MAX)
		v->truncated = 1;
	for (int i = 0; i < PQntuples(r); i++) {
		long long seq = strtoll(PQgetvalue(r, i, 0), NULL, 10);
		const char *id = PQgetvalue(r, i, 1);
		if (find(v, REORDERED, chain, seq) || find(v, INSERTED, chain, seq))
			continue;
		long long next = lookup(v, chain, "prev_hash", PQgetvalue(r, i, 2), seq, NULL);
		if (next == -2)
			break;
		struct finding *alt = find(v, ALTERED, chain, seq);
		if (next >= 0) {
			add(v, REORDERED, chain, seq, seq, id);
		} else {
			if (alt) /* a forged row's hash is wrong too; inserted says more */
				alt->dropped = 1;
			add(v, INSERTED, chain, seq, seq, id);
		}
	}
	PQclear(r);
}

/* Row (seq, id, prevhex, hashhex) does not link to the row before it (q_seq, q_hash). */
static void link_broken(struct verify *v, int32_t chain, long long seq, const char *id,
			const char *prevhex, const char *hashhex, long long q_seq,
			const char *q_hashhex)
{
	long long p = lookup(v, chain, "hash", prevhex, seq, NULL);
	long long s = lookup(v, chain, "prev_hash", hashhex, seq, NULL);
	if (p == -2 || s == -2)
		return;
	int moved = (p >= 0 && p > seq) || (s >= 0 && s < seq);
	if (moved && !find(v, REORDERED, chain, seq))
		add(v, REORDERED, chain, seq, seq, id);
	if (p >= 0 && p < q_seq) {
		classify_between(v, chain, p, seq);
	} else if (p < 0 && !moved) {
		/* Nothing carries the hash this row links to. If the row before is still
		 * linked to by another row, this one is the stranger; otherwise the row
		 * before was rewritten with a fresh hash, or rows after it were deleted
		 * and the rest renumbered: the two look alike without a checkpoint. */
		long long other =
		    q_hashhex ? lookup(v, chain, "prev_hash", q_hashhex, q_seq, NULL) : -1;
		if (other == -2)
			return;
		if (other >= 0 && other != seq) {
			struct finding *alt = find(v, ALTERED, chain, seq);
			if (alt)
				alt->dropped = 1;
			add(v, INSERTED, chain, seq, seq, id);
		} else {
			add(v, BROKEN, chain, q_seq, seq, id);
		}
	}
}

static int int_arg(PGresult *r, int row, int col, long long *out)
{
	char *end;
	const char *s = PQgetvalue(r, row, col);
	*out = strtoll(s, &end, 10);
	return *s && !*end ? 0 : -1;
}

/* Walks one chain from seq `from` (1, or the row before --since). With anchor_hash the
 * chain continues from a retention cut: the row before `from` is gone and anchor_hash
 * is the hash it had. */
static int walk(struct verify *v, int32_t chain, long long from, const char *anchor_hash,
		long long *last)
{
	char sql[1024];
	snprintf(sql, sizeof sql,
		 "DECLARE walk NO SCROLL CURSOR FOR SELECT %s FROM audit.audit_events "
		 "WHERE chain_id = %d AND seq >= %lld ORDER BY seq",
		 row_columns, (int)chain, from);
	PGresult *r = exec(v, sql, 0, NULL, PGRES_COMMAND_OK);
	if (!r)
		return -1;
	PQclear(r);
	static const unsigned char zero[CHAIN_HASH_LEN];
	long long q_seq = from - 1; /* the row before: genesis when from is 1 */
	char q_hash[CHAIN_HEX_LEN + 1];
	int have_q = from == 1 || anchor_hash;
	chain_hex(zero, q_hash);
	if (anchor_hash)
		snprintf(q_hash, sizeof q_hash, "%s", anchor_hash);
	char scratch_id[33];
	for (;;) {
		r = exec(v,
			 "FETCH "
			 "5000"
			 " FROM walk",
			 0, NULL, PGRES_TUPLES_OK);
		if (!r)
			return -1;
		int n = PQntuples(r);
		for (int i = 0; i < n; i++) {
			const char *vals[AUDITOR_EVENT_NCOLUMNS];
			size_t lens[AUDITOR_EVENT_NCOLUMNS];
			for (int c = 0; c < AUDITOR_EVENT_NCOLUMNS; c++) {
				vals[c] = PQgetisnull(r, i, c) ? NULL : PQgetvalue(r, i, c);
				lens[c] = (size_t)PQgetlength(r, i, c);
			}
			long long seq = 0;
			int_arg(r, i, COL_SEQ, &seq);
			const char *id = PQgetvalue(r, i, 0);
			snprintf(scratch_id, sizeof scratch_id, "%s", id);
			const char *prevhex = PQgetvalue(r, i, COL_PREV);
			const char *hashhex = PQgetvalue(r, i, COL_HASH);
			unsigned char prev[CHAIN_HASH_LEN], stored[CHAIN_HASH_LEN],
			    got[CHAIN_HASH_LEN];
			v->rows++;
			if (chain_unhex(prevhex, prev) != 0 || chain_unhex(hashhex, stored) != 0 ||
			    chain_hash_fields(prev, chain, vals, lens, AUDITOR_EVENT_NCOLUMNS,
					      got) != 0 ||
			    memcmp(got, stored, sizeof got) != 0)
				add(v, ALTERED, chain, seq, seq, id);
			if (have_q) {
				if (seq > q_seq + 1)
					add(v, DELETED, chain, q_seq + 1, seq - 1, NULL);
				else if (seq == q_seq)
					add(v, INSERTED, chain, seq, seq, id);
				else if (strcmp(prevhex, q_hash) != 0)
					link_broken(v, chain, seq, id, prevhex, hashhex, q_seq,
						    q_seq >= 1 ? q_hash : NULL);
			}
			have_q = 1;
			q_seq = seq;
			snprintf(q_hash, sizeof q_hash, "%s", hashhex);
		}
		PQclear(r);
		if (n < FETCH_ROWS)
			break;
	}
	*last = have_q ? q_seq : 0;
	r = exec(v, "CLOSE walk", 0, NULL, PGRES_COMMAND_OK);
	if (!r)
		return -1;
	PQclear(r);
	return 0;
}

/* Each checkpoint of chain at or after seq from: its signature, and that the row it
 * covers is still there with the hash it signed. A checkpoint beyond the chain's last
 * row names the cut tail as deleted. */
static int checkpoints(struct verify *v, int32_t chain, long long from, long long last,
		       long long cut, const char *cut_hash)
{
	char c[16], f[24];
	snprintf(c, sizeof c, "%d", (int)chain);
	snprintf(f, sizeof f, "%lld", from);
	const char *params[] = {c, f};
	PGresult *r = exec(v,
			   "SELECT k.seq, k.hash, to_char(k.signed_at AT TIME ZONE 'UTC', "
			   "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), k.signature, e.hash, e.event_id "
			   "FROM audit.checkpoints k LEFT JOIN audit.audit_events e ON "
			   "e.chain_id = k.chain_id AND e.seq = k.seq WHERE k.chain_id = $1 AND "
			   "k.seq >= $2 ORDER BY k.seq",
			   2, params, PGRES_TUPLES_OK);
	if (!r)
		return -1;
	long long cut_to = 0;
	for (int i = 0; i < PQntuples(r); i++) {
		long long seq = strtoll(PQgetvalue(r, i, 0), NULL, 10);
		const char *hash = PQgetvalue(r, i, 1);
		v->checkpoints++;
		if (v->key.pkey) {
			char msg[300];
			int n = checkpoint_message(msg, sizeof msg, chain, seq, hash,
						   PQgetvalue(r, i, 2));
			if (n < 0 ||
			    !checkpoint_verify(&v->key, msg, (size_t)n, PQgetvalue(r, i, 3)))
				add(v, BAD_CHECKPOINT, chain, seq, seq, NULL);
		} else {
			v->unsigned_checked++;
		}
		if (seq <= cut) {
			/* Dropped by retention; the cut's recorded hash must be what was signed. */
			if (seq == cut && strcmp(hash, cut_hash) != 0)
				add(v, ALTERED, chain, seq, seq, NULL);
		} else if (PQgetisnull(r, i, 4)) {
			if (seq > last)
				cut_to = seq; /* rows last+1 .. seq are gone */
			/* inside the chain, the walk reported the gap already */
		} else if (strcmp(PQgetvalue(r, i, 4), hash) != 0 && !any_at(v, chain, seq)) {
			/* The signed row moved (the walk explains why) or was rewritten. */
			long long now_at = lookup(v, chain, "hash", hash, seq, NULL);
			if (now_at == -1)
				add(v, ALTERED, chain, seq, seq, PQgetvalue(r, i, 5));
		}
	}
	if (cut_to)
		add(v, DELETED, chain, last + 1, cut_to, NULL);
	PQclear(r);
	return 0;
}

/* Rows outside every chain: those written before migration 2 are counted in
 * audit.chain_start (less those retention dropped); any more were put there afterwards. */
static int unchained(struct verify *v)
{
	PGresult *r = exec(v,
			   "SELECT e.event_id, e.inserted_at > s.migrated_at FROM "
			   "audit.audit_events e, audit.chain_start s WHERE e.chain_id IS NULL",
			   0, NULL, PGRES_TUPLES_OK);
	if (!r)
		return -1;
	PGresult *s =
	    exec(v,
		 v->has_cuts ? "SELECT unchained_rows - (SELECT coalesce(sum(unchained_rows), "
			       "0) FROM audit.retention_cuts) FROM audit.chain_start"
			     : "SELECT unchained_rows FROM audit.chain_start",
		 0, NULL, PGRES_TUPLES_OK);
	if (!s) {
		PQclear(r);
		return -1;
	}
	long long before = 0;
	if (PQntuples(s) == 1)
		int_arg(s, 0, 0, &before);
	long long now = PQntuples(r), named = 0;
	for (int i = 0; i < PQntuples(r); i++)
		if (strcmp(PQgetvalue(r, i, 1), "t") == 0) {
			add(v, INSERTED, -1, 1, 1, PQgetvalue(r, i, 0));
			named++;
		}
	if (now > before && named == 0) /* inserted_at forged too: count only */
		add(v, INSERTED, -1, now - before, now - before, NULL);
	if (now < before)
		add(v, DELETED, -1, before - now, before - now, NULL);
	PQclear(r);
	PQclear(s);
	return 0;
}

/* Where retention cut the chain: the last seq dropped and its hash (cut = 0: never). */
static int retention_cut(struct verify *v, int32_t chain, long long *cut, char *hash)
{
	*cut = 0;
	hash[0] = 0;
	if (!v->has_cuts)
		return 0;
	char c[16];
	snprintf(c, sizeof c, "%d", (int)chain);
	const char *params[] = {c};
	PGresult *r = exec(v,
			   "SELECT last_seq, last_hash FROM audit.retention_chain_cuts WHERE "
			   "chain_id = $1 ORDER BY last_seq DESC LIMIT 1",
			   1, params, PGRES_TUPLES_OK);
	if (!r)
		return -1;
	*cut = 0;
	hash[0] = 0;
	if (PQntuples(r) == 1) {
		int_arg(r, 0, 0, cut);
		snprintf(hash, CHAIN_HEX_LEN + 1, "%s", PQgetvalue(r, 0, 1));
	}
	PQclear(r);
	return 0;
}

/* Rows at or below a retention cut: the cut says none remain, so each was put back. */
static int below_cut(struct verify *v, int32_t chain, long long cut)
{
	char c[16], s[24];
	snprintf(c, sizeof c, "%d", (int)chain);
	snprintf(s, sizeof s, "%lld", cut);
	const char *params[] = {c, s};
	PGresult *r = exec(v,
			   "SELECT seq, event_id FROM audit.audit_events WHERE chain_id = $1 AND "
			   "seq <= $2 ORDER BY seq LIMIT 100",
			   2, params, PGRES_TUPLES_OK);
	if (!r)
		return -1;
	for (int i = 0; i < PQntuples(r); i++) {
		long long seq = 0;
		int_arg(r, i, 0, &seq);
		add(v, INSERTED, chain, seq, seq, PQgetvalue(r, i, 1));
	}
	PQclear(r);
	return 0;
}

static void usage(FILE *f)
{
	fputs("usage: auditor verify [--since TIME]\n"
	      "  Walks every hash chain in audit.audit_events (GW_DATABASE_URL) and prints each\n"
	      "  altered, deleted, inserted or reordered row as\n"
	      "    KIND chain=N seq=S event_id=ID\n"
	      "  --since TIME  start each chain at its first event at or after TIME (RFC 3339\n"
	      "                or an age such as 24h); the row before is trusted as the anchor\n"
	      "  exit: 0 intact, 1 tampering found, 2 usage, 3 could not verify\n",
	      f);
}

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int run(struct verify *v, const char *since, int64_t since_us)
{
	int version = pg_schema_version(v->conn, "audit");
	/* Chains and checkpoints arrived in 3; a restored backup from before partitions
	 * or retention still verifies. */
	if (version < VERIFY_SCHEMA_MIN) {
		log_error("audit schema too old to verify: run `auditor migrate`",
			  LI("have", version), LI("need", VERIFY_SCHEMA_MIN));
		return -1;
	}
	v->has_cuts = version >= CUTS_SCHEMA;
	PGresult *r =
	    exec(v, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, PGRES_COMMAND_OK);
	if (!r)
		return -1;
	PQclear(r);
	/* Distinct chains by skipping along the (chain_id, seq) index, not a full scan;
	 * plus any chain only a checkpoint or a retention cut still remembers. */
	char chains_sql[600];
	snprintf(chains_sql, sizeof chains_sql, "%s%s ORDER BY 1",
		 "WITH RECURSIVE c AS (SELECT min(chain_id) AS id FROM audit.audit_events UNION "
		 "ALL SELECT (SELECT min(chain_id) FROM audit.audit_events WHERE chain_id > c.id) "
		 "FROM c WHERE c.id IS NOT NULL) SELECT id FROM c WHERE id IS NOT NULL UNION "
		 "SELECT DISTINCT chain_id FROM audit.checkpoints",
		 v->has_cuts ? " UNION SELECT DISTINCT chain_id FROM audit.retention_chain_cuts"
			     : "");
	PGresult *chains = exec(v, chains_sql, 0, NULL, PGRES_TUPLES_OK);
	if (!chains)
		return -1;
	int rc = 0;
	for (int i = 0; i < PQntuples(chains) && rc == 0; i++) {
		long long chain = 0, from = 1, cut = 0;
		char cut_hash[CHAIN_HEX_LEN + 1] = "";
		int_arg(chains, i, 0, &chain);
		if (retention_cut(v, (int32_t)chain, &cut, cut_hash) != 0) {
			rc = -1;
			break;
		}
		if (since) {
			char c[16], t[24];
			snprintf(c, sizeof c, "%lld", chain);
			snprintf(t, sizeof t, "%lld", (long long)since_us);
			const char *params[] = {c, t};
			r = exec(v,
				 "SELECT min(seq) FROM audit.audit_events WHERE chain_id = $1 AND "
				 "event_time >= timestamptz 'epoch' + $2::bigint * interval '1 "
				 "microsecond'",
				 2, params, PGRES_TUPLES_OK);
			if (!r) {
				rc = -1;
				break;
			}
			int none = PQgetisnull(r, 0, 0);
			if (!none)
				int_arg(r, 0, 0, &from);
			PQclear(r);
			if (none)
				continue;
			if (from > 1)
				from--;
		}
		long long last = 0;
		const char *anchor = NULL;
		if (cut > 0 && from <= cut + 1) {
			from = cut + 1;
			anchor = cut_hash;
		}
		rc = walk(v, (int32_t)chain, from, anchor, &last);
		if (rc == 0 && cut > 0 && !since)
			rc = below_cut(v, (int32_t)chain, cut);
		if (rc == 0)
			rc = checkpoints(v, (int32_t)chain, anchor ? cut : from, last, cut,
					 cut_hash);
	}
	PQclear(chains);
	if (rc == 0 && !since)
		rc = unchained(v);
	return rc;
}

int verify_main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"since", required_argument, NULL, 's'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *since = NULL;
	int64_t since_us = 0;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			since = optarg;
			if (timearg_parse(optarg, now_us(), &since_us) != 0) {
				fprintf(stderr, "auditor verify: --since: not a time: %s\n",
					optarg);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	struct verify v = {0};
	/* The public key alone suffices; the signing key's public half does too. */
	const char *keyfile = config_str("GW_AUDIT_VERIFY_KEY_FILE", NULL);
	if (!keyfile || !*keyfile)
		keyfile = config_str("GW_AUDIT_SIGNING_KEY_FILE", NULL);
	if (keyfile && *keyfile && checkpoint_key_load(&v.key, keyfile, 0) != 0)
		return 3;
	v.conn = pg_connect(NULL, "auditor");
	if (!v.conn) {
		checkpoint_key_free(&v.key);
		return 3;
	}
	int rc = run(&v, since, since_us);
	PQfinish(v.conn);
	checkpoint_key_free(&v.key);
	if (rc != 0) {
		free(v.f);
		return 3;
	}
	int bad = 0;
	for (int i = 0; i < v.nf; i++) {
		struct finding *f = &v.f[i];
		if (f->dropped)
			continue;
		bad++;
		if (f->chain < 0)
			printf("%s chain=none count=%lld%s%s (rows outside every chain; %s)\n",
			       kind_names[f->kind], f->seq, f->event_id[0] ? " event_id=" : "",
			       f->event_id,
			       f->kind == DELETED
				   ? "fewer than were written before the chains began"
				   : "more than were written before the chains began");
		else if (f->kind == BAD_CHECKPOINT)
			printf("bad-checkpoint chain=%d seq=%lld (signature invalid for key %s)\n",
			       (int)f->chain, f->seq, v.key.key_id);
		else if (f->kind == DELETED)
			printf("deleted chain=%d seq=%lld..%lld\n", (int)f->chain, f->seq,
			       f->seq_end);
		else if (f->kind == BROKEN)
			printf("broken-link chain=%d seq=%lld event_id=%s (seq %lld was rewritten "
			       "with a new hash, or rows after it were deleted and the rest "
			       "renumbered)\n",
			       (int)f->chain, f->seq_end, f->event_id, f->seq);
		else
			printf("%s chain=%d seq=%lld event_id=%s\n", kind_names[f->kind],
			       (int)f->chain, f->seq, f->event_id);
	}
	printf("%s: %lld chained rows checked, %lld checkpoints (%s), %d finding%s%s\n",
	       bad ? "FAILED" : "OK", v.rows, v.checkpoints,
	       v.unsigned_checked ? "signatures NOT checked: no GW_AUDIT_VERIFY_KEY_FILE"
				  : "signatures checked",
	       bad, bad == 1 ? "" : "s",
	       v.truncated ? " (analysis stopped early: too many anomalies)" : "");
	free(v.f);
	if (fflush(stdout) != 0)
		return 3;
	return bad || v.truncated ? 1 : 0;
}
