/* JWT verification with OpenSSL 3 EVP. Debian's libjwt (1.10) has neither EdDSA nor
 * JWKS, so keys are built here from their JWK parameters (EVP_PKEY_fromdata) and every
 * input byte is checked before it is trusted: this is the first code that sees an
 * attacker's token. */
#include "jwt.h"
#include "b64url.h"

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <stdio.h>
#include <string.h>

/* ---- JWKS ---- */

static int b64_field(const json_t *o, const char *name, unsigned char *out, size_t cap, size_t *n)
{
	const char *s = json_string_value(json_object_get(o, name));
	if (!s)
		return -1;
	long l = b64url_decode(s, strlen(s), out, cap);
	if (l <= 0)
		return -1;
	*n = (size_t)l;
	return 0;
}

static EVP_PKEY *from_params(const char *type, OSSL_PARAM_BLD *bld)
{
	EVP_PKEY *pkey = NULL;
	OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
	if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
		pkey = NULL;
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	return pkey;
}

static EVP_PKEY *rsa_key(const json_t *k, const char **why)
{
	unsigned char n[1024], e[16];
	size_t nl, el;
	if (b64_field(k, "n", n, sizeof n, &nl) || b64_field(k, "e", e, sizeof e, &el)) {
		*why = "RSA key without a valid n or e";
		return NULL;
	}
	/* Leading zero bytes do not count towards the modulus size. */
	size_t z = 0;
	while (z < nl && n[z] == 0)
		z++;
	if ((nl - z) * 8 < 2048) {
		*why = "RSA key shorter than 2048 bits";
		return NULL;
	}
	BIGNUM *bn = BN_bin2bn(n, (int)nl, NULL), *be = BN_bin2bn(e, (int)el, NULL);
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	EVP_PKEY *pkey = NULL;
	if (bn && be && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
	    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
		pkey = from_params("RSA", bld);
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn);
	BN_free(be);
	if (!pkey)
		*why = "RSA key rejected by OpenSSL";
	return pkey;
}

static EVP_PKEY *ec_key(const json_t *k, const char **why)
{
	unsigned char pub[65], x[33], y[33];
	size_t xl, yl;
	const char *crv = json_string_value(json_object_get(k, "crv"));
	if (!crv || strcmp(crv, "P-256") != 0) {
		*why = "EC key on a curve other than P-256";
		return NULL;
	}
	if (b64_field(k, "x", x, sizeof x, &xl) || b64_field(k, "y", y, sizeof y, &yl) ||
	    xl != 32 || yl != 32) {
		*why = "EC key without 32-byte x and y";
		return NULL;
	}
	pub[0] = 0x04;
	memcpy(pub + 1, x, 32);
	memcpy(pub + 33, y, 32);
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	EVP_PKEY *pkey = NULL;
	if (bld &&
	    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
	    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub))
		pkey = from_params("EC", bld);
	OSSL_PARAM_BLD_free(bld);
	/* fromdata does not check that the point is on the curve; do it here. */
	if (pkey) {
		EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
		int ok = c && EVP_PKEY_public_check(c) == 1;
		EVP_PKEY_CTX_free(c);
		if (!ok) {
			EVP_PKEY_free(pkey);
			pkey = NULL;
		}
	}
	if (!pkey)
		*why = "EC key is not a valid P-256 point";
	return pkey;
}

static EVP_PKEY *okp_key(const json_t *k, const char **why)
{
	unsigned char x[33];
	size_t xl;
	const char *crv = json_string_value(json_object_get(k, "crv"));
	if (!crv || strcmp(crv, "Ed25519") != 0) {
		*why = "OKP key on a curve other than Ed25519";
		return NULL;
	}
	if (b64_field(k, "x", x, sizeof x, &xl) || xl != 32) {
		*why = "Ed25519 key without a 32-byte x";
		return NULL;
	}
	EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, 32);
	if (!pkey)
		*why = "Ed25519 key rejected by OpenSSL";
	return pkey;
}

static enum jwt_alg alg_parse(const char *s)
{
	if (!s)
		return JWT_ALG_NONE;
	if (strcmp(s, "RS256") == 0)
		return JWT_RS256;
	if (strcmp(s, "ES256") == 0)
		return JWT_ES256;
	if (strcmp(s, "EdDSA") == 0)
		return JWT_EDDSA;
	if (strcmp(s, "HS256") == 0)
		return JWT_HS256;
	return JWT_ALG_NONE;
}

