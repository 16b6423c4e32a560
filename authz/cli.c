/* `authz migrate` and `authz keys ...`: short-lived, blocking PostgreSQL sessions with
 * the admin URL when given. Secrets never come from argv: a key to register is read
 * from an environment variable or its _FILE. */
#include "cli.h"
#include "apikey.h"
#include "audit.h"
#include "kafka.h"
#include "config.h"
#include "db.h"
#include "log.h"
#include "pg.h"

#include <ctype.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int admin_audit(const char *type, const char *key_id, const char *principal,
		       const char *groups);

static const char keys_usage[] =
    "usage: authz keys create --principal P [--groups g1,g2] [--models m1,m2]\n"
    "                         [--expires RFC3339] [--key-from-env VAR]\n"
    "       authz keys list\n"
    "       authz keys revoke KEY_ID\n";

/* The admin URL when set (migrations, key administration), else the runtime one. */
static PGconn *connect_admin(void)
{
	char *admin = NULL;
	if (config_secret("GW_DATABASE_ADMIN_URL", &admin, NULL) != 0)
		return NULL;
	PGconn *c = pg_connect(admin, "authz");
	if (admin) {
		OPENSSL_cleanse(admin, strlen(admin));
		free(admin);
	}
	return c;
}

int cli_migrate(int argc, char **argv)
{
	if (argc > 0) {
		fprintf(stderr, "usage: authz migrate\n");
		return 2;
	}
	const char *role = config_str("GW_AUTHZ_ROLE", "gw_authz");
	PGconn *c = connect_admin();
	if (!c)
		return 1;
	int rc = db_migrate(c, role);
	PQfinish(c);
	if (rc == 0)
		log_info("authz schema up to date", LS("role", role));
	return rc ? 1 : 0;
}

static int digits(const char *s, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return 0;
}

int cli_parse_rfc3339(const char *s, long long *unix_ms)
{
	int Y, M, D, h, m, sec, ms = 0, oh = 0, om = 0, sign = 0;
	if (strlen(s) < 20 || digits(s, 4, &Y) || s[4] != '-' || digits(s + 5, 2, &M) ||
	    s[7] != '-' || digits(s + 8, 2, &D) || (s[10] != 'T' && s[10] != 't') ||
	    digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &m) || s[16] != ':' ||
	    digits(s + 17, 2, &sec))
		return -1;
	const char *p = s + 19;
	if (*p == '.') {
		p++;
		int n = 0;
		for (; isdigit((unsigned char)*p); p++, n++)
			if (n < 3)
				ms = ms * 10 + (*p - '0');
		if (n == 0)
			return -1;
		for (; n < 3; n++)
			ms *= 10;
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		sign = *p == '+' ? 1 : -1;
		if (digits(p + 1, 2, &oh) || p[3] != ':' || digits(p + 4, 2, &om) || oh > 23 ||
		    om > 59)
			return -1;
		p += 6;
	} else {
		return -1;
	}
	if (*p || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
		return -1;
	struct tm tm = {0};
	tm.tm_year = Y - 1900;
	tm.tm_mon = M - 1;
	tm.tm_mday = D;
	tm.tm_hour = h;
	tm.tm_min = m;
	tm.tm_sec = sec;
	time_t t = timegm(&tm);
	/* timegm normalises 2030-02-31 to March: refuse dates that do not exist. */
	if (t == (time_t)-1 || tm.tm_mday != D || tm.tm_mon != M - 1)
		return -1;
	*unix_ms = ((long long)t - sign * (oh * 3600LL + om * 60LL)) * 1000 + ms;
	return 0;
}

/* Text fit for a header and a log line: 1..max bytes, no control characters. */
static int text_ok(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n == 0 || n > max)
		return 0;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return 0;
	return 1;
}

/* A comma-separated list: no empty element, each element text_ok. */
static int list_ok(const char *s, size_t elem_max)
{
	if (!*s)
		return 1;
	char buf[4096];
	if (strlen(s) >= sizeof buf)
		return 0;
	snprintf(buf, sizeof buf, "%s", s);
	const char *start = buf;
	for (char *p = buf;; p++) {
		if (*p == ',' || *p == 0) {
			int end = *p == 0;
			*p = 0;
			if (!text_ok(start, elem_max))
				return 0;
			if (end)
				return 1;
			start = p + 1;
		}
	}
}

/* --name VALUE or --name=VALUE; returns the value and advances *i, or NULL. */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
	size_t n = strlen(name);
	if (strncmp(argv[*i], name, n) != 0)
		return NULL;
	if (argv[*i][n] == '=')
		return argv[*i] + n + 1;
	if (argv[*i][n] == 0 && *i + 1 < argc)
		return argv[++*i];
	return NULL;
}

