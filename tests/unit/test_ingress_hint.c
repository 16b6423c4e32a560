/* Unit tests of ingress/hint.c: the gw.requests key derived from a credential. API keys
 * give their public id; JWTs give a digest of their subject (stable across tokens of one
 * subject, distinct between subjects); the key never carries the token or the subject. */
#include "check.h"
#include "../../ingress/hint.h"
#include "hex.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

static void b64url(const char *in, char *out)
{
	unsigned char b[1024];
	int n = EVP_EncodeBlock(b, (const unsigned char *)in, (int)strlen(in));
	int j = 0;
	for (int i = 0; i < n; i++) {
		if (b[i] == '=')
			break;
		out[j++] = b[i] == '+' ? '-' : b[i] == '/' ? '_' : (char)b[i];
	}
	out[j] = 0;
}

/* A compact JWT with the given claims and a made-up signature (hint.c does not
 * verify; authz does). */
static void make_jwt(const char *claims, const char *sig, char *out, size_t cap)
{
	char h[256], p[1024];
	b64url("{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}", h);
	b64url(claims, p);
	snprintf(out, cap, "%s.%s.%s", h, p, sig);
}

static void hint_of(const char *cred, char out[HINT_MAX])
{
	memset(out, 'X', HINT_MAX);
	hint_derive(cred, strlen(cred), out);
}

static int is_hex(const char *s, size_t n)
{
	if (strlen(s) != n)
		return 0;
	return strspn(s, "0123456789abcdef") == n;
}

/* Hex of the first 16 bytes of SHA-256(s): what the contract says a hashed hint is. */
static void sha_hint(const char *s, char out[HINT_MAX])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL);
	hex_encode(md, 16, out);
}

int main(void)
{
	char a[HINT_MAX], b[HINT_MAX], want[HINT_MAX];

	/* API keys: the public id, never the secret. */
	hint_of("gw_0123456789abcdef_s3cr3tS3cr3tS3cr3t", a);
	CHECK_EQ_STR(a, "0123456789abcdef");
	hint_of("gw_0123456789abcdef_another-secret", b);
	CHECK_EQ_STR(a, b); /* the id, whatever the secret */
	CHECK(strstr(a, "s3cr3t") == NULL);
	/* Not the key shape (upper-case id, short id, no secret): hashed whole. */
	const char *not_keys[] = {"gw_0123456789ABCDEF_secret", "gw_0123456789abcde_secret",
				  "gw_0123456789abcdef_", "gw_0123456789abcdefXsecret"};
	for (size_t i = 0; i < sizeof not_keys / sizeof not_keys[0]; i++) {
		hint_of(not_keys[i], a);
		sha_hint(not_keys[i], want);
		CHECK_EQ_STR(a, want);
		CHECK(is_hex(a, 32));
	}

	/* JWTs: the subject decides, not the token. Claims of different lengths cover
	 * every base64 padding case. */
	char t1[2048], t2[2048], t3[2048], t4[2048];
	make_jwt("{\"sub\":\"alice@anl.gov\",\"iat\":1700000000,\"exp\":1700003600}", "c2lnMQ", t1,
		 sizeof t1);
	make_jwt("{\"sub\":\"alice@anl.gov\",\"iat\":1700009999,\"exp\":17000136000,\"x\":1}",
		 "c2lnMg", t2, sizeof t2);
	make_jwt("{\"iss\":\"https://idp\",\"sub\":\"alice@anl.gov\",\"a\":\"bc\"}", "c2ln", t3,
		 sizeof t3);
	make_jwt("{\"sub\":\"bob@anl.gov\",\"iat\":1700000000,\"exp\":1700003600}", "c2lnMQ", t4,
		 sizeof t4);
	CHECK(strcmp(t1, t2) != 0);
	char h1[HINT_MAX], h2[HINT_MAX], h3[HINT_MAX], h4[HINT_MAX];
	hint_of(t1, h1);
	hint_of(t2, h2);
	hint_of(t3, h3);
	hint_of(t4, h4);
	CHECK(is_hex(h1, 32));
	CHECK_EQ_STR(h1, h2); /* two tokens, one subject: one hint */
	CHECK_EQ_STR(h1, h3);
	CHECK(strcmp(h1, h4) != 0); /* another subject: another hint */
	sha_hint("alice@anl.gov", want);
	CHECK_EQ_STR(h1, want);
	sha_hint("bob@anl.gov", want);
	CHECK_EQ_STR(h4, want);
	hint_of(t1, a);
	CHECK_EQ_STR(a, h1); /* stable */
	/* Neither the subject nor any part of the token is in the key. */
	CHECK(strstr(h1, "alice") == NULL);
	char payload[1024];
	b64url("{\"sub\":\"alice@anl.gov\"", payload);
	payload[16] = 0;
	CHECK(strstr(h1, payload) == NULL);
	CHECK(strstr(t1, h1) == NULL);

	/* JWT-shaped but without a usable subject: hashed whole, so two tokens differ. */
	char n1[2048], n2[2048];
	make_jwt("{\"iat\":1700000000}", "c2lnMQ", n1, sizeof n1);
	make_jwt("{\"iat\":1700000001}", "c2lnMQ", n2, sizeof n2);
	hint_of(n1, a);
	hint_of(n2, b);
	sha_hint(n1, want);
	CHECK_EQ_STR(a, want);
	CHECK(strcmp(a, b) != 0);
	make_jwt("{\"sub\":42}", "c2ln", n1, sizeof n1); /* not a string */
	hint_of(n1, a);
	sha_hint(n1, want);
	CHECK_EQ_STR(a, want);
	make_jwt("{\"sub\":\"\"}", "c2ln", n1, sizeof n1); /* empty */
	hint_of(n1, a);
	sha_hint(n1, want);
	CHECK_EQ_STR(a, want);
	const char *odd[] = {"a.!!!.c", "a..c", "only.one-dot", "a.e30.c" /* {} */};
	for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
		hint_of(odd[i], a);
		sha_hint(odd[i], want);
		CHECK_EQ_STR(a, want);
	}
	/* An over-long subject is not used (hashed whole instead). */
	char longsub[400], claims[512];
	memset(longsub, 'z', 300);
	longsub[300] = 0;
	snprintf(claims, sizeof claims, "{\"sub\":\"%s\"}", longsub);
	make_jwt(claims, "c2ln", n1, sizeof n1);
	hint_of(n1, a);
	sha_hint(n1, want);
	CHECK_EQ_STR(a, want);

	/* Opaque tokens (introspection): the digest of the token, never the token. */
	hint_of("opaque-globus-token-AbC123", a);
	sha_hint("opaque-globus-token-AbC123", want);
	CHECK_EQ_STR(a, want);
	CHECK(strstr(a, "opaque") == NULL);
	/* Only len bytes count: the bytes after it do not change the hint. */
	hint_derive("gw_0123456789abcdef_secretMORE", 26, a);
	CHECK_EQ_STR(a, "0123456789abcdef");
	hint_derive("tokenAAAA", 5, a);
	hint_derive("tokenBBBB", 5, b);
	CHECK_EQ_STR(a, b);
	return check_done();
}
