/* verify, restore and decrypt. Every path starts with restore_check (size, SHA-256, key
 * id: a damaged, truncated or foreign file is refused before anything is written), then
 * streams the file through the decrypting reader into pg_restore's stdin, which runs with
 * --single-transaction: if decryption fails part way, pg_restore is killed before its
 * input ends, so it never commits and the target keeps nothing. */
#include "restore.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auditstate.h"
#include "crypt.h"
#include "log.h"
#include "pgq.h"
#include "source.h"
#include "wire.h"

#define READ_CHUNK        (1 << 20)
#define CHILD_OUT_MAX     4096
#define CONNECT_TIMEOUT_S "15"

volatile sig_atomic_t restore_stop;

static void rfail(struct restore_result *r, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records the first failure (later ones are consequences) and logs it once. */
static void rfail(struct restore_result *r, const char *id, const char *fmt, ...)
{
	char msg[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	log_error("snapshot check failed", LS("snapshot_id", id), LS("error", msg));
	if (r->ok == 0 && r->error[0])
		return;
	r->ok = 0;
	snprintf(r->error, sizeof r->error, "snapshot %s: %s", id, msg);
}

static int open_dump(struct store *st, const char *id)
{
	char name[STORE_NAME_MAX];
	store_dump_name(id, name, sizeof name);
	return openat(st->dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
}

static int read_some(int fd, unsigned char *buf, size_t cap, ssize_t *got)
{
	do {
		*got = read(fd, buf, cap);
	} while (*got < 0 && errno == EINTR && !restore_stop);
	return *got < 0 ? -1 : 0;
}

/* Receives each chunk of a dump in order; returns -1 with why to stop the read. */
typedef int (*chunk_fn)(void *arg, const unsigned char *buf, size_t n, char *why, size_t whycap);

/* Reads the open dump fd (the caller's) to its end in READ_CHUNK pieces, handing each
 * to fn; stops at restore_stop. The one read loop of the checksum and decrypt passes.
 * Returns 0 at end of file, -1 with why. */
static int read_chunks(int fd, chunk_fn fn, void *arg, char *why, size_t whycap)
{
	unsigned char *buf = malloc(READ_CHUNK);
	int rc = -1;
	if (!buf) {
		snprintf(why, whycap, "out of memory");
		return -1;
	}
	for (;;) {
		ssize_t got;
		if (restore_stop) {
			snprintf(why, whycap, "interrupted");
			break;
		}
		if (read_some(fd, buf, READ_CHUNK, &got) != 0) {
			snprintf(why, whycap, "cannot read its dump: %s", strerror(errno));
			break;
		}
		if (got == 0) {
			rc = 0;
			break;
		}
		if (fn(arg, buf, (size_t)got, why, whycap) != 0)
			break;
	}
	free(buf);
	return rc;
}

/* The checksum pass: SHA-256 of the whole file and its first bytes (the encryption
 * header, to compare key ids). */
struct check_pass {
	EVP_MD_CTX *md;
	unsigned char hdr[CRYPT_HEADER_LEN];
	size_t hdr_len;
};

static int check_chunk(void *arg, const unsigned char *buf, size_t n, char *why, size_t whycap)
{
	struct check_pass *cp = arg;
	if (cp->hdr_len < sizeof cp->hdr) {
		size_t take = sizeof cp->hdr - cp->hdr_len < n ? sizeof cp->hdr - cp->hdr_len : n;
		memcpy(cp->hdr + cp->hdr_len, buf, take);
		cp->hdr_len += take;
	}
	if (EVP_DigestUpdate(cp->md, buf, n) != 1) {
		snprintf(why, whycap, "SHA-256 failed");
		return -1;
	}
	return 0;
}

int restore_check(struct store *st, const char *id, const struct crypt_key *key, struct manifest *m,
		  struct restore_result *r)
{
	char why[200];
	if (!store_id_valid(id)) {
		rfail(r, id, "not a snapshot id (YYYYMMDDTHHMMSSZ-xxxxxx; see backup-agent list)");
		return -1;
	}
	if (store_read_manifest(st, id, m, why, sizeof why) != 0) {
		rfail(r, id, "its manifest cannot be used: %s", why);
		return -1;
	}
	int fd = open_dump(st, id);
	if (fd < 0) {
		rfail(r, id, "cannot open its dump in %s: %s", st->path, strerror(errno));
		return -1;
	}
	struct stat sb;
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
		rfail(r, id, "its dump is not a regular file");
		close(fd);
		return -1;
	}
	if (sb.st_size != m->size) {
		rfail(r, id, "the file is %s: %lld bytes, the manifest says %lld",
		      sb.st_size < m->size ? "truncated" : "longer than written",
		      (long long)sb.st_size, m->size);
		close(fd);
		return -1;
	}
	struct check_pass cp = {.md = EVP_MD_CTX_new(), .hdr_len = 0};
	int rc = -1;
	if (!cp.md || EVP_DigestInit_ex(cp.md, EVP_sha256(), NULL) != 1) {
		rfail(r, id, "out of memory");
		goto out;
	}
	if (read_chunks(fd, check_chunk, &cp, why, sizeof why) != 0) {
		rfail(r, id, "%s", why);
		goto out;
	}
	unsigned char dg[EVP_MAX_MD_SIZE];
	unsigned int dlen = 0;
	char hex[MANIFEST_SHA256_HEX + 1];
	if (EVP_DigestFinal_ex(cp.md, dg, &dlen) != 1 || dlen != 32) {
		rfail(r, id, "SHA-256 failed");
		goto out;
	}
	for (unsigned i = 0; i < dlen; i++)
		snprintf(hex + 2 * i, 3, "%02x", dg[i]);
	if (strcmp(hex, m->sha256) != 0) {
		rfail(r, id,
		      "the file is damaged: its SHA-256 is %.16s..., the manifest says %.16s...",
		      hex, m->sha256);
		goto out;
	}
	if (m->encrypted) {
		char kid[CRYPT_KEY_ID_HEX + 1];
		if (strcmp(m->encryption, CRYPT_SCHEME) != 0) {
			rfail(r, id, "encryption scheme \"%s\" is not known to this agent",
			      m->encryption);
			goto out;
		}
		if (crypt_header_key_id(cp.hdr, cp.hdr_len, kid) != 0 ||
		    strcmp(kid, m->key_id) != 0) {
			rfail(r, id, "the file's encryption header does not match its manifest");
			goto out;
		}
		if (!key || !key->set) {
			rfail(r, id,
			      "it is encrypted with key id %s and no key is set: set "
			      "GW_BACKUP_KEY_FILE",
			      kid);
			goto out;
		}
		if (strcmp(kid, key->id) != 0) {
			rfail(r, id,
			      "wrong key: it is encrypted with key id %s, GW_BACKUP_KEY_FILE holds "
			      "key id %s",
			      kid, key->id);
			goto out;
		}
	}
	rc = 0;
out:
	EVP_MD_CTX_free(cp.md);
	close(fd);
	return rc;
}

/* ---- streaming into a pipe ---- */

static int fd_sink(void *arg, const void *buf, size_t n)
{
	int fd = *(int *)arg;
	if (fd < 0)
		return 0; /* an authentication pass: the plaintext is dropped */
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR && !restore_stop)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* The decrypt pass: each chunk through the decrypting reader (or straight to the sink
 * for an unencrypted snapshot). */
struct stream_pass {
	const struct manifest *m;
	struct crypt_reader cr;
	int *out_fd;
	long long plain; /* unencrypted: bytes passed on */
};

static int stream_chunk(void *arg, const unsigned char *buf, size_t n, char *why, size_t whycap)
{
	struct stream_pass *sp = arg;
	if (sp->m->encrypted ? crypt_reader_update(&sp->cr, buf, n) != 0
			     : fd_sink(sp->out_fd, buf, n) != 0) {
		snprintf(why, whycap, "%s",
			 sp->m->encrypted ? sp->cr.error : "cannot pass on the data");
		return -1;
	}
	if (!sp->m->encrypted)
		sp->plain += (long long)n;
	return 0;
}

/* Decrypts the snapshot file into out_fd (-1: only authenticate it). -1 with why. */
static int stream(struct store *st, const char *id, const struct manifest *m,
		  const struct crypt_key *key, int out_fd, long long *plain, char *why,
		  size_t whycap)
{
	int fd = open_dump(st, id);
	if (fd < 0) {
		snprintf(why, whycap, "cannot open its dump: %s", strerror(errno));
		return -1;
	}
	struct stream_pass sp = {.m = m, .out_fd = &out_fd, .plain = 0};
	crypt_reader_init(&sp.cr, key, fd_sink, &out_fd);
	int rc = -1;
	*plain = 0;
	if (read_chunks(fd, stream_chunk, &sp, why, whycap) != 0)
		goto out;
	if (m->encrypted && crypt_reader_finish(&sp.cr) != 0) {
		snprintf(why, whycap, "%s", sp.cr.error);
		goto out;
	}
	*plain = m->encrypted ? sp.cr.plain_size : sp.plain;
	rc = 0;
out:
	crypt_reader_free(&sp.cr);
	close(fd);
	return rc;
}

/* ---- child processes (blocking: this is command-line work) ---- */

struct proc {
	pid_t pid;
	int in_fd;  /* our end of its stdin, -1 when it reads /dev/null */
	int out_fd; /* memfd holding its stdout and stderr */
};

static int proc_spawn(struct proc *p, const char *path, char *const argv[], char *const envp[],
		      int with_stdin)
{
	int inp[2] = {-1, -1}, err;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	p->pid = 0;
	p->in_fd = -1;
	p->out_fd = memfd_create("backup-agent-child", MFD_CLOEXEC);
	if (p->out_fd < 0) {
		log_error("memfd_create failed", LS("error", strerror(errno)));
		return -1;
	}
	if (with_stdin && pipe2(inp, O_CLOEXEC) != 0) {
		log_error("pipe failed", LS("error", strerror(errno)));
		close(p->out_fd);
		return -1;
	}
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	err = with_stdin ? posix_spawn_file_actions_adddup2(&fa, inp[0], 0)
			 : posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (!err)
		err = posix_spawn_file_actions_adddup2(&fa, p->out_fd, 1);
	if (!err)
		err = posix_spawn_file_actions_adddup2(&fa, p->out_fd, 2);
	if (!err)
		err = posix_spawnattr_setflags(
		    &attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
	if (!err)
		err = posix_spawnattr_setsigmask(&attr, &none);
	if (!err)
		err = posix_spawnattr_setsigdefault(&attr, &all);
	if (!err)
		err = posix_spawnattr_setpgroup(&attr, 0);
	if (!err)
		err = posix_spawn(&p->pid, path, &fa, &attr, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (inp[0] >= 0)
		close(inp[0]);
	if (err) {
		log_error("cannot start child process", LS("path", path),
			  LS("error", strerror(err)));
		if (inp[1] >= 0)
			close(inp[1]);
		close(p->out_fd);
		p->out_fd = -1;
		p->pid = 0;
		return -1;
	}
	p->in_fd = inp[1];
	return 0;
}

/* Waits for the child (killing it first when kill_it); describes how it ended and what
 * it printed in out. Returns 0 when it exited 0. */
static int proc_wait(struct proc *p, int kill_it, char *out, size_t cap)
{
	int st = -1;
	if (p->in_fd >= 0 && !kill_it)
		close(p->in_fd);
	if (kill_it && p->pid > 0)
		kill(-p->pid, SIGKILL);
	if (p->in_fd >= 0 && kill_it)
		close(p->in_fd);
	p->in_fd = -1;
	while (p->pid > 0 && waitpid(p->pid, &st, 0) < 0 && errno == EINTR)
		;
	p->pid = 0;
	int n = 0;
	if (WIFEXITED(st))
		n = snprintf(out, cap, "exited with status %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		n = snprintf(out, cap, "killed by signal %d", WTERMSIG(st));
	else
		n = snprintf(out, cap, "ended with status %d", st);
	char text[CHILD_OUT_MAX];
	ssize_t got = p->out_fd >= 0 ? pread(p->out_fd, text, sizeof text - 1, 0) : -1;
	if (got > 0 && n > 0 && (size_t)n + 3 < cap) {
		text[got] = 0;
		/* One line for logs and the audit log; control bytes become spaces. */
		for (ssize_t i = 0; i < got; i++)
			if ((unsigned char)text[i] < 0x20 || text[i] == 0x7f)
				text[i] = (text[i] == '\n') ? '|' : ' ';
		snprintf(out + n, cap - (size_t)n, ": %s", text);
	}
	if (p->out_fd >= 0)
		close(p->out_fd);
	p->out_fd = -1;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* ---- databases ---- */

static PGconn *connect_db(const char *url, const char *dbname, char *why, size_t whycap)
{
	const char *keys[] = {"dbname", "dbname", "fallback_application_name", "connect_timeout",
			      NULL};
	const char *vals[] = {url, dbname, "backup-agent", CONNECT_TIMEOUT_S, NULL};
	if (!dbname) {
		keys[1] = "fallback_application_name";
		vals[1] = "backup-agent";
		keys[2] = NULL;
		vals[2] = NULL;
	}
	PGconn *c = PQconnectdbParams(keys, vals, 1);
	if (!c || PQstatus(c) != CONNECTION_OK) {
		pgq_fold(why, whycap, c ? PQerrorMessage(c) : "out of memory");
		PQfinish(c);
		return NULL;
	}
	return c;
}

static int exec_cmd(PGconn *c, const char *sql, char *why, size_t whycap)
{
	PGresult *res = PQexec(c, sql);
	int ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
	if (!ok)
		pgq_fold(why, whycap, PQresultErrorMessage(res));
	PQclear(res);
	return ok ? 0 : -1;
}

/* The audit section of the database c is connected to (same SQL as at snapshot time). */
static char *audit_state(PGconn *c, char *why, size_t whycap)
{
	PGresult *cat = PQexec(c, auditstate_catalog_sql());
	PGresult *heads = NULL;
	char *sql = NULL, *js = NULL;
	const char *source;
	if (PQresultStatus(cat) != PGRES_TUPLES_OK) {
		pgq_fold(why, whycap, PQresultErrorMessage(cat));
		goto out;
	}
	if (auditstate_heads_sql(cat, &sql, &source) != 0) {
		snprintf(why, whycap, "out of memory");
		goto out;
	}
	if (sql) {
		heads = PQexec(c, sql);
		if (PQresultStatus(heads) != PGRES_TUPLES_OK) {
			pgq_fold(why, whycap, PQresultErrorMessage(heads));
			goto out;
		}
	}
	js = auditstate_json(cat, heads, source);
	if (!js)
		snprintf(why, whycap, "out of memory");
out:
	free(sql);
	PQclear(cat);
	PQclear(heads);
	return js;
}

/* conninfo of src with dbname replaced (and, with_password, the password): for a child's
 * argv (without) or its environment (with). malloc'd; the caller wipes and frees. */
static char *conninfo_for(const struct source *src, const char *dbname, int with_password)
{
	char *s = NULL;
	int n;
	if (with_password && src->password) {
		size_t pl = strlen(src->password);
		char *q = malloc(2 * pl + 1);
		if (!q)
			return NULL;
		size_t k = 0;
		for (const char *c = src->password; *c; c++) {
			if (*c == '\\' || *c == '\'')
				q[k++] = '\\';
			q[k++] = *c;
		}
		q[k] = 0;
		n = asprintf(&s, "%s dbname='%s' password='%s'", src->conninfo, dbname, q);
		explicit_bzero(q, k);
		free(q);
	} else {
		n = asprintf(&s, "%s dbname='%s'", src->conninfo, dbname);
	}
	return n < 0 ? NULL : s;
}

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

/* pg_restore reading the decrypted stream from a pipe. extra: more flags, NULL-ended. */
static int run_pg_restore(const struct settings *cfg, struct store *st, const char *id,
			  const struct manifest *m, const struct source *src, const char *dbname,
			  const char *const *extra, struct restore_result *r)
{
	char *ci = conninfo_for(src, dbname, 0);
	char *dbarg = NULL;
	char *argv[16];
	int k = 0, rc = -1;
	char **env = source_child_env(src, 1);
	if (!ci || !env || asprintf(&dbarg, "--dbname=%s", ci) < 0) {
		dbarg = NULL;
		rfail(r, id, "out of memory");
		goto out;
	}
	argv[k++] = (char *)cfg->pg_restore;
	argv[k++] = "--single-transaction";
	argv[k++] = "--exit-on-error";
	argv[k++] = "--no-password";
	for (; extra && *extra && k < 14; extra++)
		argv[k++] = (char *)*extra;
	argv[k++] = dbarg;
	argv[k] = NULL;
	struct proc p;
	if (proc_spawn(&p, cfg->pg_restore, argv, env, 1) != 0) {
		rfail(r, id, "cannot start %s", cfg->pg_restore);
		goto out;
	}
	char why[512], status[CHILD_OUT_MAX + 64];
	if (stream(st, id, m, &cfg->key, p.in_fd, &r->plain_size, why, sizeof why) != 0) {
		int serr = errno;
		/* Killed before its input ended: its single transaction never commits. */
		proc_wait(&p, 1, status, sizeof status);
		if (serr == EPIPE)
			rfail(r, id, "pg_restore stopped reading: %s", status);
		else
			rfail(r, id, "%s; pg_restore was stopped, nothing was committed", why);
		goto out;
	}
	if (proc_wait(&p, 0, status, sizeof status) != 0) {
		rfail(r, id, "pg_restore %s", status);
		goto out;
	}
	rc = 0;
out:
	wipe_free(ci);
	wipe_free(dbarg);
	source_env_free(env);
	return rc;
}

/* `auditor verify` against dbname, when the auditor has that subcommand. 0 when it
 * passed or could not run (r->chain says which); -1 when it found a problem. */
static int run_auditor_verify(const struct settings *cfg, const char *id, const struct source *src,
			      const char *dbname, struct restore_result *r)
{
	char out[CHILD_OUT_MAX + 64];
	if (!cfg->auditor[0]) {
		snprintf(r->chain, sizeof r->chain,
			 "not run: no auditor binary found (set GW_AUDITOR_BIN)");
		return 0;
	}
	char **env = source_child_env(src, 0);
	if (!env) {
		rfail(r, id, "out of memory");
		return -1;
	}
	char *help_argv[] = {(char *)cfg->auditor, "--help", NULL};
	struct proc p;
	int rc = -1;
	if (proc_spawn(&p, cfg->auditor, help_argv, env, 0) != 0) {
		rfail(r, id, "cannot start %s", cfg->auditor);
		goto out;
	}
	proc_wait(&p, 0, out, sizeof out);
	if (!strstr(out, " verify")) {
		snprintf(r->chain, sizeof r->chain,
			 "not run: %.200s has no `verify` subcommand yet (row counts and audit "
			 "heads were compared instead)",
			 cfg->auditor);
		rc = 0;
		goto out;
	}
	/* The scratch URL travels in the child's environment, as GW_DATABASE_URL. */
	source_env_free(env);
	env = NULL;
	char *url = conninfo_for(src, dbname, 1);
	char *var = NULL;
	if (!url || asprintf(&var, "GW_DATABASE_URL=%s", url) < 0) {
		wipe_free(url);
		rfail(r, id, "out of memory");
		goto out;
	}
	wipe_free(url);
	env = source_child_env(src, 0);
	size_t n = 0;
	while (env && env[n])
		n++;
	char **env2 = env ? realloc(env, (n + 4) * sizeof *env) : NULL;
	if (!env2) {
		wipe_free(var);
		rfail(r, id, "out of memory");
		goto out;
	}
	env = env2;
	env[n++] = var;
	env[n++] = strdup("GW_ENV_FILE=/dev/null");
	env[n++] = strdup("GW_LOG_LEVEL=warn");
	env[n] = NULL;
	char *verify_argv[] = {(char *)cfg->auditor, "verify", NULL};
	if (!env[n - 1] || !env[n - 2]) {
		rfail(r, id, "out of memory");
		goto out;
	}
	if (proc_spawn(&p, cfg->auditor, verify_argv, env, 0) != 0) {
		rfail(r, id, "cannot start %s verify", cfg->auditor);
		goto out;
	}
	if (proc_wait(&p, 0, out, sizeof out) != 0) {
		rfail(r, id, "auditor verify on the restored copy failed: %s", out);
		snprintf(r->chain, sizeof r->chain, "auditor verify failed");
		goto out;
	}
	snprintf(r->chain, sizeof r->chain, "auditor verify passed");
	r->chain_checked = 1;
	rc = 0;
out:
	source_env_free(env);
	return rc;
}

int restore_verify(const struct settings *cfg, struct store *st, const char *id,
		   struct restore_result *r)
{
	struct manifest *m = malloc(sizeof *m);
	struct source src = {0};
	PGconn *admin = NULL, *scratch = NULL;
	char why[512], sql[160];
	int64_t start = wire_now_us();
	memset(r, 0, sizeof *r);
	r->scratch_dropped = 1;
	if (!m) {
		rfail(r, id, "out of memory");
		return -1;
	}
	if (restore_check(st, id, &cfg->key, m, r) != 0)
		goto out;
	if (source_parse(&src, cfg->admin_url, why, sizeof why) != 0) {
		rfail(r, id, "GW_BACKUP_ADMIN_URL cannot be used: %s", why);
		goto out;
	}
	unsigned char rnd[6];
	if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
		rfail(r, id, "getrandom failed");
		goto out;
	}
	snprintf(r->scratch, sizeof r->scratch, "gw_verify_%02x%02x%02x%02x%02x%02x", rnd[0],
		 rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
	admin = connect_db(cfg->admin_url, NULL, why, sizeof why);
	if (!admin) {
		rfail(r, id, "cannot connect with GW_BACKUP_ADMIN_URL: %s", why);
		goto out;
	}
	/* template0: nothing local to template1 can collide with the restored objects. */
	snprintf(sql, sizeof sql, "CREATE DATABASE %s TEMPLATE template0", r->scratch);
	if (exec_cmd(admin, sql, why, sizeof why) != 0) {
		rfail(r, id, "cannot create the scratch database %s: %s", r->scratch, why);
		goto out;
	}
	r->scratch_dropped = 0;
	log_info("restoring into a scratch database", LS("snapshot_id", id),
		 LS("database", r->scratch));
	static const char *const flags[] = {"--no-owner", "--no-privileges", NULL};
	if (run_pg_restore(cfg, st, id, m, &src, r->scratch, flags, r) != 0)
		goto out;
	scratch = connect_db(cfg->admin_url, r->scratch, why, sizeof why);
	if (!scratch) {
		rfail(r, id, "cannot connect to the scratch database: %s", why);
		goto out;
	}
	char *actual = audit_state(scratch, why, sizeof why);
	if (!actual) {
		rfail(r, id, "cannot read the restored audit tables: %s", why);
		goto out;
	}
	if (m->audit[0] && auditstate_compare(m->audit, actual, why, sizeof why) != 0) {
		free(actual);
		rfail(r, id, "the restored copy does not match the manifest: %s", why);
		goto out;
	}
	free(actual);
	PQfinish(scratch);
	scratch = NULL;
	if (run_auditor_verify(cfg, id, &src, r->scratch, r) != 0)
		goto out;
	r->ok = 1;
out:
	if (scratch)
		PQfinish(scratch);
	if (admin && !r->scratch_dropped) {
		/* Always, also after a failure: a scratch copy is a full copy of the audit log. */
		snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", r->scratch);
		if (exec_cmd(admin, sql, why, sizeof why) == 0) {
			r->scratch_dropped = 1;
		} else {
			log_error("cannot drop the scratch database: drop it by hand",
				  LS("snapshot_id", id), LS("database", r->scratch),
				  LS("error", why));
			if (r->ok) {
				r->ok = 0;
				snprintf(r->error, sizeof r->error,
					 "snapshot %s: verified, but the scratch database %s could "
					 "not be dropped: %s",
					 id, r->scratch, why);
			}
		}
	}
	PQfinish(admin);
	source_free(&src);
	free(m);
	r->duration_ms = (wire_now_us() - start) / 1000;
	return r->ok ? 0 : -1;
}

int restore_into(const struct settings *cfg, struct store *st, const char *id,
		 const char *target_url, int force, int no_owner, struct restore_result *r)
{
	struct manifest *m = malloc(sizeof *m);
	struct source src = {0};
	PGconn *c = NULL;
	char why[512];
	int64_t start = wire_now_us();
	memset(r, 0, sizeof *r);
	r->scratch_dropped = 1;
	if (!m) {
		rfail(r, id, "out of memory");
		return -1;
	}
	if (restore_check(st, id, &cfg->key, m, r) != 0)
		goto out;
	if (source_parse(&src, target_url, why, sizeof why) != 0) {
		rfail(r, id, "the --target URL cannot be used: %s", why);
		goto out;
	}
	c = connect_db(target_url, NULL, why, sizeof why);
	if (!c) {
		rfail(r, id, "cannot connect to the target: %s", why);
		goto out;
	}
	PGresult *res =
	    PQexec(c, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = "
		      "c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN "
		      "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE "
		      "'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'");
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		pgq_fold(why, sizeof why, PQresultErrorMessage(res));
		PQclear(res);
		rfail(r, id, "cannot inspect the target: %s", why);
		goto out;
	}
	long long tables = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	char dbname[128];
	snprintf(dbname, sizeof dbname, "%s", PQdb(c) ? PQdb(c) : "");
	if (tables > 0 && !force) {
		rfail(r, id,
		      "refusing to restore into database %s: it is not empty (%lld user tables); "
		      "pass --force to replace what the snapshot holds",
		      dbname, tables);
		goto out;
	}
	/* The connection is kept only for the check after the restore. */
	const char *flags[6];
	int k = 0;
	if (force) {
		flags[k++] = "--clean";
		flags[k++] = "--if-exists";
	}
	if (no_owner) {
		flags[k++] = "--no-owner";
		flags[k++] = "--no-privileges";
	}
	flags[k] = NULL;
	log_info("restoring", LS("snapshot_id", id), LS("database", dbname),
		 LI("user_tables_before", tables));
	if (run_pg_restore(cfg, st, id, m, &src, dbname, flags, r) != 0)
		goto out;
	char *actual = audit_state(c, why, sizeof why);
	if (!actual) {
		rfail(r, id, "restored, but the audit tables cannot be read back: %s", why);
		goto out;
	}
	if (m->audit[0] && auditstate_compare(m->audit, actual, why, sizeof why) != 0) {
		free(actual);
		rfail(r, id, "restored, but the copy does not match the manifest: %s", why);
		goto out;
	}
	free(actual);
	r->ok = 1;
out:
	PQfinish(c);
	source_free(&src);
	free(m);
	r->duration_ms = (wire_now_us() - start) / 1000;
	return r->ok ? 0 : -1;
}

int restore_decrypt(const struct settings *cfg, struct store *st, const char *id, int out_fd,
		    struct restore_result *r)
{
	struct manifest *m = malloc(sizeof *m);
	char why[512];
	int64_t start = wire_now_us();
	memset(r, 0, sizeof *r);
	r->scratch_dropped = 1;
	if (!m) {
		rfail(r, id, "out of memory");
		return -1;
	}
	if (isatty(out_fd)) {
		rfail(r, id,
		      "refusing to write a database archive to a terminal: redirect stdout "
		      "(backup-agent decrypt ID > file.dump)");
		goto out;
	}
	if (restore_check(st, id, &cfg->key, m, r) != 0)
		goto out;
	/* Nothing reaches the output before every segment authenticated: there is no
	 * transaction to roll back on a file. Decryption is cheap next to the disk. */
	if (stream(st, id, m, &cfg->key, -1, &r->plain_size, why, sizeof why) != 0) {
		rfail(r, id, "%s (nothing was written)", why);
		goto out;
	}
	if (stream(st, id, m, &cfg->key, out_fd, &r->plain_size, why, sizeof why) != 0) {
		rfail(r, id, "%s (the output is incomplete: discard it)", why);
		goto out;
	}
	r->ok = 1;
out:
	free(m);
	r->duration_ms = (wire_now_us() - start) / 1000;
	return r->ok ? 0 : -1;
}
