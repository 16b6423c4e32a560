/* API key format, generation, hashing and constant-time verification (see apikey.h).
 * Only OpenSSL: ingress links this file to derive the principal hint. */
#include "apikey.h"
#include "b64url.h"
#include "hex.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>

int apikey_parse_n(const void *key, size_t len, char id_out[APIKEY_ID_HEX + 1])
{
	const unsigned char *k = key;
	id_out[0] = 0;
	if (!k || len != APIKEY_LEN || memcmp(k, APIKEY_PREFIX, APIKEY_PREFIX_LEN) != 0)
		return -1;
	const unsigned char *id = k + APIKEY_PREFIX_LEN;
	for (int i = 0; i < APIKEY_ID_HEX; i++)
		if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
			return -1;
	if (id[APIKEY_ID_HEX] != '_')
		return -1;
	const unsigned char *secret = id + APIKEY_ID_HEX + 1;
	for (int i = 0; i < APIKEY_SECRET_LEN; i++) {
		int v = b64url_value(secret[i]);
		if (v < 0)
			return -1;
		/* 32 bytes = 42 full sextets + 4 bits: the 2 padding bits must be zero. */
		if (i == APIKEY_SECRET_LEN - 1 && (v & 3) != 0)
			return -1;
	}
	memcpy(id_out, id, APIKEY_ID_HEX);
	id_out[APIKEY_ID_HEX] = 0;
	return 0;
}

int apikey_parse(const char *key, char id_out[APIKEY_ID_HEX + 1])
{
	id_out[0] = 0;
	if (!key)
		return -1;
	/* Bounded: an overlong string fails without being scanned to its end. */
	size_t len = strnlen(key, APIKEY_LEN + 1);
	return apikey_parse_n(key, len, id_out);
}

int apikey_generate(char key_out[APIKEY_LEN + 1], char id_out[APIKEY_ID_HEX + 1])
{
	unsigned char raw[APIKEY_ID_HEX / 2 + APIKEY_SECRET_BYTES];
	if (RAND_bytes(raw, sizeof raw) != 1)
		return -1;
	char *p = key_out;
	memcpy(p, APIKEY_PREFIX, APIKEY_PREFIX_LEN);
	p += APIKEY_PREFIX_LEN;
	hex_encode(raw, APIKEY_ID_HEX / 2, p);
	p += APIKEY_ID_HEX;
	*p++ = '_';
	b64url_encode(raw + APIKEY_ID_HEX / 2, APIKEY_SECRET_BYTES, p);
	OPENSSL_cleanse(raw, sizeof raw);
	memcpy(id_out, key_out + APIKEY_PREFIX_LEN, APIKEY_ID_HEX);
	id_out[APIKEY_ID_HEX] = 0;
	return 0;
}

int apikey_hash(const void *key, size_t len, unsigned char out[APIKEY_HASH_LEN])
{
	unsigned int n = 0;
	if (EVP_Digest(key, len, out, &n, EVP_sha256(), NULL) != 1 || n != APIKEY_HASH_LEN)
		return -1;
	return 0;
}

void apikey_hash_hex(const unsigned char hash[APIKEY_HASH_LEN], char out[APIKEY_HASH_HEX + 1])
{
	hex_encode(hash, APIKEY_HASH_LEN, out);
}

int apikey_hash_unhex(const char *hex, unsigned char out[APIKEY_HASH_LEN])
{
	return hex_decode(hex, APIKEY_HASH_LEN, out);
}

int apikey_verify(const void *key, size_t len, const unsigned char hash[APIKEY_HASH_LEN])
{
	unsigned char got[APIKEY_HASH_LEN];
	if (apikey_hash(key, len, got) != 0)
		return 0;
	int ok = CRYPTO_memcmp(got, hash, APIKEY_HASH_LEN) == 0;
	OPENSSL_cleanse(got, sizeof got);
	return ok;
}
