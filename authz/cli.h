/* authz's admin subcommands: `authz migrate` and `authz keys create|list|revoke`. */
#ifndef GW_AUTHZ_CLI_H
#define GW_AUTHZ_CLI_H

/* argv starts at the subcommand's own arguments. Return the process exit code:
 * 0 done, 1 failed (logged), 2 bad usage (usage printed on stderr). */
int cli_migrate(int argc, char **argv);
int cli_keys(int argc, char **argv);

/* RFC 3339 ("2030-01-31T12:00:00Z", "...T12:00:00.5+02:00") to unix ms; -1 when malformed. */
int cli_parse_rfc3339(const char *s, long long *unix_ms);

#endif
