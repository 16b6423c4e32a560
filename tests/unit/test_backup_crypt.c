/* backup-agent: the segmented AES-256-GCM format round-trips at every size and chunking,
 * and a wrong key, a flipped bit, a truncation (inside a segment or at a boundary),
 * trailing bytes and swapped segments are each refused before any of their plaintext. */
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypt.h"

struct buf {
	unsigned char *p;
	size_t n, cap;
};

static int buf_sink(void *arg, const void *data, size_t n)
{
	struct buf *b = arg;
	if (b->n + n > b->cap) {
		size_t cap = (b->n + n) * 2;
		unsigned char *np = realloc(b->p, cap);
		if (!np)
			return -1;
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->n, data, n);
	b->n += n;
	return 0;
}

static void key_of(struct crypt_key *k, char c)
{
	char hexkey[65], why[160];
	memset(hexkey, c, 64);
	hexkey[64] = 0;
	CHECK_EQ_INT(0, crypt_key_parse(k, hexkey, 64, why, sizeof why));
}

/* Encrypts n pattern bytes with segment size seg, fed in chunks of step. */
static void encrypt(const struct crypt_key *k, size_t seg, size_t n, size_t step, struct buf *out)
{
	struct crypt_writer w;
	memset(out, 0, sizeof *out);
	CHECK_EQ_INT(0, crypt_writer_init(&w, k, seg, buf_sink, out));
	unsigned char chunk[4096];
	size_t done = 0;
	while (done < n) {
		size_t t = n - done < step ? n - done : step;
		if (t > sizeof chunk)
			t = sizeof chunk;
		for (size_t i = 0; i < t; i++)
			chunk[i] = (unsigned char)((done + i) * 7 + 3);
		CHECK_EQ_INT(0, crypt_writer_update(&w, chunk, t));
		done += t;
	}
	CHECK_EQ_INT(0, crypt_writer_finish(&w));
	crypt_writer_free(&w);
}

/* Decrypts in chunks of step; returns 0 on success with the plaintext in out. */
static int decrypt(const struct crypt_key *k, const struct buf *in, size_t step, struct buf *out,
		   char *why, size_t whycap)
{
	struct crypt_reader r;
	memset(out, 0, sizeof *out);
	crypt_reader_init(&r, k, buf_sink, out);
	int rc = 0;
	for (size_t off = 0; off < in->n && rc == 0; off += step)
		rc = crypt_reader_update(&r, in->p + off, in->n - off < step ? in->n - off : step);
	if (rc == 0)
		rc = crypt_reader_finish(&r);
	snprintf(why, whycap, "%s", r.error);
	crypt_reader_free(&r);
	return rc;
}

static int pattern_ok(const struct buf *b, size_t n)
{
	if (b->n != n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (b->p[i] != (unsigned char)(i * 7 + 3))
			return 0;
	return 1;
}

static void test_keys(void)
{
	struct crypt_key k;
	char why[160];
	CHECK_EQ_INT(-1, crypt_key_parse(&k, "abc", 3, why, sizeof why));
	CHECK(strstr(why, "64 hex digits") != NULL);
	char bad[64];
	memset(bad, 'g', sizeof bad);
	CHECK_EQ_INT(-1, crypt_key_parse(&k, bad, 64, why, sizeof why));
	char raw[32];
	memset(raw, 0x11, sizeof raw);
	CHECK_EQ_INT(0, crypt_key_parse(&k, raw, 32, why, sizeof why));
	struct crypt_key h;
	key_of(&h, '1');
	/* 32 bytes of 0x11 and 64 hex '1's are the same key, so the same id. */
	CHECK_EQ_STR(k.id, h.id);
	CHECK_EQ_INT(16, (int)strlen(k.id));
	struct crypt_key o;
	key_of(&o, '2');
	CHECK(strcmp(o.id, h.id) != 0);
}

static void test_roundtrip(void)
{
	struct crypt_key k;
	key_of(&k, 'a');
	size_t seg = 1000;
	size_t sizes[] = {0, 1, 999, 1000, 1001, 2000, 2001, 12345};
	size_t steps[] = {1, 7, 1000, 4096};
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		struct buf enc, dec;
		char why[256];
		encrypt(&k, seg, sizes[i], 333, &enc);
		size_t segs = sizes[i] ? (sizes[i] + seg - 1) / seg : 1;
		/* A full last segment is itself the final one. */
		CHECK_EQ_INT((int)(CRYPT_HEADER_LEN + sizes[i] + segs * 20), (int)enc.n);
		for (size_t j = 0; j < sizeof steps / sizeof steps[0]; j++) {
			int rc = decrypt(&k, &enc, steps[j], &dec, why, sizeof why);
			CHECK_EQ_INT(0, rc);
			CHECK(pattern_ok(&dec, sizes[i]));
			free(dec.p);
		}
		char kid[CRYPT_KEY_ID_HEX + 1];
		CHECK_EQ_INT(0, crypt_header_key_id(enc.p, enc.n, kid));
		CHECK_EQ_STR(k.id, kid);
		free(enc.p);
	}
	/* Two files of the same plaintext differ (fresh salt per file). */
	struct buf a, b;
	encrypt(&k, seg, 100, 100, &a);
	encrypt(&k, seg, 100, 100, &b);
	CHECK(a.n == b.n && memcmp(a.p, b.p, a.n) != 0);
	free(a.p);
	free(b.p);
}

