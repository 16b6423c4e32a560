/* API keys: the `gw_<id>_<secret>` format, generation, hashing and verification.
 * Pure functions over OpenSSL only (no Kafka, no PostgreSQL) so ingress links it too.
 *
 * Format: "gw_" + 16 lowercase hex digits (the public key id, 64 random bits) + "_" +
 * 43 characters of unpadded base64url (the secret, 32 random bytes; the last character
 * carries 4 data bits, so its 2 low bits must be zero: one canonical spelling per key).
 * 63 characters in all. The id is the principal hint ingress puts in the gw.requests
 * key, so one key's requests meet in one authz copy.
 *
 * Keys are stored as the hex SHA-256 of the whole key string: the secret has 256 bits
 * of entropy, so a fast hash is enough (no password stretching), and verification
 * compares in constant time. */
#ifndef GW_AUTHZ_APIKEY_H
#define GW_AUTHZ_APIKEY_H

#include <stddef.h>

#define APIKEY_PREFIX       "gw_"
#define APIKEY_PREFIX_LEN   3
#define APIKEY_ID_HEX       16
#define APIKEY_SECRET_BYTES 32
#define APIKEY_SECRET_LEN   43
#define APIKEY_LEN          (APIKEY_PREFIX_LEN + APIKEY_ID_HEX + 1 + APIKEY_SECRET_LEN)
#define APIKEY_HASH_LEN     32
#define APIKEY_HASH_HEX     (2 * APIKEY_HASH_LEN)

/* Validates the whole format of a NUL-terminated key and copies its id (16 hex digits
 * + NUL) into id_out. Returns 0, or -1 when key is not a well-formed API key (id_out is
 * then left empty). Never looks past the terminating NUL. */
int apikey_parse(const char *key, char id_out[APIKEY_ID_HEX + 1]);

/* The same over len bytes that need not be NUL-terminated: an embedded NUL fails. */
int apikey_parse_n(const void *key, size_t len, char id_out[APIKEY_ID_HEX + 1]);

/* A fresh key from RAND_bytes. key_out must hold APIKEY_LEN + 1 bytes. Returns -1 when
 * the random generator fails. The caller wipes key_out (OPENSSL_cleanse) after use. */
int apikey_generate(char key_out[APIKEY_LEN + 1], char id_out[APIKEY_ID_HEX + 1]);

/* SHA-256 of the len key bytes. Returns -1 on an OpenSSL failure. */
int apikey_hash(const void *key, size_t len, unsigned char out[APIKEY_HASH_LEN]);

/* Lowercase hex of a hash, NUL-terminated. */
void apikey_hash_hex(const unsigned char hash[APIKEY_HASH_LEN], char out[APIKEY_HASH_HEX + 1]);

/* Parses 64 hex digits (either case) back into a hash; -1 on anything else. */
int apikey_hash_unhex(const char *hex, unsigned char out[APIKEY_HASH_LEN]);

/* 1 when SHA-256(key) equals hash, compared in constant time; 0 otherwise. */
int apikey_verify(const void *key, size_t len, const unsigned char hash[APIKEY_HASH_LEN]);

#endif