int jwks_parse(const char *text, size_t len, struct jwks *out, int *skipped, char *err,
	       size_t errcap)
{
	memset(out, 0, sizeof *out);
	*skipped = 0;
	if (len > JWKS_MAX_LEN) {
		snprintf(err, errcap, "JWKS larger than %d bytes", JWKS_MAX_LEN);
		return -1;
	}
	json_error_t je;
	json_t *root = json_loadb(text, len, 0, &je);
	json_t *keys = root ? json_object_get(root, "keys") : NULL;
	if (!json_is_array(keys)) {
		snprintf(err, errcap,
			 root ? "JWKS without a \"keys\" array" : "JWKS is not JSON: line %d: %s",
			 je.line, je.text);
		json_decref(root);
		return -1;
	}
	size_t i;
	json_t *k;
	json_array_foreach(keys, i, k)
	{
		const char *why = NULL;
		const char *kty = json_string_value(json_object_get(k, "kty"));
		const char *use = json_string_value(json_object_get(k, "use"));
		const char *kid = json_string_value(json_object_get(k, "kid"));
		json_t *alg_j = json_object_get(k, "alg");
		enum jwt_alg want = JWT_ALG_NONE;
		EVP_PKEY *pkey = NULL;
		if (!json_is_object(k) || !kty) {
			why = "not a JWK object with kty";
		} else if (use && strcmp(use, "sig") != 0) {
			why = "use is not sig";
		} else if (kid && strlen(kid) >= sizeof out->keys[0].kid) {
			why = "kid too long";
		} else if (strcmp(kty, "RSA") == 0) {
			want = JWT_RS256;
			pkey = rsa_key(k, &why);
		} else if (strcmp(kty, "EC") == 0) {
			want = JWT_ES256;
			pkey = ec_key(k, &why);
		} else if (strcmp(kty, "OKP") == 0) {
			want = JWT_EDDSA;
			pkey = okp_key(k, &why);
		} else {
			why = "unsupported kty";
		}
		/* A key that names an alg must name the one its type implies. */
		if (pkey && alg_j && alg_parse(json_string_value(alg_j)) != want) {
			why = "alg does not match the key type";
			EVP_PKEY_free(pkey);
			pkey = NULL;
		}
		if (!pkey || out->n >= JWKS_MAX_KEYS) {
			EVP_PKEY_free(pkey);
			(*skipped)++;
			(void)why;
			continue;
		}
		struct jwk *j = &out->keys[out->n++];
		snprintf(j->kid, sizeof j->kid, "%s", kid ? kid : "");
		j->alg = want;
		j->pkey = pkey;
	}
	json_decref(root);
	return 0;
}

void jwks_free(struct jwks *k)
{
	for (int i = 0; i < k->n; i++)
		EVP_PKEY_free(k->keys[i].pkey);
	k->n = 0;
}

/* ---- tokens ---- */

int jwt_looks_like(const void *cred, size_t len)
{
	const char *s = cred;
	if (len < 10 || memcmp(s, "eyJ", 3) != 0)
		return 0;
	int dots = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '.')
			dots++;
		else if (b64url_value((unsigned char)s[i]) < 0)
			return 0;
	}
	return dots == 2;
}

static int verify_sig(enum jwt_alg alg, void *pkey, const unsigned char *data, size_t dlen,
		      const unsigned char *sig, size_t slen)
{
	unsigned char der[80];
	const unsigned char *s = sig;
	size_t sl = slen;
	if (alg == JWT_ES256) {
		/* JWS carries r||s; OpenSSL wants DER. */
		if (slen != 64)
			return 0;
		ECDSA_SIG *es = ECDSA_SIG_new();
		BIGNUM *r = BN_bin2bn(sig, 32, NULL), *ss = BN_bin2bn(sig + 32, 32, NULL);
		if (!es || !r || !ss || !ECDSA_SIG_set0(es, r, ss)) {
			ECDSA_SIG_free(es);
			BN_free(r);
			BN_free(ss);
			return 0;
		}
		int n = i2d_ECDSA_SIG(es, NULL);
		unsigned char *p = der;
		if (n <= 0 || (size_t)n > sizeof der || i2d_ECDSA_SIG(es, &p) != n) {
			ECDSA_SIG_free(es);
			return 0;
		}
		ECDSA_SIG_free(es);
		s = der;
		sl = (size_t)n;
	}
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int ok = ctx &&
		 EVP_DigestVerifyInit(ctx, NULL, alg == JWT_EDDSA ? NULL : EVP_sha256(), NULL,
				      pkey) == 1 &&
		 EVP_DigestVerify(ctx, s, sl, data, dlen) == 1;
	EVP_MD_CTX_free(ctx);
	return ok;
}

