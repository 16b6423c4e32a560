/* `auditor report`: requests, denials, errors and tokens per principal, model, endpoint
 * or day over a time range, for compliance staff. */
#ifndef GW_REPORT_H
#define GW_REPORT_H

#include <stddef.h>

#define REPORT_SQL_MAX 1024
/* The report statement grouped by `by` (principal|model|endpoint|day), parameters $1
 * since and $2 until in unix microseconds. Returns -1 for an unknown `by`. */
int report_sql(const char *by, char *buf, size_t cap);

/* argv[0] is "report". Exit 0, 1 on a database error, 2 on usage. */
int report_main(int argc, char **argv);

#endif
