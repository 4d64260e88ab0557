/* Message-passing test on the channel's data path: a producer thread writes a
 * deterministic stream through fivc_chan_write, a consumer thread reads it
 * through fivc_chan_read and verifies every byte.  Ring bytes are plain
 * memcpy; only the tail release / acquire (atomics.h "MP") orders them.
 *
 * Run under ThreadSanitizer, which checks happens-before exactly: the normal
 * build is race-free; built with -DFIVC_BREAK_MP (relaxed instead of
 * release/acquire) TSan reports the ring memcpy as a data race and the
 * program fails.  Without TSan it still verifies the stream. */
#define _GNU_SOURCE
#include <pthread.h>

#include "check.h"

#define TOTAL (8u << 20)

static void *consumer(void *arg)
{
	struct fivc_chan *s = arg;
	static uint8_t buf[3000];
	uint64_t pos = 0;
	while (pos < TOTAL) {
		ssize_t r = fivc_chan_read(s, buf, sizeof(buf), 0);
		if (r <= 0 || stream_verify(9, pos, buf, (size_t)r) != (size_t)r)
			return (void *)1;
		pos += (uint64_t)r;
	}
	return NULL;
}

int main(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	memfab_init(&m, 4096);
	memfab_pair(&m, &c, &s);
	pthread_t t;
	CHECK(pthread_create(&t, NULL, consumer, &s) == 0);
	static uint8_t buf[1500];
	uint64_t pos = 0;
	while (pos < TOTAL) {
		size_t n = (size_t)FIVC_MIN((uint64_t)sizeof(buf), TOTAL - pos);
		stream_fill(9, pos, buf, n);
		CHECK_EQ(fivc_chan_write(&c, buf, n, 0), n);
		pos += n;
	}
	void *rv;
	pthread_join(t, &rv);
	CHECK(rv == NULL);
	printf("litmus_mp: %u bytes verified\n", TOTAL);
	return 0;
}
