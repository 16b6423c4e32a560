/* Snapshot encryption: segmented AES-256-GCM. One GCM message over a multi-GB stream
 * would release plaintext before its only tag is checked and has a 64 GB limit; segments
 * bound both, the counter in the nonce pins their order, and the final flag in the
 * authenticated data makes a file cut at a segment boundary fail as truncated. A
 * per-file key (HKDF of the backup key and a random salt) means nonces never repeat
 * across files under one backup key. */
#include "crypt.h"

#include <errno.h>
#include <openssl/kdf.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "config.h"
#include "hex.h"
#include "log.h"

#define HKDF_INFO "gw-backup-agent segment key v1"
#define ALG_ID    1

static void put_u32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int crypt_key_parse(struct crypt_key *k, const char *buf, size_t len, char *why, size_t whycap)
{
	memset(k, 0, sizeof *k);
	if (len == 2 * CRYPT_KEY_LEN) {
		char text[2 * CRYPT_KEY_LEN + 1]; /* hex_decode wants it NUL-terminated */
		memcpy(text, buf, len);
		text[len] = 0;
		int ok = hex_decode(text, CRYPT_KEY_LEN, k->key) == 0;
		explicit_bzero(text, sizeof text);
		if (!ok) {
			explicit_bzero(k->key, sizeof k->key);
			snprintf(why, whycap, "64 characters but not all hex digits");
			return -1;
		}
	} else if (len == CRYPT_KEY_LEN) {
		memcpy(k->key, buf, CRYPT_KEY_LEN);
	} else {
		snprintf(why, whycap,
			 "%zu bytes: give 64 hex digits (e.g. openssl rand -hex 32), or 32 raw "
			 "bytes in the file",
			 len);
		return -1;
	}
	unsigned char d[SHA256_DIGEST_LENGTH];
	SHA256(k->key, CRYPT_KEY_LEN, d);
	hex_encode(d, CRYPT_KEY_ID_HEX / 2, k->id);
	k->set = 1;
	return 0;
}

int crypt_key_load(struct crypt_key *k)
{
	char *v = NULL;
	size_t len = 0;
	char why[160];
	memset(k, 0, sizeof *k);
	if (config_secret("GW_BACKUP_KEY", &v, &len) != 0)
		return -1;
	if (!v)
		return 0;
	/* Raw bytes only make sense from a file; from the environment a 32-character
	 * value is far more likely a mistyped hex key. */
	int from_file = getenv("GW_BACKUP_KEY_FILE") && *getenv("GW_BACKUP_KEY_FILE");
	int rc = 0;
	if (!from_file && len == CRYPT_KEY_LEN) {
		snprintf(why, sizeof why, "GW_BACKUP_KEY must be 64 hex digits");
		rc = -1;
	} else {
		rc = crypt_key_parse(k, v, len, why, sizeof why);
	}
	explicit_bzero(v, len);
	free(v);
	if (rc != 0)
		log_error("the backup key cannot be used: check GW_BACKUP_KEY / GW_BACKUP_KEY_FILE",
			  LS("error", why));
	return rc;
}

void crypt_key_free(struct crypt_key *k)
{
	explicit_bzero(k, sizeof *k);
}

int crypt_header_key_id(const unsigned char *hdr, size_t n, char out[CRYPT_KEY_ID_HEX + 1])
{
	if (n < CRYPT_HEADER_LEN || memcmp(hdr, CRYPT_MAGIC, 8) != 0)
		return -1;
	hex_encode(hdr + 16, CRYPT_KEY_ID_HEX / 2, out);
	return 0;
}

