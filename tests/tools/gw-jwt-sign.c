/* gw-jwt-sign: a test tool that signs JWTs and prints public JWKs, so the authz tests and
 * the bench make their own tokens from keys generated with the openssl CLI.
 *   gw-jwt-sign sign --alg RS256|ES256|EdDSA|HS256|none (--key PEM | --secret-file F)
 *                    [--kid K] [--claims JSON] [--header JSON]
 *   gw-jwt-sign jwk --key PEM [--kid K] [--alg A]     public JWK of a private key */
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *b64url(const unsigned char *in, size_t len)
{
	static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	char *out = malloc(len * 4 / 3 + 4), *o = out;
	if (!out)
		return NULL;
	size_t i = 0;
	for (; i + 2 < len; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		*o++ = t[v >> 18];
		*o++ = t[(v >> 12) & 63];
		*o++ = t[(v >> 6) & 63];
		*o++ = t[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;
		*o++ = t[v >> 18];
		*o++ = t[(v >> 12) & 63];
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		*o++ = t[v >> 18];
		*o++ = t[(v >> 12) & 63];
		*o++ = t[(v >> 6) & 63];
	}
	*o = 0;
	return out;
}

__attribute__((unused)) static EVP_PKEY *load_key(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		perror(path);
		return NULL;
	}
	EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (!k)
		fputs("gw-jwt-sign: not a PEM private key\n", stderr);
	return k;
}

static char *bn_b64(EVP_PKEY *k, const char *name, int pad)
{
	BIGNUM *bn = NULL;
	if (!EVP_PKEY_get_bn_param(k, name, &bn))
		return NULL;
	unsigned char buf[1024];
	int n = pad ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf);
	BN_free(bn);
	return n > 0 ? b64url(buf, (size_t)n) : NULL;
}

/* The public JWK of k as compact JSON (malloc'd), NULL on an unsupported key. */
static char *jwk_of(EVP_PKEY *k, const char *kid, const char *alg)
{
	json_t *j = json_object();
	if (EVP_PKEY_is_a(k, "RSA")) {
		char *n = bn_b64(k, OSSL_PKEY_PARAM_RSA_N, 0),
		     *e = bn_b64(k, OSSL_PKEY_PARAM_RSA_E, 0);
		json_object_set_new(j, "kty", json_string("RSA"));
		json_object_set_new(j, "n", json_string(n));
		json_object_set_new(j, "e", json_string(e));
		free(n);
		free(e);
	} else if (EVP_PKEY_is_a(k, "EC")) {
		char *x = bn_b64(k, OSSL_PKEY_PARAM_EC_PUB_X, 32);
		char *y = bn_b64(k, OSSL_PKEY_PARAM_EC_PUB_Y, 32);
		json_object_set_new(j, "kty", json_string("EC"));
		json_object_set_new(j, "crv", json_string("P-256"));
		json_object_set_new(j, "x", json_string(x));
		json_object_set_new(j, "y", json_string(y));
		free(x);
		free(y);
	} else if (EVP_PKEY_is_a(k, "ED25519")) {
		unsigned char raw[32];
		size_t rl = sizeof raw;
		EVP_PKEY_get_raw_public_key(k, raw, &rl);
		char *x = b64url(raw, rl);
		json_object_set_new(j, "kty", json_string("OKP"));
		json_object_set_new(j, "crv", json_string("Ed25519"));
		json_object_set_new(j, "x", json_string(x));
		free(x);
	} else {
		json_decref(j);
		return NULL;
	}
	if (kid)
		json_object_set_new(j, "kid", json_string(kid));
	if (alg)
		json_object_set_new(j, "alg", json_string(alg));
	json_object_set_new(j, "use", json_string("sig"));
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	return s;
}

__attribute__((unused)) static int cmd_jwk(const char *keyfile, const char *kid, const char *alg)
{
	EVP_PKEY *k = load_key(keyfile);
	char *s = k ? jwk_of(k, kid, alg) : NULL;
	EVP_PKEY_free(k);
	if (!s) {
		fputs("gw-jwt-sign: unsupported key\n", stderr);
		return 1;
	}
	puts(s);
	free(s);
	return 0;
}

