/* Time arguments of `auditor query`: RFC 3339 timestamps ("2024-05-01T12:00:00Z",
 * "2024-05-01T14:00:00.5+02:00", "2024-05-01") or an age before now ("15m", "24h", "7d"). */
#ifndef GW_TIMEARG_H
#define GW_TIMEARG_H

#include <stdint.h>

/* Parses s into unix microseconds; relative ages count back from now_us.
 * Returns 0, or -1 on anything malformed or out of range (years 1..9999). */
int timearg_parse(const char *s, int64_t now_us, int64_t *out_us);

/* Days since 1970-01-01 of a proleptic Gregorian date (month 1-12), for any year:
 * independent of the C library's time_t range. */
int64_t timearg_days_from_civil(int64_t y, int m, int d);

#endif