static int insert_key(PGconn *c, const char *key, size_t len, const struct db_new_key *tmpl,
		      int *existed, int *same)
{
	char id[APIKEY_ID_HEX + 1], hex[APIKEY_HASH_HEX + 1];
	unsigned char hash[APIKEY_HASH_LEN], stored[APIKEY_HASH_LEN];
	if (apikey_parse_n(key, len, id) != 0 || apikey_hash(key, len, hash) != 0)
		return -1;
	apikey_hash_hex(hash, hex);
	struct db_new_key k = *tmpl;
	k.id = id;
	k.hash_hex = hex;
	if (db_key_insert(c, &k, existed, stored) != 0)
		return -1;
	*same = *existed && CRYPTO_memcmp(hash, stored, sizeof hash) == 0;
	return 0;
}

static int keys_create(int argc, char **argv)
{
	struct db_new_key k = {0};
	const char *expires = NULL, *from_env = NULL;
	k.groups = k.models = "";
	for (int i = 0; i < argc; i++) {
		const char *v;
		if ((v = opt_value(argc, argv, &i, "--principal"))) {
			k.principal = v;
		} else if ((v = opt_value(argc, argv, &i, "--groups"))) {
			k.groups = v;
		} else if ((v = opt_value(argc, argv, &i, "--models"))) {
			k.models = v;
		} else if ((v = opt_value(argc, argv, &i, "--expires"))) {
			expires = v;
		} else if ((v = opt_value(argc, argv, &i, "--key-from-env"))) {
			from_env = v;
		} else if (strncmp(argv[i], "--key", 5) == 0 &&
			   (argv[i][5] == 0 || argv[i][5] == '=')) {
			/* Do not echo the value: it is a secret that already leaked into argv. */
			fprintf(stderr, "authz keys create: secrets are never taken from argv; put "
					"the key in an environment variable (or VAR_FILE) and pass "
					"--key-from-env VAR\n");
			return 2;
		} else {
			fprintf(stderr, "authz keys create: unknown or incomplete option '%s'\n%s",
				argv[i], keys_usage);
			return 2;
		}
	}
	if (!k.principal || !text_ok(k.principal, 255)) {
		fprintf(stderr,
			"authz keys create: --principal is required (1-255 printable "
			"bytes)\n%s",
			keys_usage);
		return 2;
	}
	if (!list_ok(k.groups, 255) || strlen(k.groups) > 1023) {
		fprintf(stderr, "authz keys create: --groups must be a comma-separated list of "
				"non-empty names (at most 1023 bytes in all)\n");
		return 2;
	}
	if (!list_ok(k.models, 255)) {
		fprintf(stderr, "authz keys create: --models must be a comma-separated list of "
				"non-empty model names\n");
		return 2;
	}
	if (expires) {
		long long ms;
		if (cli_parse_rfc3339(expires, &ms) != 0) {
			fprintf(stderr, "authz keys create: --expires must be RFC 3339, e.g. "
					"2030-01-31T00:00:00Z\n");
			return 2;
		}
		if (ms <= (long long)time(NULL) * 1000) {
			fprintf(stderr, "authz keys create: --expires is in the past\n");
			return 2;
		}
		k.expires_ms = ms;
	}
	PGconn *c = connect_admin();
	if (!c)
		return 1;
	int rc = 1, existed = 0, same = 0;
	if (from_env) {
		char *key = NULL;
		size_t len = 0;
		char id[APIKEY_ID_HEX + 1];
		if (config_secret(from_env, &key, &len) != 0) {
			/* logged */
		} else if (!key) {
			log_error("the key variable is not set", LS("variable", from_env));
		} else if (apikey_parse_n(key, len, id) != 0) {
			log_error(
			    "the key in the variable is not a gw_<16 hex>_<43 base64url> API key",
			    LS("variable", from_env));
		} else if (insert_key(c, key, len, &k, &existed, &same) == 0) {
			if (!existed) {
				log_info("API key registered", LS("key_id", id),
					 LS("principal", k.principal));
				rc = 0;
				admin_audit("admin.key_created", id, k.principal, k.groups);
			} else if (same) {
				log_info("API key already registered", LS("key_id", id));
				rc = 0;
			} else {
				log_error("another key with this id is already registered",
					  LS("key_id", id));
			}
		}
		if (key) {
			OPENSSL_cleanse(key, len);
			free(key);
		}
		PQfinish(c);
		return rc;
	}
	char key[APIKEY_LEN + 1], id[APIKEY_ID_HEX + 1];
	for (int attempt = 0; attempt < 3 && rc; attempt++) {
		if (apikey_generate(key, id) != 0) {
			log_error("random generator failed");
			break;
		}
		if (insert_key(c, key, APIKEY_LEN, &k, &existed, &same) != 0)
			break;
		if (existed) {
			log_warn("key id collision: generating another", LS("key_id", id));
			continue;
		}
		/* The only place the key is ever shown. */
		if (printf("%s\n", key) < 0 || fflush(stdout) != 0) {
			log_error("cannot write the key to stdout: revoke it", LS("key_id", id));
			break;
		}
		log_info("API key created", LS("key_id", id), LS("principal", k.principal));
		rc = 0;
		/* The key was shown once and exists: a lost audit event is reported loudly,
		 * but the exit status stays 0 so the caller keeps the key. */
		admin_audit("admin.key_created", id, k.principal, k.groups);
	}
	OPENSSL_cleanse(key, sizeof key);
	PQfinish(c);
	return rc;
}

