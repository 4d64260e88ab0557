/* fastivc — small helpers shared by the C core. */
#ifndef FASTIVC_UTIL_H
#define FASTIVC_UTIL_H

#include <stdint.h>
#include <time.h>

static inline uint64_t fivc_now_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define FIVC_MIN(a, b) ((a) < (b) ? (a) : (b))

#endif
