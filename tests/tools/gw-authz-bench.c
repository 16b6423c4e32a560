/* gw-authz-bench: authorization decisions per second on one thread, for the functions
 * `authz serve` runs per request: the API key check (hash + constant-time compare),
 * JWT verification (RS256, ES256, EdDSA), and the policy + limits step every allowed
 * request takes. Keys are generated in-process; tokens are signed once and verified in
 * a loop. Prints one JSON line per case: {"case","decisions","seconds","per_second"}.
 *   gw-authz-bench [SECONDS_PER_CASE]   (default 2) */
#define GW_JWT_SIGN_NO_MAIN
#include "gw-jwt-sign.c"

#include "apikey.h"
#include "decide.h"
#include "introspect.h"
#include "jwt.h"
#include "keys.h"
#include "limiter.h"
#include "policy.h"

#include <time.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void report(const char *name, long n, double secs)
{
	printf("{\"case\":\"%s\",\"decisions\":%ld,\"seconds\":%.3f,\"per_second\":%.0f}\n", name,
	       n, secs, n / secs);
	fflush(stdout);
}

static int bench_jwt(const char *name, const char *alg, EVP_PKEY *k, const char *kid,
		     const struct jwks *keys, double secs)
{
	char claims[512];
	long long now = (long long)time(NULL);
	snprintf(claims, sizeof claims,
		 "{\"iss\":\"https://idp.test\",\"aud\":\"gw\",\"sub\":\"alice\",\"exp\":%lld,"
		 "\"groups\":[\"staff\",\"hpc\"],\"idp\":\"anl.gov\"}",
		 now + 3600);
	char *tok = jwt_sign(alg, k, NULL, 0, kid, claims, NULL);
	if (!tok)
		return -1;
	struct jwt_config cfg = {"https://idp.test", "gw", 60, NULL, NULL, NULL, NULL, NULL, 0};
	struct identity id;
	char msg[256], kidout[128];
	size_t len = strlen(tok);
	long n = 0;
	double t0 = now_s(), t;
	do {
		for (int i = 0; i < 64; i++)
			if (jwt_verify(&cfg, keys, tok, len, now * 1000, &id, msg, sizeof msg,
				       kidout) != JWT_OK) {
				fprintf(stderr, "gw-authz-bench: %s: %s\n", name, msg);
				free(tok);
				return -1;
			}
		n += 64;
	} while ((t = now_s()) - t0 < secs);
	report(name, n, t - t0);
	free(tok);
	return 0;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 2.0;
	if (secs <= 0)
		secs = 2.0;

	/* API keys: 100000 keys cached, one verified repeatedly. */
	struct key_cache c;
	if (keys_init(&c, 200000) != 0)
		return 1;
	char key[APIKEY_LEN + 1], id[APIKEY_ID_HEX + 1], last[APIKEY_LEN + 1] = "";
	for (int i = 0; i < 100000; i++) {
		unsigned char hash[APIKEY_HASH_LEN];
		if (apikey_generate(key, id) != 0 || apikey_hash(key, APIKEY_LEN, hash) != 0)
			return 1;
		struct key_row r = {.id = id,
				    .principal = "alice",
				    .groups = NULL,
				    .ngroups = 0,
				    .models = NULL,
				    .nmodels = 0};
		memcpy(r.hash, hash, sizeof hash);
		if (keys_put(&c, &r) != 0)
			return 1;
		memcpy(last, key, sizeof key);
	}
	struct decision d;
	long n = 0;
	double t0 = now_s(), t;
	do {
		for (int i = 0; i < 256; i++) {
			decide(&c, last, APIKEY_LEN, NULL, 0, &d);
			if (!d.allowed)
				return 1;
		}
		n += 256;
	} while ((t = now_s()) - t0 < secs);
	report("api_key", n, t - t0);

	/* JWTs */
	EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	char *j1 = jwk_of(rsa, "r1", NULL), *j2 = jwk_of(ec, "e1", NULL),
	     *j3 = jwk_of(ed, "d1", NULL);
	char doc[4096];
	snprintf(doc, sizeof doc, "{\"keys\":[%s,%s,%s]}", j1, j2, j3);
	struct jwks keys;
	int skipped;
	char err[128];
	if (jwks_parse(doc, strlen(doc), &keys, &skipped, err, sizeof err) != 0 || keys.n != 3)
		return 1;
	if (bench_jwt("jwt_rs256", "RS256", rsa, "r1", &keys, secs) ||
	    bench_jwt("jwt_es256", "ES256", ec, "e1", &keys, secs) ||
	    bench_jwt("jwt_eddsa", "EdDSA", ed, "d1", &keys, secs))
		return 1;

	/* Cached introspection: SHA-256 of the token and a cache hit, 100000 tokens cached. */
	struct event_base *base = event_base_new();
	struct introspect_config ic = {"http://127.0.0.1:9/", "bench", "bench", 1000, 200000};
	struct introspect *in = base ? introspect_new(base, &ic, NULL) : NULL;
	if (!in)
		return 1;
	struct identity iid;
	memset(&iid, 0, sizeof iid);
	snprintf(iid.principal, sizeof iid.principal, "alice@anl.gov");
	char tokb[64];
	int64_t far = ((int64_t)time(NULL) + 3600) * 1000;
	for (int i = 0; i < 100000; i++) {
		snprintf(tokb, sizeof tokb, "AgOpaqueToken%08dxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", i);
		if (introspect_put(in, tokb, strlen(tokb), &iid, far) != 0)
			return 1;
	}
	n = 0;
	t0 = now_s();
	do {
		for (int i = 0; i < 256; i++) {
			snprintf(tokb, sizeof tokb,
				 "AgOpaqueToken%08dxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
				 (int)((n + i) % 100000));
			if (introspect_lookup(in, tokb, strlen(tokb), far - 1000, NULL, &iid) !=
			    INTRO_OK)
				return 1;
		}
		n += 256;
	} while ((t = now_s()) - t0 < secs);
	report("introspection_cached", n, t - t0);
	introspect_free(in);
	event_base_free(base);

	/* Policy + limits: admission, models, and a limiter admit/usage pair per request
	 * over 10000 principals (the per-request work after authentication). */
	const char *pol = "{\"allowed_groups\":[\"staff\"],\"models_by_group\":{\"staff\":[\"m1\","
			  "\"m2\"]},\"limits\":{\"default\":{\"requests_per_minute\":1000000,"
			  "\"concurrent\":100,\"tokens_per_day\":1000000000}}}";
	struct policy *p = policy_parse(pol, strlen(pol), err, sizeof err);
	struct limiter l;
	if (!p || limiter_init(&l, 20000, 200000) != 0)
		return 1;
	struct identity who;
	memset(&who, 0, sizeof who);
	snprintf(who.groups, sizeof who.groups, "staff");
	snprintf(who.models, sizeof who.models, "*");
	char rule[64], msg[384], models[256], rid[33];
	struct lim_refusal r;
	n = 0;
	t0 = now_s();
	do {
		for (int i = 0; i < 256; i++) {
			snprintf(who.principal, sizeof who.principal, "user%ld", (n + i) % 10000);
			snprintf(rid, sizeof rid, "%032lx", n + i);
			int64_t ms = (int64_t)time(NULL) * 1000;
			if (policy_admit(p, &who, rule, sizeof rule, msg, sizeof msg) != 0 ||
			    policy_models_for(p, &who, models, sizeof models) != 0 ||
			    limiter_admit(&l, p, &who, rid, ms + 60000, ms, 0, &r) != 0)
				return 1;
			limiter_usage(&l, rid, who.principal, 10, ms);
		}
		n += 256;
	} while ((t = now_s()) - t0 < secs);
	report("policy_and_limits", n, t - t0);

	policy_free(p);
	limiter_free(&l);
	jwks_free(&keys);
	keys_free(&c);
	free(j1);
	free(j2);
	free(j3);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(ec);
	EVP_PKEY_free(ed);
	return 0;
}
