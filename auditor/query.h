/* `auditor query`: prints stored audit events matching a request id, principal and
 * time range, as JSON lines (the original events), a table or CSV. */
#ifndef GW_QUERY_H
#define GW_QUERY_H

/* argv[0] is "query". Returns the exit code: 0 (also when nothing matches),
 * 1 on a database error, 2 on bad flags. */
int query_main(int argc, char **argv);

/* Writes s to stdout as one RFC 4180 CSV field (quoted when it must be). */
void query_csv_field(const char *s);

#endif
