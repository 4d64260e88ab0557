/* fastivc — futex doorbell: for two sides that share a kernel.  The futex
 * words live in the shared mapping, so these are process-shared futexes
 * (no FUTEX_PRIVATE_FLAG).  The TCP-socket doorbell (DESIGN.md) comes with
 * the upgrade; this one is what the channel tests and `bench ring` use. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "fastivc/channel.h"

static int futex_wait(void *ctx, uint32_t *word, uint32_t expected, uint32_t timeout_ms)
{
	(void)ctx;
	struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
	int saved = errno;
	long r = syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0);
	int e = errno;
	errno = saved;
	if (r == 0 || e == EAGAIN)
		return 0;
	if (e == ETIMEDOUT)
		return -ETIMEDOUT;
	if (e == EINTR)
		return -EINTR;
	return 0; /* EFAULT etc. cannot happen on our mapping; re-check instead */
}

static void futex_wake(void *ctx, uint32_t *word)
{
	(void)ctx;
	int saved = errno;
	syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
	errno = saved;
}

const struct fivc_doorbell fivc_doorbell_futex = {futex_wait, futex_wake, NULL, NULL};