static int text_ok(const char *s, size_t max)
{
	size_t n = 0;
	for (; s[n]; n++)
		if ((unsigned char)s[n] < 0x20 || s[n] == 0x7f || s[n] == ',')
			return 0;
	return n > 0 && n < max;
}

/* A claim that is a string or an array of strings, joined by commas into out. */
static int claim_list(const json_t *v, char *out, size_t cap)
{
	out[0] = 0;
	if (!v)
		return 0;
	size_t len = 0, i;
	json_t *e;
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		if (!*s)
			return 0;
		if (!text_ok(s, cap))
			return -1;
		snprintf(out, cap, "%s", s);
		return 0;
	}
	if (!json_is_array(v))
		return -1;
	json_array_foreach(v, i, e)
	{
		const char *s = json_string_value(e);
		if (!s || !text_ok(s, 256))
			return -1;
		size_t n = strlen(s);
		if (len + n + 2 > cap)
			return -1;
		if (len)
			out[len++] = ',';
		memcpy(out + len, s, n + 1);
		len += n;
	}
	return 0;
}

static int aud_has(const json_t *aud, const char *want)
{
	if (json_is_string(aud))
		return strcmp(json_string_value(aud), want) == 0;
	size_t i;
	json_t *e;
	if (json_is_array(aud))
		json_array_foreach(aud, i, e) if (json_is_string(e) &&
						  strcmp(json_string_value(e), want) == 0) return 1;
	return 0;
}

/* NumericDate claims: integers or numbers; absent = -1 after *present = 0. */
static int num_claim(const json_t *o, const char *name, int64_t *out, int *present)
{
	json_t *v = json_object_get(o, name);
	*present = v != NULL;
	if (!v)
		return 0;
	if (json_is_integer(v))
		*out = json_integer_value(v);
	else if (json_is_real(v) && json_real_value(v) > -1e15 && json_real_value(v) < 1e15)
		*out = (int64_t)json_real_value(v);
	else
		return -1;
	return 0;
}

#define FAIL(...)                                                                                  \
	do {                                                                                       \
		snprintf(msg, msgcap, __VA_ARGS__);                                                \
		goto out;                                                                          \
	} while (0)

