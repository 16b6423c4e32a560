/* The snapshot encryption format: AES-256-GCM over fixed-size segments, each with its own
 * nonce and tag and a final flag in its authenticated data, under a per-file key derived
 * from the backup key and a random salt. Streaming both ways; docs/backup-agent.md has
 * the byte layout. */
#ifndef BACKUP_CRYPT_H
#define BACKUP_CRYPT_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

#define CRYPT_SCHEME      "gw-aes-256-gcm-seg-v1"
#define CRYPT_KEY_LEN     32
#define CRYPT_KEY_ID_HEX  16
#define CRYPT_MAGIC       "GWBKENC1"
#define CRYPT_HEADER_LEN  56
#define CRYPT_SALT_LEN    32
#define CRYPT_TAG_LEN     16
#define CRYPT_SEG_HDR_LEN 4
/* Plaintext bytes per segment: big enough that the 20 bytes of overhead are noise, small
 * enough that a reader holds one segment in memory. */
#define CRYPT_SEGMENT     (1u << 20)
#define CRYPT_SEGMENT_MAX (16u << 20)
#define CRYPT_FINAL_FLAG  0x80000000u

/* The backup key. Owned by main; wiped by crypt_key_free. */
struct crypt_key {
	unsigned char key[CRYPT_KEY_LEN];
	char id[CRYPT_KEY_ID_HEX + 1]; /* first 8 bytes of SHA-256(key), hex */
	int set;
};

/* Reads GW_BACKUP_KEY or GW_BACKUP_KEY_FILE: 64 hex digits, or (file only) exactly 32
 * raw bytes. Not set: 0 with k->set = 0. Malformed: -1 logged. */
int crypt_key_load(struct crypt_key *k);
/* Parses a key from buf/len as above; -1 with why. */
int crypt_key_parse(struct crypt_key *k, const char *buf, size_t len, char *why, size_t whycap);
void crypt_key_free(struct crypt_key *k);

/* Where encrypted bytes go: returns -1 (errno set) to stop. */
typedef int (*crypt_sink)(void *arg, const void *buf, size_t n);

/* Encrypting writer. Owned by its snapshot; buffers one segment (malloc'd). */
struct crypt_writer {
	EVP_CIPHER_CTX *ctx;
	unsigned char file_key[CRYPT_KEY_LEN];
	unsigned char header[CRYPT_HEADER_LEN];
	unsigned char *buf; /* segment plaintext, then ciphertext in place */
	size_t fill, seg;
	uint64_t counter;
	crypt_sink sink;
	void *arg;
	char error[128];
};

/* Writes the header through sink. -1 with w->error. */
int crypt_writer_init(struct crypt_writer *w, const struct crypt_key *k, size_t segment,
		      crypt_sink sink, void *arg);
int crypt_writer_update(struct crypt_writer *w, const void *buf, size_t n);
/* Writes the final segment. */
int crypt_writer_finish(struct crypt_writer *w);
void crypt_writer_free(struct crypt_writer *w);

/* Decrypting reader: fed the file's bytes in any chunking, hands out plaintext only after
 * the segment holding it authenticated. Owned by its caller. */
struct crypt_reader {
	EVP_CIPHER_CTX *ctx;
	const struct crypt_key *key;
	unsigned char file_key[CRYPT_KEY_LEN];
	unsigned char header[CRYPT_HEADER_LEN];
	unsigned char *buf; /* one segment's header + ciphertext + tag */
	size_t fill, need, seg;
	uint64_t counter;
	int have_header, done;
	long long plain_size;
	char file_key_id[CRYPT_KEY_ID_HEX + 1]; /* from the header */
	crypt_sink sink;
	void *arg;
	char error[256]; /* why it failed: wrong key, damaged, truncated, trailing data */
};

void crypt_reader_init(struct crypt_reader *r, const struct crypt_key *k, crypt_sink sink,
		       void *arg);
/* -1 with r->error (or the sink's errno, r->error saying so). */
int crypt_reader_update(struct crypt_reader *r, const void *buf, size_t n);
/* At end of input: -1 when the final segment was not seen (truncated). */
int crypt_reader_finish(struct crypt_reader *r);
void crypt_reader_free(struct crypt_reader *r);

/* The key id written in a file header (the first CRYPT_HEADER_LEN bytes); -1 when hdr is
 * not one. */
int crypt_header_key_id(const unsigned char *hdr, size_t n, char out[CRYPT_KEY_ID_HEX + 1]);

#endif
