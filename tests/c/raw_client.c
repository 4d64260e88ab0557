/* A client whose calls on its socket are `syscall` instructions of its own,
 * as a static libc, a runtime such as Go's or inline assembly makes them
 * (tests/test_raw_syscalls.py, issue 12); built by the test.
 *
 *   raw_client PORT TOTAL CHUNK
 *
 * Connects to 127.0.0.1:PORT through libc (so the library accelerates the
 * connection), then, in a thread made by pthread_create, with every signal
 * blocked by a raw rt_sigprocmask, does the rest with raw system calls:
 * writes TOTAL bytes of a pattern in CHUNK-byte writes, each followed by a
 * raw ppoll (its 8-byte mask) and raw reads of the echo, checked byte by
 * byte; then a raw shutdown(SHUT_WR) and a raw read of the EOF, and a raw
 * close.  Prints "ok echoed N accelerated A" (A: connections on a ring,
 * onfabric.h, after the first echo). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "onfabric.h"

static long raw6(long nr, long a, long b, long c, long d, long e, long f)
{
	long r;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(r)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return r;
}
#define raw3(nr, a, b, c) raw6(nr, (long)(a), (long)(b), (long)(c), 0, 0, 0)

static int fd;
static size_t total, chunk;
static long accel = -2;

static unsigned char pat(size_t i) { return (unsigned char)(i * 131u + (i >> 9)); }

static void fail(const char *what, long r)
{
	printf("FAIL %s: %ld\n", what, r);
	fflush(stdout);
	exit(1);
}

static void *run(void *arg)
{
	(void)arg;
	uint64_t all = ~0ull;
	long r = raw6(SYS_rt_sigprocmask, SIG_BLOCK, (long)&all, 0, 8, 0, 0);
	if (r)
		fail("rt_sigprocmask", r);
	unsigned char *out = malloc(chunk), *in = malloc(chunk);
	size_t sent = 0, got = 0;
	while (sent < total) {
		size_t n = total - sent < chunk ? total - sent : chunk;
		for (size_t i = 0; i < n; i++)
			out[i] = pat(sent + i);
		for (size_t o = 0; o < n;) {
			r = raw3(SYS_write, fd, out + o, n - o);
			if (r <= 0)
				fail("write", r);
			o += (size_t)r;
		}
		sent += n;
		while (got < sent) {
			struct pollfd p = {fd, POLLIN, 0};
			uint64_t none = 0;
			r = raw6(SYS_ppoll, (long)&p, 1, 0, (long)&none, 8, 0);
			if (r != 1 || !(p.revents & POLLIN))
				fail("ppoll", r);
			r = raw3(SYS_read, fd, in, sent - got);
			if (r <= 0)
				fail("read", r);
			for (long i = 0; i < r; i++)
				if (in[i] != pat(got + (size_t)i))
					fail("byte", (long)(got + (size_t)i));
			got += (size_t)r;
			if (accel == -2)
				accel = on_fabric();
		}
	}
	r = raw3(SYS_shutdown, fd, SHUT_WR, 0);
	if (r)
		fail("shutdown", r);
	r = raw3(SYS_read, fd, in, chunk);
	if (r != 0)
		fail("eof", r);
	r = raw3(SYS_close, fd, 0, 0);
	if (r)
		fail("close", r);
	printf("ok echoed %zu accelerated %ld\n", got, accel);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: raw_client PORT TOTAL CHUNK\n");
		return 2;
	}
	total = strtoull(argv[2], NULL, 10);
	chunk = strtoull(argv[3], NULL, 10);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("connect");
		return 1;
	}
	pthread_t t;
	if (pthread_create(&t, NULL, run, NULL))
		return 1;
	pthread_join(t, NULL);
	return 0;
}
