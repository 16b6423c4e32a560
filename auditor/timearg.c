/* Time arguments of `auditor query`. Hand-parsed rather than strptime: strptime
 * depends on the locale, accepts out-of-range fields and ignores trailing text. */
#include "timearg.h"

#include <string.h>

#define US_PER_S 1000000LL

static int digits(const char *s, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm),
 * valid for any year and independent of the C library's time_t range. */
int64_t timearg_days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
	static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	return m == 2 && leap ? 29 : dm[m - 1];
}

static int parse_relative(const char *s, int64_t now_us, int64_t *out)
{
	size_t n = strlen(s);
	if (n < 2 || n > 12)
		return -1;
	int64_t v = 0;
	for (size_t i = 0; i + 1 < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	int64_t unit;
	switch (s[n - 1]) {
	case 's': unit = 1; break;
	case 'm': unit = 60; break;
	case 'h': unit = 3600; break;
	case 'd': unit = 86400; break;
	case 'w': unit = 7 * 86400; break;
	default: return -1;
	}
	/* At most 11 digits of weeks is ~6.6e17 s: cap at 10000 years to stay in range. */
	if (v > 10000LL * 366 * 86400 / unit)
		return -1;
	*out = now_us - v * unit * US_PER_S;
	return 0;
}

static int parse_rfc3339(const char *s, int64_t *out)
{
	int y, mo, d, h = 0, mi = 0, se = 0;
	int64_t frac_us = 0, offset_s = 0;
	if (strlen(s) < 10 || digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) ||
	    s[7] != '-' || digits(s + 8, 2, &d))
		return -1;
	if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo))
		return -1;
	const char *p = s + 10;
	if (*p) {
		if (*p != 'T' && *p != 't' && *p != ' ')
			return -1;
		p++;
		if (strlen(p) < 8 || digits(p, 2, &h) || p[2] != ':' || digits(p + 3, 2, &mi) ||
		    p[5] != ':' || digits(p + 6, 2, &se))
			return -1;
		/* 60 is a leap second; PostgreSQL folds it into the next minute too. */
		if (h > 23 || mi > 59 || se > 60)
			return -1;
		p += 8;
		if (*p == '.') {
			int nd = 0;
			int64_t scale = 100000;
			for (p++; *p >= '0' && *p <= '9'; p++, nd++) {
				if (nd < 6) {
					frac_us += (*p - '0') * scale;
					scale /= 10;
				}
				if (nd >= 9)
					return -1;
			}
			if (nd == 0)
				return -1;
		}
		if (*p == 'Z' || *p == 'z') {
			p++;
		} else if (*p == '+' || *p == '-') {
			int oh, om;
			if (strlen(p) < 6 || digits(p + 1, 2, &oh) || p[3] != ':' ||
			    digits(p + 4, 2, &om) || oh > 23 || om > 59)
				return -1;
			offset_s = (oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
			p += 6;
		} else {
			return -1; /* RFC 3339 requires the offset */
		}
		if (*p)
			return -1;
	}
	int64_t secs =
	    timearg_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - offset_s;
	*out = secs * US_PER_S + frac_us;
	return 0;
}

int timearg_parse(const char *s, int64_t now_us, int64_t *out_us)
{
	if (!s || !*s)
		return -1;
	if (s[0] >= '0' && s[0] <= '9' && strlen(s) >= 10 && s[4] == '-')
		return parse_rfc3339(s, out_us);
	return parse_relative(s, now_us, out_us);
}
