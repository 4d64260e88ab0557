/* Two waiters on one socket: a thread asleep in epoll_wait on one set while
 * the main thread's poll() and epoll_wait() on another set time out on the
 * same socket.  Then the peer writes: the sleeping thread must wake.
 * Regression: each waiter cleared the ring's "waiting" flag when it was
 * done, wiping the sleeping one's arm, so the write rang no doorbell and the
 * thread slept until its timeout.  tests/test_epoll_scale.py runs it plain
 * and under fastivc and compares the outputs. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int s, e2;
static int woke_n;
static double woke_after;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void *sleeper(void *arg)
{
	double *written = arg;
	struct epoll_event ev;
	woke_n = epoll_wait(e2, &ev, 1, 5000);
	woke_after = now() - *written;
	return NULL;
}

int main(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(l, (struct sockaddr *)&a, al) || listen(l, 4) || getsockname(l, (struct sockaddr *)&a, &al))
		return 2;
	int c = socket(AF_INET, SOCK_STREAM, 0);
	char b[8];
	if (connect(c, (struct sockaddr *)&a, al) < 0 || (s = accept(l, NULL, NULL)) < 0)
		return 2;
	/* one byte each way: both ends on the ring under fastivc */
	if (write(c, "c", 1) != 1 || read(s, b, 1) != 1 || write(s, "s", 1) != 1 ||
	    read(c, b, 1) != 1)
		return 2;
	fcntl(s, F_SETFL, O_NONBLOCK);
	e2 = epoll_create1(0);
	int e1 = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
	epoll_ctl(e2, EPOLL_CTL_ADD, s, &ev);
	epoll_ctl(e1, EPOLL_CTL_ADD, s, &ev);
	double written = 0;
	pthread_t t;
	pthread_create(&t, NULL, sleeper, &written);
	struct timespec nap = {0, 100 * 1000000};
	nanosleep(&nap, NULL); /* the thread is asleep in epoll_wait(e2) */
	struct pollfd p = {.fd = s, .events = POLLIN};
	printf("poll on the same socket: %d\n", poll(&p, 1, 100));
	printf("epoll_wait on another set: %d\n", epoll_wait(e1, &ev, 1, 100));
	written = now();
	printf("write %zd\n", write(c, "x", 1));
	pthread_join(t, NULL);
	printf("the sleeping thread: n=%d, %s\n", woke_n,
	       woke_n == 1 && woke_after < 2.0 ? "woken by the write" : "slept through it");
	printf("read %zd\n", read(s, b, sizeof(b)));
	return 0;
}
