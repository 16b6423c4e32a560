/* JWT bearer tokens (OIDC access or ID tokens): JWKS parsing into OpenSSL keys and
 * token verification (RS256, ES256, EdDSA; HS256 only with a configured secret).
 * The token's alg must match the key's kty/crv/alg (no key confusion, never "none").
 * Pure functions over OpenSSL and jansson, so the fuzz target and the bench use them. */
#ifndef GW_AUTHZ_JWT_H
#define GW_AUTHZ_JWT_H

#include "policy.h"

#include <stddef.h>
#include <stdint.h>

#define JWT_MAX_LEN   6144 /* longer tokens are refused as oversized (below GW_CRED_MAX) */
#define JWKS_MAX_KEYS 64
#define JWKS_MAX_LEN  (1 << 20)

enum jwt_alg { JWT_ALG_NONE = 0, JWT_RS256, JWT_ES256, JWT_EDDSA, JWT_HS256 };

/* One verification key; pkey is an EVP_PKEY owned by the set. */
struct jwk {
	char kid[128];
	enum jwt_alg alg; /* what this key may verify */
	void *pkey;
};

/* Owns its keys. */
struct jwks {
	struct jwk keys[JWKS_MAX_KEYS];
	int n;
};

/* Borrowed settings; strings live as long as the process. */
struct jwt_config {
	const char *issuer;   /* required iss, NULL = not checked */
	const char *audience; /* required in aud, NULL = not checked */
	int64_t leeway_s;
	const char *principal_claim, *groups_claim, *idp_claim, *policies_claim;
	const unsigned char *hs256_secret; /* NULL: HS256 refused */
	size_t hs256_len;
};

/* Parses a JWKS document ({"keys":[...]}). Keys of unsupported types are skipped (and
 * counted in *skipped); a malformed document fails. Returns 0 or -1 with err set. */
int jwks_parse(const char *text, size_t len, struct jwks *out, int *skipped, char *err,
	       size_t errcap);
void jwks_free(struct jwks *k);

/* 1 when cred (len bytes) has the shape of a JWT: three base64url segments, header
 * starting with '{' ("eyJ"). */
int jwt_looks_like(const void *cred, size_t len);

enum jwt_result {
	JWT_OK = 0,
	JWT_INVALID,     /* 401: msg says why */
	JWT_UNKNOWN_KID, /* 401 unless a JWKS refresh finds the key */
};

/* Verifies tok against keys and cfg at now_ms. On JWT_OK fills id (type CRED_JWT,
 * principal, groups, idp, policies, cred_id = jti or kid, expires_ms). Otherwise msg
 * says what failed, fit for the client (never the token itself); kid_out gets the
 * token's kid (for a JWKS refresh). */
enum jwt_result jwt_verify(const struct jwt_config *cfg, const struct jwks *keys, const char *tok,
			   size_t len, int64_t now_ms, struct identity *id, char *msg,
			   size_t msgcap, char kid_out[128]);

#endif
