/* backup-agent: manifests (codec, crash-safe write, read back), snapshot ids, and the
 * listing's verdicts on a directory holding good, damaged and temporary files. */
#include "check.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "manifest.h"
#include "store.h"

static char root[64];

static void put_file(struct store *st, const char *name, const char *data, size_t n)
{
	int fd = openat(st->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0);
	if (fd < 0)
		return;
	CHECK(write(fd, data, n) == (ssize_t)n);
	close(fd);
}

static int count_files(const char *dir)
{
	DIR *d = opendir(dir);
	int n = 0;
	struct dirent *de;
	if (!d)
		return -1;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static void sample(struct manifest *m, const char *id, long long size)
{
	memset(m, 0, sizeof *m);
	snprintf(m->id, sizeof m->id, "%s", id);
	snprintf(m->created_at, sizeof m->created_at, "2026-11-23T14:25:01Z");
	snprintf(m->format, sizeof m->format, "%s", MANIFEST_FORMAT_PG_DUMP_CUSTOM);
	snprintf(m->database, sizeof m->database, "gateway");
	snprintf(m->server_version, sizeof m->server_version, "15.18 (Debian 15.18-0+deb12u1)");
	m->server_version_num = 150018;
	m->size = size;
	snprintf(m->sha256, sizeof m->sha256,
		 "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
	snprintf(m->tool_version, sizeof m->tool_version, "pg_dump (PostgreSQL) 15.18");
	m->duration_ms = 1234;
	m->encrypted = 1;
	snprintf(m->encryption, sizeof m->encryption, "gw-aes-256-gcm-seg-v1");
	snprintf(m->key_id, sizeof m->key_id, "0123456789abcdef");
	m->plain_size = size > 100 ? size - 100 : 0;
	snprintf(m->agent_version, sizeof m->agent_version, "%s", MANIFEST_AGENT_VERSION);
	snprintf(m->audit, sizeof m->audit,
		 "{\"source\":\"partition_offsets\",\"tables\":{\"audit.audit_events\":12}}");
}

static void test_ids(void)
{
	char id[STORE_ID_LEN + 1], id2[STORE_ID_LEN + 1];
	time_t t = 1795443901; /* 2026-11-23T14:25:01Z */
	CHECK_EQ_INT(store_id_new(t, id), 0);
	CHECK_EQ_INT(strlen(id), STORE_ID_LEN);
	CHECK(strncmp(id, "20261123T142501Z-", 17) == 0);
	CHECK(store_id_valid(id));
	CHECK_EQ_INT(store_id_new(t, id2), 0);
	CHECK(strcmp(id, id2) != 0); /* 24 random bits: a repeat is a broken generator */
	CHECK(!store_id_valid(""));
	CHECK(!store_id_valid("20261123T142501Z-a1b2c"));
	CHECK(!store_id_valid("20261123T142501Z-a1b2c3d"));
	CHECK(!store_id_valid("20261123T142501Z-A1B2C3"));
	CHECK(!store_id_valid("20261123T142501Za1b2c3x"));
	CHECK(!store_id_valid("2026112xT142501Z-a1b2c3"));
	CHECK(!store_id_valid("../../etc/passwd-123456"));
	CHECK(store_id_valid("20261123T142501Z-a1b2c3"));

	char buf[32];
	time_t back;
	manifest_time_format(t, buf, sizeof buf);
	CHECK_EQ_STR(buf, "2026-11-23T14:25:01Z");
	CHECK_EQ_INT(manifest_time_parse(buf, &back), 0);
	CHECK_EQ_INT(back, t);
	CHECK(manifest_time_parse("2026-11-23 14:25:01Z", &back) != 0);
	CHECK(manifest_time_parse("2026-11-23T14:25:01", &back) != 0);
	CHECK(manifest_time_parse("2026-11-23T14:25:01Z ", &back) != 0);
	CHECK(manifest_time_parse("2026-13-23T14:25:01Z", &back) != 0);
	CHECK(manifest_time_parse("+026-11-23T14:25:01Z", &back) != 0);
}

static void test_codec(void)
{
	struct manifest m, d;
	char why[160];
	sample(&m, "20261123T142501Z-a1b2c3", 4242);
	char *js = manifest_encode(&m);
	CHECK(js != NULL);
	if (!js)
		return;
	CHECK_EQ_INT(manifest_decode(js, strlen(js), &d, why, sizeof why), 0);
	CHECK(memcmp(&m, &d, sizeof m) == 0);
	CHECK(strstr(js, "\"encrypted\": true") != NULL);
	CHECK(strstr(js, "\"key_id\": \"0123456789abcdef\"") != NULL);
	CHECK(strstr(js, "\"audit.audit_events\": 12") != NULL);
	free(js);

	/* Encryption fields must agree, and the audit section must be an object. */
	sample(&m, "20261123T142501Z-a1b2c3", 4242);
	m.audit[0] = '[';
	m.audit[1] = ']';
	m.audit[2] = 0;
	CHECK(manifest_encode(&m) == NULL);
	sample(&m, "20261123T142501Z-a1b2c3", 4242);
	m.encrypted = 0;
	js = manifest_encode(&m);
	CHECK(js != NULL);
	CHECK_EQ_INT(manifest_decode(js, js ? strlen(js) : 0, &d, why, sizeof why), -1);
	CHECK(strstr(why, "disagree") != NULL);
	CHECK(strstr(js, "\"format\": \"pg_dump-custom\"") != NULL);
	free(js);

	/* The encoder refuses what the decoder would. */
	sample(&m, "20261123T142501Z-a1b2c3", 1);
	m.sha256[0] = 'G';
	CHECK(manifest_encode(&m) == NULL);
	sample(&m, "not-an-id", 1);
	CHECK(manifest_encode(&m) == NULL);
	sample(&m, "20261123T142501Z-a1b2c3", -1);
	CHECK(manifest_encode(&m) == NULL);

	const char *good = "{\"manifest_version\":1,\"id\":\"20261123T142501Z-a1b2c3\","
			   "\"created_at\":\"2026-11-23T14:25:01Z\",\"format\":\"pg_dump-custom\","
			   "\"database\":\"gateway\",\"server_version\":\"15.18\","
			   "\"server_version_num\":150018,\"size\":10,\"sha256\":"
			   "\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\","
			   "\"tool_version\":\"pg_dump (PostgreSQL) 15.18\",\"duration_ms\":5,"
			   "\"encrypted\":false,\"future_field\":[1,2]}";
	CHECK_EQ_INT(manifest_decode(good, strlen(good), &d, why, sizeof why), 0);
	CHECK_EQ_INT(d.size, 10);
	CHECK_EQ_STR(d.database, "gateway");
	/* Version 1 (no encryption fields) still reads: unencrypted, sizes unknown. */
	CHECK_EQ_STR(d.encryption, "none");
	CHECK_EQ_INT(d.plain_size, -1);

	/* Each of these breaks one rule. */
	struct {
		const char *from, *to, *why;
	} bad[] = {
	    {"\"size\":10", "\"size\":-1", "\"size\""},
	    {"\"size\":10", "\"size\":\"10\"", "\"size\""},
	    {"\"manifest_version\":1", "\"manifest_version\":3", "not supported"},
	    {"\"encrypted\":false", "\"encrypted\":0", "\"encrypted\""},
	    {"\"format\":\"pg_dump-custom\"", "\"format\":\"tar\"", "format"},
	    {"9f86d081", "9F86D081", "sha256"},
	    {"\"id\":\"20261123T142501Z-a1b2c3\"", "\"id\":\"x\"", "\"id\""},
	    {"14:25:01Z", "14:25:01+01:00", "created_at"},
	    {"\"tool_version\"", "\"tool_versio\"", "tool_version"},
	    {"\"duration_ms\":5", "\"duration_ms\":5,\"duration_ms\":6", "JSON"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char buf[2048];
		const char *at = strstr(good, bad[i].from);
		CHECK(at != NULL);
		if (!at)
			continue;
		snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - good), good, bad[i].to,
			 at + strlen(bad[i].from));
		why[0] = 0;
		int rc = manifest_decode(buf, strlen(buf), &d, why, sizeof why);
		CHECK_EQ_INT(rc, -1);
		if (!strstr(why, bad[i].why))
			printf("case %zu: why = %s\n", i, why);
		CHECK(strstr(why, bad[i].why) != NULL);
	}
	CHECK_EQ_INT(manifest_decode("[]", 2, &d, why, sizeof why), -1);
	CHECK_EQ_INT(manifest_decode("{", 1, &d, why, sizeof why), -1);
}

static void test_write_read(void)
{
	char dir[128];
	struct store st;
	struct stat sb;
	snprintf(dir, sizeof dir, "%s/a/backups", root);
	CHECK_EQ_INT(store_open(&st, dir, 1), 0); /* makes the parents too */
	CHECK(stat(dir, &sb) == 0 && (sb.st_mode & 0777) == 0700);

	struct manifest m, r;
	char why[160];
	sample(&m, "20261123T142501Z-0000aa", 77);
	CHECK_EQ_INT(store_write_manifest(&st, &m), 0);
	CHECK_EQ_INT(store_read_manifest(&st, m.id, &r, why, sizeof why), 0);
	CHECK(memcmp(&m, &r, sizeof m) == 0);
	/* Only the final file: the temporary one was renamed away. */
	CHECK_EQ_INT(count_files(dir), 1);
	char path[256];
	snprintf(path, sizeof path, "%s/%s.json", dir, m.id);
	CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600);
	/* A second write of the same id never replaces the first. */
	m.size = 78;
	CHECK_EQ_INT(store_write_manifest(&st, &m), -1);
	CHECK_EQ_INT(store_read_manifest(&st, m.id, &r, why, sizeof why), 0);
	CHECK_EQ_INT(r.size, 77);
	CHECK_EQ_INT(count_files(dir), 1);
	/* A manifest must name its own id. */
	CHECK_EQ_INT(store_read_manifest(&st, "20261123T142501Z-0000ab", &r, why, sizeof why), -1);
	store_close(&st);
}

