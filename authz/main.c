/* authz: who may do what. `authz serve` runs the Kafka stage; the other subcommands
 * administer its schema and API keys. */
#include "cli.h"
#include "runtime.h"
#include "serve.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: authz serve                 run the authorization stage\n"
    "       authz migrate               create or update the authz schema and grants\n"
    "       authz keys create --principal P [--groups g1,g2] [--models m1,m2]\n"
    "                         [--expires RFC3339] [--key-from-env VAR]\n"
    "                                   create an API key (printed once on stdout), or\n"
    "                                   register the key held in $VAR / $VAR_FILE\n"
    "       authz keys list             list keys (never their secrets or hashes)\n"
    "       authz keys revoke KEY_ID    revoke a key (takes effect within ~1 s)\n"
    "       authz --help\n"
    "\n"
    "Configuration comes from the environment (and .run/env or GW_ENV_FILE):\n"
    "  GW_KAFKA_BROKERS, GW_DATABASE_URL[_FILE], GW_DATABASE_ADMIN_URL[_FILE],\n"
    "  GW_SEAL_KEY[_FILE], GW_AUTHZ_ROLE, GW_AUTHZ_GROUP, GW_AUTHZ_MAX_KEYS,\n"
    "  GW_AUTHZ_REFRESH_MS, GW_AUTHZ_USAGE_FLUSH_MS, GW_AUTHZ_USAGE_MAX,\n"
    "  GW_AUTHZ_QUOTA_SYNC_MS,\n"
    "  GW_AUTHZ_DB_TIMEOUT_MS, GW_AUTHZ_STOP_TIMEOUT_MS, GW_KAFKA_FETCH_WAIT_MS,\n"
    "  GW_AUTHZ_MAX_PRINCIPALS, GW_AUTHZ_MAX_INFLIGHT, GW_POLICY_FILE,\n"
    "  GW_JWKS_FILE or GW_JWKS_URL, GW_JWKS_REFRESH_S, GW_JWKS_KID_REFETCH_S,\n"
    "  GW_AUTHZ_JWKS_MAX_HELD, GW_AUTHZ_CA_FILE, GW_JWT_ISSUER,\n"
    "  GW_JWT_AUDIENCE, GW_JWT_LEEWAY_S,\n"
    "  GW_JWT_HS256_SECRET[_FILE], GW_JWT_{PRINCIPAL,GROUPS,IDP,POLICIES}_CLAIM,\n"
    "  GW_INTROSPECTION_URL, GW_INTROSPECTION_CLIENT_ID,\n"
    "  GW_INTROSPECTION_CLIENT_SECRET[_FILE], GW_INTROSPECTION_TIMEOUT_MS,\n"
    "  GW_INTROSPECTION_CACHE_MAX, GW_ADMIN_LISTEN (default 127.0.0.1:9101),\n"
    "  GW_LOG_LEVEL. See docs/authz.md.\n";

int main(int argc, char **argv)
{
	if (argc < 2) {
		fputs(usage, stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		fputs(usage, stdout);
		return 0;
	}
	if (strcmp(cmd, "serve") == 0) {
		if (argc > 2) {
			fputs(usage, stderr);
			return 2;
		}
		return serve_main();
	}
	if (strcmp(cmd, "migrate") == 0 || strcmp(cmd, "keys") == 0) {
		if (runtime_setup_cli("authz") != 0)
			return 1;
		return cmd[0] == 'm' ? cli_migrate(argc - 2, argv + 2)
				     : cli_keys(argc - 2, argv + 2);
	}
	fprintf(stderr, "authz: unknown command '%s'\n", cmd);
	fputs(usage, stderr);
	return 2;
}