/* A signed token (malloc'd) or NULL. k for RS256/ES256/EdDSA, sec for HS256. */
static char *jwt_sign(const char *alg, EVP_PKEY *k, const unsigned char *sec, size_t n,
		      const char *kid, const char *claims, const char *header)
{
	json_t *h = header ? json_loads(header, 0, NULL) : json_object();
	if (!h)
		return NULL;
	if (!json_object_get(h, "alg"))
		json_object_set_new(h, "alg", json_string(alg));
	json_object_set_new(h, "typ", json_string("JWT"));
	if (kid)
		json_object_set_new(h, "kid", json_string(kid));
	char *hs = json_dumps(h, JSON_COMPACT);
	json_decref(h);
	char *h64 = b64url((unsigned char *)hs, strlen(hs));
	char *c64 = b64url((const unsigned char *)claims, strlen(claims));
	size_t il = strlen(h64) + 1 + strlen(c64);
	char *input = malloc(il + 1);
	snprintf(input, il + 1, "%s.%s", h64, c64);
	unsigned char sig[1024];
	size_t sl = 0;
	int ok = 1;
	if (strcmp(alg, "none") == 0) {
		sl = 0;
	} else if (strcmp(alg, "HS256") == 0) {
		unsigned int ml = 0;
		ok = n > 0 && HMAC(EVP_sha256(), sec, (int)n, (unsigned char *)input, il, sig, &ml);
		sl = ml;
	} else {
		EVP_MD_CTX *ctx = EVP_MD_CTX_new();
		const EVP_MD *md = strcmp(alg, "EdDSA") == 0 ? NULL : EVP_sha256();
		unsigned char der[256];
		size_t dl = sizeof der;
		ok = k && ctx && EVP_DigestSignInit(ctx, NULL, md, NULL, k) == 1;
		if (ok && EVP_PKEY_is_a(k, "EC")) {
			ok = EVP_DigestSign(ctx, der, &dl, (unsigned char *)input, il) == 1;
			const unsigned char *p = der;
			ECDSA_SIG *es = ok ? d2i_ECDSA_SIG(NULL, &p, (long)dl) : NULL;
			ok = es != NULL;
			if (ok) {
				BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32);
				BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32);
				sl = 64;
			}
			ECDSA_SIG_free(es);
		} else if (ok) {
			sl = sizeof sig;
			ok = EVP_DigestSign(ctx, sig, &sl, (unsigned char *)input, il) == 1;
		}
		EVP_MD_CTX_free(ctx);
	}
	char *tok = NULL;
	if (ok) {
		char *s64 = b64url(sig, sl);
		size_t tl = il + 2 + strlen(s64);
		tok = malloc(tl);
		if (tok)
			snprintf(tok, tl, "%s.%s", input, s64);
		free(s64);
	}
	free(input);
	free(h64);
	free(c64);
	free(hs);
	return tok;
}

__attribute__((unused)) static int cmd_sign(const char *alg, const char *keyfile,
					    const char *secretfile, const char *kid,
					    const char *claims, const char *header)
{
	unsigned char sec[512];
	size_t n = 0;
	EVP_PKEY *k = NULL;
	if (strcmp(alg, "HS256") == 0) {
		FILE *f = secretfile ? fopen(secretfile, "rb") : NULL;
		n = f ? fread(sec, 1, sizeof sec, f) : 0;
		if (f)
			fclose(f);
		while (n && (sec[n - 1] == '\n' || sec[n - 1] == '\r'))
			n--;
	} else if (strcmp(alg, "none") != 0 && !(k = keyfile ? load_key(keyfile) : NULL)) {
		return 1;
	}
	char *tok = jwt_sign(alg, k, sec, n, kid, claims, header);
	EVP_PKEY_free(k);
	if (!tok) {
		fputs("gw-jwt-sign: signing failed\n", stderr);
		return 1;
	}
	puts(tok);
	free(tok);
	return 0;
}

#ifndef GW_JWT_SIGN_NO_MAIN
int main(int argc, char **argv)
{
	const char *alg = "RS256", *key = NULL, *secret = NULL, *kid = NULL, *claims = "{}",
		   *header = NULL, *jalg = NULL;
	if (argc < 2) {
		fputs(
		    "usage: gw-jwt-sign sign|jwk [--alg A] [--key PEM] [--secret-file F] [--kid K]"
		    " [--claims JSON] [--header JSON]\n",
		    stderr);
		return 2;
	}
	for (int i = 2; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--alg") == 0)
			alg = jalg = argv[i + 1];
		else if (strcmp(argv[i], "--key") == 0)
			key = argv[i + 1];
		else if (strcmp(argv[i], "--secret-file") == 0)
			secret = argv[i + 1];
		else if (strcmp(argv[i], "--kid") == 0)
			kid = argv[i + 1];
		else if (strcmp(argv[i], "--claims") == 0)
			claims = argv[i + 1];
		else if (strcmp(argv[i], "--header") == 0)
			header = argv[i + 1];
		else {
			fprintf(stderr, "gw-jwt-sign: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (strcmp(argv[1], "jwk") == 0)
		return key ? cmd_jwk(key, kid, jalg) : 2;
	if (strcmp(argv[1], "sign") == 0)
		return cmd_sign(alg, key, secret, kid, claims, header);
	return 2;
}
#endif
