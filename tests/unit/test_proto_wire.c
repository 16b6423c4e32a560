/* Unit tests for the wire contract codec, credential sealing and config secrets. */
#include "check.h"
#include "config.h"
#include "log.h"
#include "openai.h"
#include "seal.h"
#include "wire.h"

#include <jansson.h>
#include <stdlib.h>
#include <unistd.h>

static struct gw_meta meta;
static struct gw_meta out;

static void test_roundtrip(void)
{
	memset(&meta, 0, sizeof meta);
	CHECK(wire_id_new(meta.id) == 0);
	CHECK(wire_id_valid(meta.id));
	meta.deadline_ms = 1790000000123;
	meta.reply_partition = 3;
	snprintf(meta.route, sizeof meta.route, "/v1/chat/completions");
	snprintf(meta.model, sizeof meta.model, "mock-llm");
	meta.stream = 1;
	snprintf(meta.principal, sizeof meta.principal, "alice");
	meta.status = 429;
	meta.seq = 7;
	meta.final = 1;
	meta.cred_len = 5;
	memcpy(meta.cred, "\x01\x00\xff\x10\x02", 5);
	unsigned all = GW_F_ID | GW_F_DEADLINE | GW_F_REPLY | GW_F_ROUTE | GW_F_MODEL |
		       GW_F_STREAM | GW_F_PRINCIPAL | GW_F_STATUS | GW_F_SEQ | GW_F_FINAL |
		       GW_F_CRED;
	rd_kafka_headers_t *h = rd_kafka_headers_new(16);
	CHECK(wire_encode(&meta, all, h) == 0);
	const char *reason = "x";
	CHECK(wire_decode_headers(h, all, &out, &reason) == 0);
	CHECK(reason == NULL);
	CHECK_EQ_STR(out.id, meta.id);
	CHECK_EQ_INT(out.deadline_ms, meta.deadline_ms);
	CHECK_EQ_INT(out.reply_partition, 3);
	CHECK_EQ_STR(out.route, "/v1/chat/completions");
	CHECK_EQ_STR(out.model, "mock-llm");
	CHECK_EQ_INT(out.stream, 1);
	CHECK_EQ_INT(out.status, 429);
	CHECK_EQ_INT(out.seq, 7);
	CHECK_EQ_INT(out.final, 1);
	CHECK_EQ_INT(out.cred_len, 5);
	CHECK(memcmp(out.cred, meta.cred, 5) == 0);
	CHECK_EQ_INT(out.present, all);
	/* Requiring a field that is absent fails. */
	CHECK(wire_decode_headers(h, all | GW_F_HINT, &out, &reason) == -1);
	CHECK_EQ_STR(reason, "missing required header");
	rd_kafka_headers_destroy(h);
}

static int decode_one(const char *name, const char *value, unsigned required, const char **reason)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(4);
	rd_kafka_header_add(h, GW_H_VERSION, -1, "1.0", -1);
	rd_kafka_header_add(h, name, -1, value, -1);
	int rc = wire_decode_headers(h, required, &out, reason);
	rd_kafka_headers_destroy(h);
	return rc;
}

static void test_rejects(void)
{
	const char *reason;
	CHECK(decode_one(GW_H_ID, "0123456789abcdef0123456789abcdef", GW_F_ID, &reason) == 0);
	CHECK(decode_one(GW_H_ID, "0123456789ABCDEF0123456789abcdef", GW_F_ID, &reason) == -1);
	CHECK(decode_one(GW_H_ID, "0123456789abcdef0123456789abcde", GW_F_ID, &reason) == -1);
	CHECK(decode_one(GW_H_ID, "0123456789abcdef0123456789abcdef0", GW_F_ID, &reason) == -1);
	CHECK(decode_one(GW_H_DEADLINE, "12x", GW_F_DEADLINE, &reason) == -1);
	CHECK(decode_one(GW_H_DEADLINE, "", GW_F_DEADLINE, &reason) == -1);
	CHECK(decode_one(GW_H_DEADLINE, "99999999999999999999999", GW_F_DEADLINE, &reason) == -1);
	CHECK(decode_one(GW_H_STATUS, "99", GW_F_STATUS, &reason) == -1);
	CHECK(decode_one(GW_H_STATUS, "600", GW_F_STATUS, &reason) == -1);
	CHECK(decode_one(GW_H_STREAM, "2", GW_F_STREAM, &reason) == -1);
	CHECK(decode_one(GW_H_MODEL, "bad\nmodel", GW_F_MODEL, &reason) == -1);
	CHECK_EQ_STR(reason, "invalid header value");

	/* Version: missing, unknown major, same major with a newer minor. */
	rd_kafka_headers_t *h = rd_kafka_headers_new(2);
	CHECK(wire_decode_headers(h, 0, &out, &reason) == -1);
	CHECK_EQ_STR(reason, "missing gw-v");
	rd_kafka_header_add(h, GW_H_VERSION, -1, "2.0", -1);
	CHECK(wire_decode_headers(h, 0, &out, &reason) == -1);
	CHECK_EQ_STR(reason, "unsupported gw-v major version");
	rd_kafka_headers_destroy(h);
	h = rd_kafka_headers_new(2);
	rd_kafka_header_add(h, GW_H_VERSION, -1, "1.7", -1);
	CHECK(wire_decode_headers(h, 0, &out, &reason) == 0);
	rd_kafka_headers_destroy(h);

	/* Encoding refuses what decoding would refuse. */
	memset(&meta, 0, sizeof meta);
	snprintf(meta.id, sizeof meta.id, "nothex");
	h = rd_kafka_headers_new(2);
	CHECK(wire_encode(&meta, GW_F_ID, h) == -1);
	rd_kafka_headers_destroy(h);
}

