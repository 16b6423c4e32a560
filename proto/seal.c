/* AES-256-GCM sealing of credentials on gw.requests (OpenSSL EVP). Layout:
 * version byte 1 | 12-byte random nonce | ciphertext | 16-byte tag. */
#include "seal.h"
#include "config.h"
#include "hex.h"
#include "log.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#define SEAL_VERSION 1

int seal_key_parse(const char *hex, unsigned char key[SEAL_KEY_LEN])
{
	return hex_decode(hex, SEAL_KEY_LEN, key);
}

int seal_key_load(unsigned char key[SEAL_KEY_LEN])
{
	char *hex = NULL;
	if (config_secret("GW_SEAL_KEY", &hex, NULL) != 0)
		return -1;
	if (!hex) {
		log_error("GW_SEAL_KEY or GW_SEAL_KEY_FILE must be set (64 hex digits, the same "
			  "for ingress and authz; e.g. `openssl rand -hex 32`)");
		return -1;
	}
	int rc = seal_key_parse(hex, key);
	OPENSSL_cleanse(hex, strlen(hex));
	free(hex);
	if (rc != 0)
		log_error("GW_SEAL_KEY must be exactly 64 hex digits");
	return rc;
}

int seal_encrypt(const unsigned char key[SEAL_KEY_LEN], const void *pt, size_t ptlen,
		 const char *aad, unsigned char *out, size_t outcap, size_t *outlen)
{
	if (outcap < ptlen + SEAL_OVERHEAD || ptlen > 1u << 20)
		return -1;
	unsigned char *nonce = out + 1, *ct = out + 13;
	out[0] = SEAL_VERSION;
	if (RAND_bytes(nonce, 12) != 1)
		return -1;
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		return -1;
	int len = 0, ok = 0;
	if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) == 1 &&
	    (!aad || EVP_EncryptUpdate(ctx, NULL, &len, (const unsigned char *)aad,
				       (int)strlen(aad)) == 1) &&
	    EVP_EncryptUpdate(ctx, ct, &len, pt, (int)ptlen) == 1 &&
	    EVP_EncryptFinal_ex(ctx, ct + len, &len) == 1 &&
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, ct + ptlen) == 1)
		ok = 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok)
		return -1;
	*outlen = ptlen + SEAL_OVERHEAD;
	return 0;
}

int seal_decrypt(const unsigned char key[SEAL_KEY_LEN], const unsigned char *in, size_t inlen,
		 const char *aad, unsigned char *out, size_t outcap, size_t *outlen)
{
	if (inlen < SEAL_OVERHEAD || in[0] != SEAL_VERSION)
		return -1;
	size_t ctlen = inlen - SEAL_OVERHEAD;
	if (outcap < ctlen || ctlen > 1u << 20)
		return -1;
	const unsigned char *nonce = in + 1, *ct = in + 13, *tag = in + 13 + ctlen;
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		return -1;
	int len = 0, ok = 0;
	if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) == 1 &&
	    (!aad || EVP_DecryptUpdate(ctx, NULL, &len, (const unsigned char *)aad,
				       (int)strlen(aad)) == 1) &&
	    EVP_DecryptUpdate(ctx, out, &len, ct, (int)ctlen) == 1 &&
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)tag) == 1 &&
	    EVP_DecryptFinal_ex(ctx, out + len, &len) == 1)
		ok = 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok) {
		OPENSSL_cleanse(out, ctlen);
		return -1;
	}
	*outlen = ctlen;
	return 0;
}
