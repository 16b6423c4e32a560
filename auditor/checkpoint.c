/* Ed25519 through OpenSSL's EVP interface (one-shot DigestSign: Ed25519 hashes itself). */
#include "checkpoint.h"
#include "log.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>

static const char *ssl_error(void)
{
	static char buf[256];
	unsigned long e = ERR_get_error();
	if (!e)
		return "unknown";
	ERR_error_string_n(e, buf, sizeof buf);
	ERR_clear_error();
	return buf;
}

static int key_id(struct checkpoint_key *k)
{
	unsigned char raw[64], md[EVP_MAX_MD_SIZE];
	size_t n = sizeof raw;
	unsigned int mdlen = 0;
	if (EVP_PKEY_get_raw_public_key(k->pkey, raw, &n) != 1 ||
	    EVP_Digest(raw, n, md, &mdlen, EVP_sha256(), NULL) != 1)
		return -1;
	for (int i = 0; i < 8; i++)
		snprintf(k->key_id + 2 * i, 3, "%02x", md[i]);
	return 0;
}

int checkpoint_key_load(struct checkpoint_key *k, const char *path, int sign)
{
	memset(k, 0, sizeof *k);
	FILE *f = fopen(path, "r");
	if (!f) {
		log_error("cannot open the checkpoint key file", LS("path", path),
			  LS("error", strerror(errno)));
		return -1;
	}
	EVP_PKEY *p = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	if (p) {
		k->can_sign = 1;
	} else if (!sign) {
		ERR_clear_error();
		rewind(f);
		p = PEM_read_PUBKEY(f, NULL, NULL, NULL);
	}
	fclose(f);
	if (!p) {
		log_error(sign ? "checkpoint signing key is not a PEM private key (make one with "
				 "`openssl genpkey -algorithm ed25519`)"
			       : "checkpoint verify key is not a PEM public or private key",
			  LS("path", path), LS("error", ssl_error()));
		return -1;
	}
	if (EVP_PKEY_get_id(p) != EVP_PKEY_ED25519) {
		log_error("checkpoint key is not Ed25519", LS("path", path));
		EVP_PKEY_free(p);
		return -1;
	}
	k->pkey = p;
	if (key_id(k) != 0) {
		log_error("cannot read the checkpoint key's public half", LS("path", path));
		checkpoint_key_free(k);
		return -1;
	}
	return 0;
}

void checkpoint_key_free(struct checkpoint_key *k)
{
	EVP_PKEY_free(k->pkey);
	memset(k, 0, sizeof *k);
}

int checkpoint_message(char *out, size_t cap, int chain, long long seq, const char *hashhex,
		       const char *signed_at)
{
	int n = snprintf(out, cap,
			 "gw-audit-checkpoint-v1\nchain_id=%d\nseq=%lld\nhash=%s\nsigned_at=%s\n",
			 chain, seq, hashhex, signed_at);
	return n > 0 && (size_t)n < cap ? n : -1;
}

int checkpoint_sign(const struct checkpoint_key *k, const char *msg, size_t len, char *sighex)
{
	unsigned char sig[64];
	size_t siglen = sizeof sig;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int ok = md && EVP_DigestSignInit(md, NULL, NULL, NULL, k->pkey) == 1 &&
		 EVP_DigestSign(md, sig, &siglen, (const unsigned char *)msg, len) == 1 &&
		 siglen == sizeof sig;
	EVP_MD_CTX_free(md);
	if (!ok) {
		log_error("cannot sign a checkpoint", LS("error", ssl_error()));
		return -1;
	}
	for (size_t i = 0; i < siglen; i++)
		snprintf(sighex + 2 * i, 3, "%02x", sig[i]);
	return 0;
}

int checkpoint_verify(const struct checkpoint_key *k, const char *msg, size_t len,
		      const char *sighex)
{
	unsigned char sig[64];
	if (!sighex || strlen(sighex) != CHECKPOINT_SIG_HEX)
		return 0;
	for (int i = 0; i < 64; i++) {
		unsigned int b;
		if (sscanf(sighex + 2 * i, "%2x", &b) != 1)
			return 0;
		sig[i] = (unsigned char)b;
	}
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int ok = md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, k->pkey) == 1 &&
		 EVP_DigestVerify(md, sig, sizeof sig, (const unsigned char *)msg, len) == 1;
	EVP_MD_CTX_free(md);
	ERR_clear_error();
	return ok;
}