static int derive(const unsigned char *key, const unsigned char *salt, unsigned char *out)
{
	EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	size_t outlen = CRYPT_KEY_LEN;
	int ok = pc && EVP_PKEY_derive_init(pc) == 1 &&
		 EVP_PKEY_CTX_set_hkdf_md(pc, EVP_sha256()) == 1 &&
		 EVP_PKEY_CTX_set1_hkdf_salt(pc, salt, CRYPT_SALT_LEN) == 1 &&
		 EVP_PKEY_CTX_set1_hkdf_key(pc, key, CRYPT_KEY_LEN) == 1 &&
		 EVP_PKEY_CTX_add1_hkdf_info(pc, (const unsigned char *)HKDF_INFO,
					     sizeof HKDF_INFO - 1) == 1 &&
		 EVP_PKEY_derive(pc, out, &outlen) == 1 && outlen == CRYPT_KEY_LEN;
	EVP_PKEY_CTX_free(pc);
	return ok ? 0 : -1;
}

static void nonce_for(uint64_t counter, unsigned char nonce[12])
{
	memset(nonce, 0, 4);
	for (int i = 0; i < 8; i++)
		nonce[4 + i] = (unsigned char)(counter >> (56 - 8 * i));
}

/* ---- writer ---- */

int crypt_writer_init(struct crypt_writer *w, const struct crypt_key *k, size_t segment,
		      crypt_sink sink, void *arg)
{
	memset(w, 0, sizeof *w);
	w->sink = sink;
	w->arg = arg;
	w->seg = segment;
	unsigned char salt[CRYPT_SALT_LEN], kid[CRYPT_KEY_ID_HEX / 2];
	if (!k->set || segment == 0 || segment > CRYPT_SEGMENT_MAX) {
		snprintf(w->error, sizeof w->error, "no key or a bad segment size");
		return -1;
	}
	if (getrandom(salt, sizeof salt, 0) != (ssize_t)sizeof salt) {
		snprintf(w->error, sizeof w->error, "getrandom failed: %s", strerror(errno));
		return -1;
	}
	w->buf = malloc(segment + CRYPT_TAG_LEN);
	w->ctx = EVP_CIPHER_CTX_new();
	if (!w->buf || !w->ctx || derive(k->key, salt, w->file_key) != 0) {
		snprintf(w->error, sizeof w->error, "cannot set up AES-256-GCM");
		return -1;
	}
	if (hex_decode(k->id, sizeof kid, kid) != 0) { /* k->id is ours: never */
		snprintf(w->error, sizeof w->error, "malformed key id");
		return -1;
	}
	unsigned char *h = w->header;
	memcpy(h, CRYPT_MAGIC, 8);
	h[8] = ALG_ID;
	h[9] = h[10] = h[11] = 0;
	put_u32(h + 12, (uint32_t)segment);
	memcpy(h + 16, kid, sizeof kid);
	memcpy(h + 24, salt, sizeof salt);
	if (w->sink(w->arg, h, CRYPT_HEADER_LEN) != 0) {
		snprintf(w->error, sizeof w->error, "write failed: %s", strerror(errno));
		return -1;
	}
	return 0;
}