static void test_seal(void)
{
	unsigned char key[SEAL_KEY_LEN], other[SEAL_KEY_LEN];
	CHECK(seal_key_parse("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
			     key) == 0);
	CHECK(seal_key_parse("0001", key) == -1);
	CHECK(seal_key_parse("zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
			     other) == -1);
	memcpy(other, key, sizeof key);
	other[0] ^= 1;
	const char *cred = "gw_0123456789abcdef_secretsecret";
	unsigned char sealed[256], plain[256];
	size_t sl, pl;
	CHECK(seal_encrypt(key, cred, strlen(cred), "req1", sealed, sizeof sealed, &sl) == 0);
	CHECK_EQ_INT(sl, strlen(cred) + SEAL_OVERHEAD);
	CHECK(memmem(sealed, sl, "secret", 6) == NULL);
	CHECK(seal_decrypt(key, sealed, sl, "req1", plain, sizeof plain, &pl) == 0);
	CHECK_EQ_INT(pl, strlen(cred));
	CHECK(memcmp(plain, cred, pl) == 0);
	CHECK(seal_decrypt(other, sealed, sl, "req1", plain, sizeof plain, &pl) == -1);
	CHECK(seal_decrypt(key, sealed, sl, "req2", plain, sizeof plain, &pl) == -1);
	sealed[20] ^= 0x40;
	CHECK(seal_decrypt(key, sealed, sl, "req1", plain, sizeof plain, &pl) == -1);
	CHECK(seal_decrypt(key, sealed, 10, "req1", plain, sizeof plain, &pl) == -1);
}

static void test_config_secret(void)
{
	char path[] = "/tmp/gw-secret-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	CHECK(write(fd, "s3cret\n", 7) == 7);
	close(fd);
	setenv("GW_TEST_SECRET_FILE", path, 1);
	char *v;
	size_t n;
	CHECK(config_secret("GW_TEST_SECRET", &v, &n) == 0);
	CHECK_EQ_STR(v, "s3cret");
	CHECK_EQ_INT(n, 6);
	free(v);
	setenv("GW_TEST_SECRET", "direct", 1);
	CHECK(config_secret("GW_TEST_SECRET", &v, &n) == -1); /* both set: refused */
	unsetenv("GW_TEST_SECRET_FILE");
	CHECK(config_secret("GW_TEST_SECRET", &v, &n) == 0);
	CHECK_EQ_STR(v, "direct");
	free(v);
	unlink(path);
	long long x;
	setenv("GW_TEST_INT", "12", 1);
	CHECK(config_int("GW_TEST_INT", 5, 0, 100, &x) == 0 && x == 12);
	setenv("GW_TEST_INT", "12k", 1);
	CHECK(config_int("GW_TEST_INT", 5, 0, 100, &x) == -1);
	setenv("GW_TEST_INT", "101", 1);
	CHECK(config_int("GW_TEST_INT", 5, 0, 100, &x) == -1);
	unsetenv("GW_TEST_INT");
	CHECK(config_int("GW_TEST_INT", 5, 0, 100, &x) == 0 && x == 5);
}

static void test_openai_error(void)
{
	char *s = openai_error_json("bad \"model\"", "invalid_request_error", NULL, "abc");
	json_error_t e;
	json_t *j = json_loads(s, 0, &e);
	CHECK(j != NULL);
	json_t *err = json_object_get(j, "error");
	CHECK_EQ_STR(json_string_value(json_object_get(err, "message")), "bad \"model\"");
	CHECK_EQ_STR(json_string_value(json_object_get(err, "type")), "invalid_request_error");
	CHECK(json_is_null(json_object_get(err, "code")));
	json_decref(j);
	free(s);
	CHECK_EQ_STR(openai_error_type(401), "authentication_error");
	CHECK_EQ_STR(openai_error_type(429), "rate_limit_error");
	CHECK_EQ_STR(openai_error_type(503), "server_error");
}

static void test_log_escape(void)
{
	char buf[64];
	size_t n = 0;
	log_json_escape(buf, sizeof buf, &n, "a\"b\\c\n\x01");
	buf[n] = 0;
	CHECK_EQ_STR(buf, "a\\\"b\\\\c\\n\\u0001");
	n = 0;
	log_json_escape(buf, 8, &n, "0123456789");
	CHECK(n < 8);
}

int main(void)
{
	log_set_level(LOG_ERROR);
	test_roundtrip();
	test_rejects();
	test_seal();
	test_config_secret();
	test_openai_error();
	test_log_escape();
	return check_done();
}
