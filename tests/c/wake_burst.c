/* Bursts over many connections between two processes, both in epoll: the
 * shape of redis-benchmark against redis-server.  A forked server echoes
 * every message on N connections; the client writes one message on each of
 * the N connections at once, then waits in epoll_wait until all N echoes
 * are back, ROUNDS times; every byte is checked.  Under fastivc each side
 * sleeps in epoll_wait while the other writes a burst, so wake records
 * (layout.h) coalesce the doorbells: each process prints the library's
 * counters (fastivc_wake_stats, found with dlsym) on a line starting
 * "wake", which tests/test_epoll_scale.py reads instead of comparing.
 *
 *   wake_burst N ROUNDS */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MSG 24

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void show_wake(const char *who)
{
	void (*ws)(uint64_t *) = (void (*)(uint64_t *))dlsym(RTLD_DEFAULT, "fastivc_wake_stats");
	if (!ws)
		return;
	uint64_t v[3];
	ws(v);
	printf("wake %s queued=%llu coalesced=%llu records=%llu\n", who, (unsigned long long)v[0],
	       (unsigned long long)v[1], (unsigned long long)v[2]);
	fflush(stdout);
}

static void msg(uint8_t *b, int conn, int round)
{
	for (int k = 0; k < MSG; k++)
		b[k] = (uint8_t)(conn * 31 + round * 7 + k);
}

static void serve(int lst, int n)
{
	int ep = epoll_create1(0);
	int *fds = calloc((size_t)n, sizeof(*fds));
	for (int i = 0; i < n; i++) {
		if ((fds[i] = accept4(lst, NULL, NULL, SOCK_NONBLOCK)) < 0)
			die("accept");
		struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e))
			die("epoll_ctl");
	}
	int open = n;
	while (open) {
		struct epoll_event ev[256];
		int k = epoll_wait(ep, ev, 256, 10000);
		if (k <= 0) {
			printf("server stalled\n");
			exit(1);
		}
		for (int i = 0; i < k; i++) {
			int fd = fds[ev[i].data.u32];
			uint8_t b[4096];
			ssize_t r;
			while ((r = read(fd, b, sizeof(b))) > 0)
				if (write(fd, b, (size_t)r) != r)
					die("echo write");
			if (r == 0) {
				close(fd);
				open--;
			}
		}
	}
	show_wake("server");
	exit(0);
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 64, rounds = argc > 2 ? atoi(argv[2]) : 200;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	int lst = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(lst, (struct sockaddr *)&a, al) || listen(lst, n + 16) ||
	    getsockname(lst, (struct sockaddr *)&a, &al))
		die("listener");
	int *c = calloc((size_t)n, sizeof(*c));
	for (int i = 0; i < n; i++) {
		c[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(c[i], (struct sockaddr *)&a, al))
			die("connect");
	}
	fflush(stdout);
	pid_t srv = fork();
	if (srv < 0)
		die("fork");
	if (srv == 0) {
		for (int i = 0; i < n; i++)
			close(c[i]);
		serve(lst, n);
	}
	close(lst);
	int ep = epoll_create1(0);
	for (int i = 0; i < n; i++) {
		fcntl(c[i], F_SETFL, O_NONBLOCK);
		struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, c[i], &e))
			die("epoll_ctl");
	}
	int *got = calloc((size_t)n, sizeof(*got));
	long bad = 0;
	for (int round = 0; round < rounds; round++) {
		uint8_t b[MSG];
		for (int i = 0; i < n; i++) {
			msg(b, i, round);
			if (write(c[i], b, MSG) != MSG)
				die("write");
			got[i] = 0;
		}
		int done = 0;
		while (done < n) {
			struct epoll_event ev[256];
			int k = epoll_wait(ep, ev, 256, 10000);
			if (k <= 0) {
				printf("client stalled in round %d: %d of %d echoes\n", round, done, n);
				return 1;
			}
			for (int j = 0; j < k; j++) {
				int i = (int)ev[j].data.u32;
				uint8_t r[MSG], want[MSG];
				ssize_t m = read(c[i], r, (size_t)(MSG - got[i]));
				if (m <= 0)
					continue;
				msg(want, i, round);
				bad += memcmp(r, want + got[i], (size_t)m) != 0;
				got[i] += (int)m;
				done += got[i] == MSG;
			}
		}
	}
	printf("%d rounds over %d connections: %s\n", rounds, n, bad ? "CORRUPT" : "intact");
	show_wake("client");
	for (int i = 0; i < n; i++)
		close(c[i]);
	int st;
	waitpid(srv, &st, 0);
	printf("server exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	return 0;
}
