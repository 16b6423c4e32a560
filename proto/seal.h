/* Sealing of credentials on gw.requests: AES-256-GCM with a key shared by ingress and
 * authz (GW_SEAL_KEY or GW_SEAL_KEY_FILE: 64 hex digits). The request id is the AAD,
 * so a sealed credential cannot be replayed on another request. */
#ifndef GW_SEAL_H
#define GW_SEAL_H

#include <stddef.h>

#define SEAL_KEY_LEN  32
#define SEAL_OVERHEAD (1 + 12 + 16) /* version, nonce, tag */

int seal_key_load(unsigned char key[SEAL_KEY_LEN]);
/* Parses 64 hex digits. */
int seal_key_parse(const char *hex, unsigned char key[SEAL_KEY_LEN]);
/* out must have room for ptlen + SEAL_OVERHEAD. */
int seal_encrypt(const unsigned char key[SEAL_KEY_LEN], const void *pt, size_t ptlen,
		 const char *aad, unsigned char *out, size_t outcap, size_t *outlen);
/* Fails (-1) on a wrong key, wrong AAD or tampered input. out must have room for inlen. */
int seal_decrypt(const unsigned char key[SEAL_KEY_LEN], const unsigned char *in, size_t inlen,
		 const char *aad, unsigned char *out, size_t outcap, size_t *outlen);

#endif