enum jwt_result jwt_verify(const struct jwt_config *cfg, const struct jwks *keys, const char *tok,
			   size_t len, int64_t now_ms, struct identity *id, char *msg,
			   size_t msgcap, char kid_out[128])
{
	enum jwt_result rc = JWT_INVALID;
	json_t *hdr = NULL, *claims = NULL;
	unsigned char *buf = NULL;
	kid_out[0] = 0;
	memset(id, 0, sizeof *id);
	if (len > JWT_MAX_LEN)
		FAIL("token too large (%zu bytes, at most %d)", len, JWT_MAX_LEN);
	const char *d1 = memchr(tok, '.', len);
	const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok)) : NULL;
	if (!d1 || !d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - tok)))
		FAIL("malformed token: a JWT has three dot-separated parts");
	size_t hl = (size_t)(d1 - tok), pl = (size_t)(d2 - d1 - 1),
	       sl = len - (size_t)(d2 + 1 - tok);
	buf = malloc(len + 4);
	if (!buf)
		FAIL("out of memory");
	long n = b64url_decode(tok, hl, buf, len);
	if (n <= 0 || !(hdr = json_loadb((char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL)) ||
	    !json_is_object(hdr))
		FAIL("malformed token: the header is not base64url JSON");
	const char *algs = json_string_value(json_object_get(hdr, "alg"));
	if (!algs)
		FAIL("malformed token: no alg in the header");
	enum jwt_alg alg = alg_parse(algs);
	if (alg == JWT_ALG_NONE)
		FAIL("token algorithm '%.16s' is not allowed (RS256, ES256, EdDSA%s)", algs,
		     cfg->hs256_secret ? ", HS256" : "");
	if (alg == JWT_HS256 && !cfg->hs256_secret)
		FAIL("token algorithm HS256 is not enabled here");
	if (json_object_get(hdr, "crit"))
		FAIL("token has critical header extensions this gateway does not understand");
	const char *kid = json_string_value(json_object_get(hdr, "kid"));
	if (kid && strlen(kid) < 128)
		snprintf(kid_out, 128, "%s", kid);

	long sn = b64url_decode(d2 + 1, sl, buf, len);
	if (sn <= 0)
		FAIL("malformed token: the signature is not base64url");
	const unsigned char *data = (const unsigned char *)tok;
	size_t dlen = (size_t)(d2 - tok);
	if (alg == JWT_HS256) {
		unsigned char mac[32];
		unsigned int ml = 0;
		if (!HMAC(EVP_sha256(), cfg->hs256_secret, (int)cfg->hs256_len, data, dlen, mac,
			  &ml) ||
		    ml != 32 || sn != 32 || CRYPTO_memcmp(mac, buf, 32) != 0)
			FAIL("token signature does not verify");
	} else {
		int tried = 0, good = 0;
		for (int i = 0; i < keys->n && !good; i++) {
			const struct jwk *k = &keys->keys[i];
			/* The key's type decides the algorithm, never the token alone. */
			if (k->alg != alg || (kid && strcmp(k->kid, kid) != 0))
				continue;
			tried++;
			good = verify_sig(alg, k->pkey, data, dlen, buf, (size_t)sn);
		}
		int named = 0;
		for (int i = 0; kid && i < keys->n; i++)
			named |= strcmp(keys->keys[i].kid, kid) == 0;
		if (!tried && named)
			FAIL("token algorithm %s does not match its key (kid '%.64s')", algs, kid);
		if (!tried && kid) {
			rc = JWT_UNKNOWN_KID;
			FAIL("token signed with an unknown key id (kid '%.64s')", kid);
		}
		if (!tried)
			FAIL("no %s key to verify the token with", algs);
		if (!good)
			FAIL("token signature does not verify");
	}

	n = b64url_decode(d1 + 1, pl, buf, len);
	if (n <= 0 ||
	    !(claims = json_loadb((char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL)) ||
	    !json_is_object(claims))
		FAIL("malformed token: the claims are not base64url JSON");
	int64_t exp = 0, nbf = 0, now_s = now_ms / 1000;
	int has_exp, has_nbf;
	if (num_claim(claims, "exp", &exp, &has_exp) || num_claim(claims, "nbf", &nbf, &has_nbf))
		FAIL("malformed token: exp or nbf is not a number");
	if (!has_exp)
		FAIL("token has no exp claim");
	if (now_s > exp + cfg->leeway_s)
		FAIL("token expired");
	if (has_nbf && now_s + cfg->leeway_s < nbf)
		FAIL("token not valid yet (nbf)");
	if (cfg->issuer) {
		const char *iss = json_string_value(json_object_get(claims, "iss"));
		if (!iss || strcmp(iss, cfg->issuer) != 0)
			FAIL("token issuer is not the one this gateway trusts");
	}
	if (cfg->audience && !aud_has(json_object_get(claims, "aud"), cfg->audience))
		FAIL("token audience does not include this gateway");
	const char *pc = cfg->principal_claim ? cfg->principal_claim : "sub";
	const char *sub = json_string_value(json_object_get(claims, pc));
	if (!sub || !*sub || strlen(sub) >= sizeof id->principal)
		FAIL("token has no usable '%.32s' claim", pc);
	for (const char *c = sub; *c; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			FAIL("token '%.32s' claim has control characters", pc);
	id->type = CRED_JWT;
	snprintf(id->principal, sizeof id->principal, "%s", sub);
	if (claim_list(json_object_get(claims, cfg->groups_claim ? cfg->groups_claim : "groups"),
		       id->groups, sizeof id->groups) != 0)
		FAIL("token groups claim is not a list of names");
	if (claim_list(
		json_object_get(claims, cfg->policies_claim ? cfg->policies_claim : "policies"),
		id->policies, sizeof id->policies) != 0)
		FAIL("token policies claim is not a list of names");
	const char *idp =
	    json_string_value(json_object_get(claims, cfg->idp_claim ? cfg->idp_claim : "idp"));
	if (idp && strlen(idp) < sizeof id->idp)
		snprintf(id->idp, sizeof id->idp, "%s", idp);
	const char *jti = json_string_value(json_object_get(claims, "jti"));
	snprintf(id->cred_id, sizeof id->cred_id, "%.127s",
		 jti && text_ok(jti, 128) ? jti : kid_out);
	snprintf(id->models, sizeof id->models, "*");
	id->expires_ms = exp * 1000;
	rc = JWT_OK;
	msg[0] = 0;
out:
	if (rc != JWT_OK && rc != JWT_UNKNOWN_KID)
		rc = JWT_INVALID;
	if (rc != JWT_OK)
		memset(id, 0, sizeof *id);
	json_decref(hdr);
	json_decref(claims);
	if (buf) {
		OPENSSL_cleanse(buf, len + 4);
		free(buf);
	}
	return rc;
}