static int seal_segment(struct crypt_writer *w, int final)
{
	unsigned char nonce[12], sh[CRYPT_SEG_HDR_LEN];
	int len = 0;
	uint32_t n = (uint32_t)w->fill;
	put_u32(sh, n | (final ? CRYPT_FINAL_FLAG : 0));
	nonce_for(w->counter, nonce);
	if (EVP_EncryptInit_ex(w->ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(w->ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
	    EVP_EncryptInit_ex(w->ctx, NULL, NULL, w->file_key, nonce) != 1 ||
	    EVP_EncryptUpdate(w->ctx, NULL, &len, w->header, CRYPT_HEADER_LEN) != 1 ||
	    EVP_EncryptUpdate(w->ctx, NULL, &len, sh, sizeof sh) != 1 ||
	    (n && EVP_EncryptUpdate(w->ctx, w->buf, &len, w->buf, (int)n) != 1) ||
	    EVP_EncryptFinal_ex(w->ctx, w->buf + n, &len) != 1 ||
	    EVP_CIPHER_CTX_ctrl(w->ctx, EVP_CTRL_GCM_GET_TAG, CRYPT_TAG_LEN, w->buf + n) != 1) {
		snprintf(w->error, sizeof w->error, "AES-256-GCM failed on segment %llu",
			 (unsigned long long)w->counter);
		return -1;
	}
	if (w->sink(w->arg, sh, sizeof sh) != 0 ||
	    w->sink(w->arg, w->buf, n + CRYPT_TAG_LEN) != 0) {
		snprintf(w->error, sizeof w->error, "write failed: %s", strerror(errno));
		return -1;
	}
	w->counter++;
	w->fill = 0;
	return 0;
}

int crypt_writer_update(struct crypt_writer *w, const void *buf, size_t n)
{
	const unsigned char *p = buf;
	while (n > 0) {
		size_t take = w->seg - w->fill;
		if (take > n)
			take = n;
		memcpy(w->buf + w->fill, p, take);
		w->fill += take;
		p += take;
		n -= take;
		/* A full segment waits for the next byte: only then is it known not to be the
		 * last one. */
		if (n > 0 && w->fill == w->seg && seal_segment(w, 0) != 0)
			return -1;
	}
	return 0;
}

int crypt_writer_finish(struct crypt_writer *w)
{
	return seal_segment(w, 1);
}

void crypt_writer_free(struct crypt_writer *w)
{
	if (w->ctx)
		EVP_CIPHER_CTX_free(w->ctx);
	if (w->buf) {
		explicit_bzero(w->buf, w->seg + CRYPT_TAG_LEN);
		free(w->buf);
	}
	explicit_bzero(w->file_key, sizeof w->file_key);
	w->ctx = NULL;
	w->buf = NULL;
}

/* ---- reader ---- */

void crypt_reader_init(struct crypt_reader *r, const struct crypt_key *k, crypt_sink sink,
		       void *arg)
{
	memset(r, 0, sizeof *r);
	r->key = k;
	r->sink = sink;
	r->arg = arg;
	r->need = CRYPT_HEADER_LEN;
}

static int reader_header(struct crypt_reader *r)
{
	const unsigned char *h = r->header;
	if (memcmp(h, CRYPT_MAGIC, 8) != 0) {
		snprintf(r->error, sizeof r->error,
			 "not an encrypted snapshot (no " CRYPT_MAGIC " header)");
		return -1;
	}
	if (h[8] != ALG_ID || h[9] || h[10] || h[11]) {
		snprintf(r->error, sizeof r->error, "unknown encryption algorithm %d", h[8]);
		return -1;
	}
	r->seg = get_u32(h + 12);
	if (r->seg == 0 || r->seg > CRYPT_SEGMENT_MAX) {
		snprintf(r->error, sizeof r->error, "bad segment size %zu in the header", r->seg);
		return -1;
	}
	crypt_header_key_id(h, CRYPT_HEADER_LEN, r->file_key_id);
	if (!r->key || !r->key->set) {
		snprintf(r->error, sizeof r->error,
			 "encrypted with key id %s and no key is set (GW_BACKUP_KEY_FILE)",
			 r->file_key_id);
		return -1;
	}
	if (strcmp(r->file_key_id, r->key->id) != 0) {
		snprintf(r->error, sizeof r->error,
			 "wrong key: encrypted with key id %s, the key given has id %s",
			 r->file_key_id, r->key->id);
		return -1;
	}
	r->ctx = EVP_CIPHER_CTX_new();
	r->buf = malloc(CRYPT_SEG_HDR_LEN + r->seg + CRYPT_TAG_LEN);
	if (!r->ctx || !r->buf || derive(r->key->key, h + 24, r->file_key) != 0) {
		snprintf(r->error, sizeof r->error, "cannot set up AES-256-GCM");
		return -1;
	}
	r->have_header = 1;
	r->need = CRYPT_SEG_HDR_LEN;
	r->fill = 0;
	return 0;
}

/* The whole segment (header, ciphertext, tag) is in r->buf. */
static int reader_segment(struct crypt_reader *r)
{
	uint32_t sh = get_u32(r->buf);
	uint32_t n = sh & ~CRYPT_FINAL_FLAG;
	unsigned char nonce[12];
	unsigned char *ct = r->buf + CRYPT_SEG_HDR_LEN;
	int len = 0;
	nonce_for(r->counter, nonce);
	if (EVP_DecryptInit_ex(r->ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(r->ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
	    EVP_DecryptInit_ex(r->ctx, NULL, NULL, r->file_key, nonce) != 1 ||
	    EVP_DecryptUpdate(r->ctx, NULL, &len, r->header, CRYPT_HEADER_LEN) != 1 ||
	    EVP_DecryptUpdate(r->ctx, NULL, &len, r->buf, CRYPT_SEG_HDR_LEN) != 1 ||
	    (n && EVP_DecryptUpdate(r->ctx, ct, &len, ct, (int)n) != 1) ||
	    EVP_CIPHER_CTX_ctrl(r->ctx, EVP_CTRL_GCM_SET_TAG, CRYPT_TAG_LEN, ct + n) != 1 ||
	    EVP_DecryptFinal_ex(r->ctx, ct + n, &len) != 1) {
		explicit_bzero(ct, n);
		snprintf(r->error, sizeof r->error,
			 "segment %llu (at plaintext byte %lld) failed authentication: the file is "
			 "damaged or was altered",
			 (unsigned long long)r->counter, r->plain_size);
		return -1;
	}
	r->counter++;
	r->plain_size += n;
	if (sh & CRYPT_FINAL_FLAG)
		r->done = 1;
	if (n && r->sink(r->arg, ct, n) != 0) {
		snprintf(r->error, sizeof r->error, "cannot pass on the decrypted data: %s",
			 strerror(errno));
		return -1;
	}
	r->need = CRYPT_SEG_HDR_LEN;
	r->fill = 0;
	return 0;
}

int crypt_reader_update(struct crypt_reader *r, const void *buf, size_t n)
{
	const unsigned char *p = buf;
	while (n > 0) {
		if (r->done) {
			snprintf(r->error, sizeof r->error, "data after the final segment");
			return -1;
		}
		unsigned char *dst = r->have_header ? r->buf : r->header;
		size_t take = r->need - r->fill;
		if (take > n)
			take = n;
		memcpy(dst + r->fill, p, take);
		r->fill += take;
		p += take;
		n -= take;
		if (r->fill < r->need)
			continue;
		if (!r->have_header) {
			if (reader_header(r) != 0)
				return -1;
		} else if (r->need == CRYPT_SEG_HDR_LEN) {
			uint32_t sh = get_u32(r->buf);
			uint32_t len = sh & ~CRYPT_FINAL_FLAG;
			/* Every segment but the last is full: a short one in the middle is
			 * damage, and this bounds what the header can make us read. */
			if (len > r->seg || (!(sh & CRYPT_FINAL_FLAG) && len != r->seg)) {
				snprintf(r->error, sizeof r->error,
					 "segment %llu has a bad length: the file is damaged",
					 (unsigned long long)r->counter);
				return -1;
			}
			r->need = CRYPT_SEG_HDR_LEN + len + CRYPT_TAG_LEN;
		} else if (reader_segment(r) != 0) {
			return -1;
		}
	}
	return 0;
}

int crypt_reader_finish(struct crypt_reader *r)
{
	if (r->done)
		return 0;
	if (!r->have_header) {
		snprintf(r->error, sizeof r->error,
			 "truncated: %zu bytes, shorter than the %d-byte header", r->fill,
			 CRYPT_HEADER_LEN);
		return -1;
	}
	snprintf(r->error, sizeof r->error,
		 "truncated: the file ends %s (after %lld plaintext bytes) without its final "
		 "segment",
		 r->fill ? "inside a segment" : "at a segment boundary", r->plain_size);
	return -1;
}

void crypt_reader_free(struct crypt_reader *r)
{
	if (r->ctx)
		EVP_CIPHER_CTX_free(r->ctx);
	if (r->buf) {
		explicit_bzero(r->buf, CRYPT_SEG_HDR_LEN + r->seg + CRYPT_TAG_LEN);
		free(r->buf);
	}
	explicit_bzero(r->file_key, sizeof r->file_key);
	r->ctx = NULL;
	r->buf = NULL;
}