static void test_failures(void)
{
	struct crypt_key k, other;
	key_of(&k, 'b');
	key_of(&other, 'c');
	struct buf enc, dec;
	char why[256];
	size_t seg = 1000, n = 3500; /* segments of 1000, 1000, 1000, 500 (final) */
	encrypt(&k, seg, n, 4096, &enc);

	CHECK_EQ_INT(-1, decrypt(&other, &enc, 4096, &dec, why, sizeof why));
	CHECK(strstr(why, "wrong key") != NULL);
	CHECK_EQ_INT(0, (int)dec.n);
	free(dec.p);

	/* A flipped bit in the second segment: the first segment's plaintext may pass, the
	 * damaged one never does. */
	size_t mid = CRYPT_HEADER_LEN + 1020 + 500;
	enc.p[mid] ^= 0x01;
	CHECK_EQ_INT(-1, decrypt(&k, &enc, 4096, &dec, why, sizeof why));
	CHECK(strstr(why, "segment 1") != NULL && strstr(why, "authentication") != NULL);
	CHECK_EQ_INT(1000, (int)dec.n);
	free(dec.p);
	enc.p[mid] ^= 0x01;

	/* The header is authenticated too. */
	enc.p[30] ^= 0x80;
	CHECK_EQ_INT(-1, decrypt(&k, &enc, 4096, &dec, why, sizeof why));
	CHECK(strstr(why, "authentication") != NULL);
	free(dec.p);
	enc.p[30] ^= 0x80;

	/* Truncated inside a segment, and exactly at a segment boundary. */
	struct buf cut = enc;
	cut.n = enc.n - 10;
	CHECK_EQ_INT(-1, decrypt(&k, &cut, 4096, &dec, why, sizeof why));
	CHECK(strstr(why, "truncated") != NULL);
	free(dec.p);
	cut.n = CRYPT_HEADER_LEN + 3 * 1020;
	CHECK_EQ_INT(-1, decrypt(&k, &cut, 4096, &dec, why, sizeof why));
	CHECK(strstr(why, "truncated") != NULL && strstr(why, "boundary") != NULL);
	free(dec.p);
	cut.n = 10;
	CHECK_EQ_INT(-1, decrypt(&k, &cut, 4096, &dec, why, sizeof why));
	CHECK(strstr(why, "header") != NULL);
	free(dec.p);

	/* The final flag cannot be forged onto an earlier segment. */
	unsigned char *sh = enc.p + CRYPT_HEADER_LEN + 2 * 1020;
	sh[0] |= 0x80;
	CHECK_EQ_INT(-1, decrypt(&k, &enc, 4096, &dec, why, sizeof why));
	free(dec.p);
	sh[0] &= 0x7f;

	/* Segments swapped (same lengths): the counter in the nonce catches it. */
	unsigned char tmp[1020];
	unsigned char *s0 = enc.p + CRYPT_HEADER_LEN, *s1 = s0 + 1020;
	memcpy(tmp, s0, 1020);
	memcpy(s0, s1, 1020);
	memcpy(s1, tmp, 1020);
	CHECK_EQ_INT(-1, decrypt(&k, &enc, 4096, &dec, why, sizeof why));
	CHECK_EQ_INT(0, (int)dec.n);
	free(dec.p);
	memcpy(s1, s0, 1020);
	memcpy(s0, tmp, 1020);

	/* Trailing bytes after the final segment. */
	struct buf longer;
	memset(&longer, 0, sizeof longer);
	buf_sink(&longer, enc.p, enc.n);
	buf_sink(&longer, "x", 1);
	CHECK_EQ_INT(-1, decrypt(&k, &longer, 4096, &dec, why, sizeof why));
	CHECK(strstr(why, "after the final segment") != NULL);
	free(dec.p);
	free(longer.p);

	CHECK_EQ_INT(0, decrypt(&k, &enc, 4096, &dec, why, sizeof why));
	CHECK(pattern_ok(&dec, n));
	free(dec.p);
	free(enc.p);

	/* Not an encrypted file at all. */
	struct buf plain = {(unsigned char *)"PGDMP and then some more bytes of an archive here "
					     "padding padding",
			    60, 60};
	CHECK_EQ_INT(-1, decrypt(&k, &plain, 4096, &dec, why, sizeof why));
	CHECK(strstr(why, "not an encrypted snapshot") != NULL);
	free(dec.p);
}

int main(void)
{
	test_keys();
	test_roundtrip();
	test_failures();
	return check_done();
}
