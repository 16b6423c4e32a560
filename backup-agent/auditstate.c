/* The audit state recorded in a manifest. The counts run inside the transaction whose
 * snapshot pg_dump imports, so they describe exactly the rows in the dump even while the
 * auditor keeps writing. Chain columns are looked up, not assumed: the auditor's schema
 * grows by migrations, and a snapshot records what the database had at the time. */
#include "auditstate.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Columns: name, rows, has chain columns, has kafka offset columns, quoted name. The
 * parent of a partitioned table counts its partitions, so partitions are not listed. */
static const char catalog_sql[] =
    "SELECT n.nspname || '.' || c.relname, "
    "(xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', "
    "n.nspname, c.relname), false, true, '')))[1]::text, "
    "(SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND NOT a.attisdropped "
    "AND a.attname IN ('chain_id', 'seq', 'hash')) = 3, "
    "(SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND NOT a.attisdropped "
    "AND a.attname IN ('kafka_partition', 'kafka_offset')) = 2, "
    "quote_ident(n.nspname) || '.' || quote_ident(c.relname) "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'audit' AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
    "ORDER BY 1";

const char *auditstate_catalog_sql(void)
{
	return catalog_sql;
}

/* Appends s to *buf (malloc'd, grown as needed). */
static int append(char **buf, size_t *len, const char *s)
{
	size_t n = strlen(s);
	char *nb = realloc(*buf, *len + n + 1);
	if (!nb)
		return -1;
	memcpy(nb + *len, s, n + 1);
	*buf = nb;
	*len += n;
	return 0;
}

int auditstate_heads_sql(const PGresult *catalog, char **sql, const char **source)
{
	*sql = NULL;
	*source = "none";
	int rows = PQntuples(catalog);
	/* Chains win: once the auditor keeps them, they are what a restore must reproduce.
	 * Columns are qualified: a bare name in ORDER BY would mean the text output column. */
	for (int pass = 0; pass < 2 && !*sql; pass++) {
		size_t len = 0;
		char *buf = NULL;
		for (int i = 0; i < rows; i++) {
			const char *col = PQgetvalue(catalog, i, pass == 0 ? 2 : 3);
			if (strcmp(col, "t") != 0)
				continue;
			const char *name = PQgetvalue(catalog, i, 0);
			const char *q = PQgetvalue(catalog, i, 4);
			char *part = NULL;
			/* The name is an identifier from the catalog: a literal needs its quotes
			 * doubled. quote_ident already made q safe as an identifier. */
			char lit[256];
			size_t k = 0;
			for (const char *c = name; *c && k + 2 < sizeof lit; c++) {
				if (*c == '\'')
					lit[k++] = '\'';
				lit[k++] = *c;
			}
			lit[k] = 0;
			int n =
			    pass == 0
				? asprintf(
				      &part,
				      "%s(SELECT DISTINCT ON (t.chain_id) '%s', t.chain_id::text, "
				      "t.seq::text, t.hash::text FROM %s t "
				      "ORDER BY t.chain_id, t.seq DESC)",
				      len ? " UNION ALL " : "", lit, q)
				: asprintf(&part,
					   "%s(SELECT '%s', t.kafka_partition::text, "
					   "max(t.kafka_offset)::text, count(*)::text FROM %s t "
					   "GROUP BY t.kafka_partition ORDER BY t.kafka_partition)",
					   len ? " UNION ALL " : "", lit, q);
			if (n < 0 || append(&buf, &len, part) != 0) {
				if (n >= 0)
					free(part);
				free(buf);
				return -1;
			}
			free(part);
		}
		if (buf) {
			*sql = buf;
			*source = pass == 0 ? "chain" : "partition_offsets";
		}
	}
	return 0;
}

static json_t *nullable(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? json_null() : json_string(PQgetvalue(r, row, col));
}

char *auditstate_json(const PGresult *catalog, const PGresult *heads, const char *source)
{
	json_t *o = json_object(), *tables = json_object(), *hv = json_array();
	char *out = NULL;
	int bad = !o || !tables || !hv;
	for (int i = 0; !bad && i < PQntuples(catalog); i++)
		bad |=
		    json_object_set_new(tables, PQgetvalue(catalog, i, 0),
					json_integer(strtoll(PQgetvalue(catalog, i, 1), NULL, 10)));
	int chain = strcmp(source, "chain") == 0;
	for (int i = 0; !bad && heads && i < PQntuples(heads); i++) {
		json_t *h = chain ? json_pack("{s:s,s:o,s:o,s:o}", "table", PQgetvalue(heads, i, 0),
					      "chain_id", nullable(heads, i, 1), "seq",
					      nullable(heads, i, 2), "hash", nullable(heads, i, 3))
				  : json_pack("{s:s,s:o,s:o,s:o}", "table", PQgetvalue(heads, i, 0),
					      "partition", nullable(heads, i, 1), "max_offset",
					      nullable(heads, i, 2), "rows", nullable(heads, i, 3));
		bad |= !h || json_array_append_new(hv, h) != 0;
	}
	const char *note =
	    chain ? "heads are the last (chain_id, seq, hash) of each hash chain"
	    : strcmp(source, "partition_offsets") == 0
		? "the audit tables have no hash-chain columns (chain_id, seq, hash) yet: heads "
		  "are "
		  "each gw.audit partition's highest kafka_offset and row count"
		: "no audit table with chain or kafka offset columns at snapshot time";
	if (!bad) {
		bad |= json_object_set_new(o, "source", json_string(source));
		bad |= json_object_set_new(o, "note", json_string(note));
		bad |= json_object_set(o, "tables", tables);
		bad |= json_object_set(o, "heads", hv);
	}
	if (!bad)
		out = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(tables);
	json_decref(hv);
	json_decref(o);
	return out;
}

int auditstate_compare(const char *expected, const char *actual, char *why, size_t whycap)
{
	json_error_t jerr;
	json_t *e = json_loads(expected, 0, &jerr), *a = json_loads(actual, 0, &jerr);
	int rc = -1;
	if (!json_is_object(e) || !json_is_object(a)) {
		snprintf(why, whycap, "the audit section cannot be read");
		goto out;
	}
	json_t *et = json_object_get(e, "tables"), *at = json_object_get(a, "tables");
	const char *name;
	json_t *v;
	json_object_foreach(et, name, v)
	{
		json_t *got = json_object_get(at, name);
		if (!got) {
			snprintf(why, whycap, "table %s is missing from the restored copy", name);
			goto out;
		}
		if (!json_equal(v, got)) {
			snprintf(why, whycap,
				 "table %s has %lld rows restored, %lld in the manifest", name,
				 (long long)json_integer_value(got),
				 (long long)json_integer_value(v));
			goto out;
		}
	}
	if (json_object_size(at) != json_object_size(et)) {
		snprintf(why, whycap, "the restored copy has %zu audit tables, the manifest %zu",
			 json_object_size(at), json_object_size(et));
		goto out;
	}
	if (!json_equal(json_object_get(e, "source"), json_object_get(a, "source")) ||
	    !json_equal(json_object_get(e, "heads"), json_object_get(a, "heads"))) {
		snprintf(why, whycap, "the restored copy's audit heads differ from the manifest's");
		goto out;
	}
	rc = 0;
out:
	json_decref(e);
	json_decref(a);
	return rc;
}
