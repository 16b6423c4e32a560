/* A minimal unit-test harness: checks count, failures print where, and the run ends
 * with the "N passed, N failed" line CI reads. */
#ifndef GW_CHECK_H
#define GW_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_pass_, check_fail_;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (cond) {                                                                        \
			check_pass_++;                                                             \
		} else {                                                                           \
			check_fail_++;                                                             \
			fprintf(stdout, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);            \
		}                                                                                  \
	} while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
	do {                                                                                       \
		long long a_ = (long long)(a), b_ = (long long)(b);                                \
		if (a_ == b_) {                                                                    \
			check_pass_++;                                                             \
		} else {                                                                           \
			check_fail_++;                                                             \
			fprintf(stdout, "FAIL %s:%d: %s == %s (%lld != %lld)\n", __FILE__,         \
				__LINE__, #a, #b, a_, b_);                                         \
		}                                                                                  \
	} while (0)

#define CHECK_EQ_STR(a, b)                                                                         \
	do {                                                                                       \
		const char *a_ = (a), *b_ = (b);                                                   \
		if (a_ && b_ && strcmp(a_, b_) == 0) {                                             \
			check_pass_++;                                                             \
		} else {                                                                           \
			check_fail_++;                                                             \
			fprintf(stdout, "FAIL %s:%d: %s == %s (\"%s\" != \"%s\")\n", __FILE__,     \
				__LINE__, #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");         \
		}                                                                                  \
	} while (0)

static inline int check_done(void)
{
	printf("%d passed, %d failed\n", check_pass_, check_fail_);
	return check_fail_ ? 1 : 0;
}

#endif