static void test_listing(void)
{
	char dir[128];
	struct store st;
	snprintf(dir, sizeof dir, "%s/list", root);
	CHECK_EQ_INT(store_open(&st, dir, 1), 0);
	struct store_entry *v;
	size_t n;
	CHECK_EQ_INT(store_list(&st, &v, &n), 0);
	CHECK_EQ_INT(n, 0);
	free(v);

	const char *ok = "20261120T000000Z-00000a", *mismatch = "20261121T000000Z-00000b",
		   *missing = "20261122T000000Z-00000c", *corrupt = "20261123T000000Z-00000d",
		   *orphan = "20261124T000000Z-00000e", *wrongid = "20261119T000000Z-00000f";
	struct manifest m;
	char name[STORE_NAME_MAX];
	static const char dump[] = "PGDMP0123456789";

	sample(&m, ok, sizeof dump - 1);
	CHECK_EQ_INT(store_write_manifest(&st, &m), 0);
	store_dump_name(ok, name, sizeof name);
	put_file(&st, name, dump, sizeof dump - 1);

	sample(&m, mismatch, sizeof dump - 1);
	CHECK_EQ_INT(store_write_manifest(&st, &m), 0);
	store_dump_name(mismatch, name, sizeof name);
	put_file(&st, name, dump, sizeof dump - 2);

	sample(&m, missing, 5);
	CHECK_EQ_INT(store_write_manifest(&st, &m), 0);

	store_manifest_name(corrupt, name, sizeof name);
	put_file(&st, name, "{\"id\": tru", 10);
	store_dump_name(corrupt, name, sizeof name);
	put_file(&st, name, dump, sizeof dump - 1);

	store_dump_name(orphan, name, sizeof name);
	put_file(&st, name, dump, 3);

	/* A well-formed manifest filed under another id. */
	sample(&m, ok, 1);
	char *js = manifest_encode(&m);
	store_manifest_name(wrongid, name, sizeof name);
	put_file(&st, name, js, strlen(js));
	free(js);

	/* Temporary files and strangers are not snapshots. */
	store_tmp_name("20261125T000000Z-000010", "", name, sizeof name);
	put_file(&st, name, dump, 4);
	store_tmp_name("20261125T000000Z-000010", ".json", name, sizeof name);
	put_file(&st, name, "{}", 2);
	CHECK(name[0] == '.');
	put_file(&st, "notes.txt", "hi", 2);
	put_file(&st, "20261125T000000Z-00001.dump", "x", 1);

	CHECK_EQ_INT(store_list(&st, &v, &n), 0);
	CHECK_EQ_INT(n, 6);
	if (n == 6) {
		/* Newest first. */
		CHECK_EQ_STR(v[0].id, orphan);
		CHECK_EQ_INT(v[0].status, STORE_NO_MANIFEST);
		CHECK_EQ_INT(v[0].actual_size, 3);
		CHECK_EQ_STR(v[1].id, corrupt);
		CHECK_EQ_INT(v[1].status, STORE_CORRUPT);
		CHECK(strstr(v[1].why, "not JSON") != NULL);
		CHECK_EQ_STR(v[2].id, missing);
		CHECK_EQ_INT(v[2].status, STORE_MISSING);
		CHECK_EQ_INT(v[2].actual_size, -1);
		CHECK_EQ_STR(v[3].id, mismatch);
		CHECK_EQ_INT(v[3].status, STORE_SIZE_MISMATCH);
		CHECK_EQ_INT(v[3].actual_size, (long long)sizeof dump - 2);
		CHECK_EQ_INT(v[3].m.size, (long long)sizeof dump - 1);
		CHECK_EQ_STR(v[4].id, ok);
		CHECK_EQ_INT(v[4].status, STORE_OK);
		CHECK(v[4].has_manifest);
		CHECK_EQ_STR(v[4].m.database, "gateway");
		CHECK_EQ_STR(v[5].id, wrongid);
		CHECK_EQ_INT(v[5].status, STORE_CORRUPT);
		CHECK(strstr(v[5].why, "names snapshot") != NULL);
	}
	CHECK_EQ_STR(store_status_name(STORE_SIZE_MISMATCH), "SIZE MISMATCH");
	CHECK_EQ_STR(store_status_name(STORE_MISSING), "MISSING");
	free(v);

	/* Publishing never replaces a final name, and store_remove takes files back. */
	store_tmp_name(ok, "", name, sizeof name);
	put_file(&st, name, "new", 3);
	char final[STORE_NAME_MAX];
	store_dump_name(ok, final, sizeof final);
	CHECK_EQ_INT(store_publish(&st, name, final), -1);
	CHECK_EQ_INT(store_remove(&st, name), 0);
	CHECK_EQ_INT(store_remove(&st, name), 0); /* already gone is fine */
	CHECK_EQ_INT(store_list(&st, &v, &n), 0);
	CHECK(n == 6 && v[4].status == STORE_OK);
	free(v);
	store_close(&st);
}

int main(void)
{
	snprintf(root, sizeof root, "/tmp/test_backup_XXXXXX");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 1;
	}
	test_ids();
	test_codec();
	test_write_read();
	test_listing();
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
	if (system(cmd) != 0)
		printf("could not remove %s\n", root);
	return check_done();
}