/* Emits admin.key_created / admin.key_revoked on gw.audit when GW_KAFKA_BROKERS is set,
 * through a producer on a private loop, flushed before returning. Returns 0 when
 * delivered (or Kafka is not configured), -1 otherwise (logged). */
static int admin_audit(const char *type, const char *key_id, const char *principal,
		       const char *groups)
{
	if (!config_str("GW_KAFKA_BROKERS", NULL)) {
		log_warn("GW_KAFKA_BROKERS is not set: no admin audit event emitted",
			 LS("type", type), LS("key_id", key_id));
		return 0;
	}
	audit_set_service("authz");
	struct event_base *base = event_base_new();
	struct kafka_producer p;
	memset(&p, 0, sizeof p);
	if (!base || kafka_producer_init(&p, base, "authz-admin") != 0) {
		if (base)
			event_base_free(base);
		log_error("cannot start a Kafka producer for the admin audit event",
			  LS("type", type), LS("key_id", key_id));
		return -1;
	}
	const char *by = getenv("SUDO_USER");
	if (!by || !*by)
		by = getenv("USER");
	json_t *extra =
	    json_pack("{s:s, s:s}", "key_id", key_id, "requested_by", by && *by ? by : "unknown");
	struct audit_event ev;
	audit_event_init(&ev);
	ev.type = type;
	ev.outcome = "ok";
	ev.principal = principal;
	ev.groups = groups;
	ev.extra = extra;
	int rc = audit_emit(&p, &ev, NULL, NULL);
	json_decref(extra);
	int left = kafka_producer_close(&p, 10000);
	event_base_free(base);
	if (rc != 0 || left != 0 || p.failed != 0) {
		log_error("admin audit event not delivered to gw.audit", LS("type", type),
			  LS("key_id", key_id), LI("undelivered", left));
		return -1;
	}
	log_info("admin audit event delivered", LS("type", type), LS("key_id", key_id));
	return 0;
}

static int keys_list(int argc, char **argv)
{
	if (argc > 0) {
		fprintf(stderr, "%s", keys_usage);
		return 2;
	}
	PGconn *c = connect_admin();
	if (!c)
		return 1;
	int rc = db_key_list(c);
	PQfinish(c);
	return rc ? 1 : 0;
}

static int keys_revoke(int argc, char **argv)
{
	if (argc != 1) {
		fprintf(stderr, "%s", keys_usage);
		return 2;
	}
	const char *id = argv[0];
	size_t n = strlen(id);
	int ok = n == APIKEY_ID_HEX;
	for (size_t i = 0; ok && i < n; i++)
		ok = (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f');
	if (!ok) {
		fprintf(stderr, "authz keys revoke: KEY_ID is the 16 hex digits after gw_ (see "
				"`authz keys list`)\n");
		return 2;
	}
	PGconn *c = connect_admin();
	if (!c)
		return 1;
	char principal[256];
	int rc = db_key_revoke(c, id, principal, sizeof principal);
	PQfinish(c);
	switch (rc) {
	case 0:
		log_info("API key revoked", LS("key_id", id), LS("principal", principal));
		/* Revoking again is harmless, so a lost audit event fails the command: the
		 * operator reruns it and the event is emitted then. */
		return admin_audit("admin.key_revoked", id, principal, NULL) == 0 ? 0 : 1;
	case 1:
		log_info("API key was already revoked", LS("key_id", id),
			 LS("principal", principal));
		return admin_audit("admin.key_revoked", id, principal, NULL) == 0 ? 0 : 1;
	case 2: log_error("no such API key", LS("key_id", id)); return 1;
	default: return 1;
	}
}

int cli_keys(int argc, char **argv)
{
	if (argc < 1) {
		fprintf(stderr, "%s", keys_usage);
		return 2;
	}
	if (strcmp(argv[0], "create") == 0)
		return keys_create(argc - 1, argv + 1);
	if (strcmp(argv[0], "list") == 0)
		return keys_list(argc - 1, argv + 1);
	if (strcmp(argv[0], "revoke") == 0)
		return keys_revoke(argc - 1, argv + 1);
	if (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
		printf("%s", keys_usage);
		return 0;
	}
	fprintf(stderr, "authz keys: unknown command '%s'\n%s", argv[0], keys_usage);
	return 2;
}
