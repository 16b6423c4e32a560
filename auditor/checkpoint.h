/* Signed checkpoints: an Ed25519 signature over a chain's head (chain, seq, hash, time),
 * so rows cut from a chain's tail, or a chain rewritten wholesale with fresh hashes, are
 * caught by `auditor verify` even though the hashes alone would still link. */
#ifndef GW_CHECKPOINT_H
#define GW_CHECKPOINT_H

#include <stddef.h>

#define CHECKPOINT_SIG_HEX 128 /* an Ed25519 signature, 64 bytes, as hex */

/* One per process, owned by main (serve, verify). */
struct checkpoint_key {
	void *pkey;      /* owned EVP_PKEY */
	char key_id[17]; /* hex of the first 8 bytes of SHA-256(raw public key) */
	int can_sign;
};

/* Loads an Ed25519 key from a PEM file: a private key (PKCS#8) when sign is set; for
 * verifying, a public key or a private key whose public half is used. Returns 0, or -1
 * (logged with the path and what to fix). */
int checkpoint_key_load(struct checkpoint_key *k, const char *path, int sign);
void checkpoint_key_free(struct checkpoint_key *k);

/* The signed text: fixed, versioned, every field delimited. signed_at is RFC 3339 UTC
 * with microseconds, exactly as verify reads it back. Returns its length or -1. */
int checkpoint_message(char *out, size_t cap, int chain, long long seq, const char *hashhex,
		       const char *signed_at);
/* sighex: CHECKPOINT_SIG_HEX + 1 bytes. Returns 0 or -1 (logged). */
int checkpoint_sign(const struct checkpoint_key *k, const char *msg, size_t len, char *sighex);
/* 1 valid, 0 invalid or malformed. */
int checkpoint_verify(const struct checkpoint_key *k, const char *msg, size_t len,
		      const char *sighex);

#endif
