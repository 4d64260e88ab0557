/* epoll, poll and select with many idle connections registered: one
 * process, server and clients on loopback.  IDLE idle connections (each has
 * carried one byte each way, so under fastivc both ends are on the ring) sit
 * in one epoll set, LT on the server ends and EPOLLET|EPOLLRDHUP on the
 * client ends, with a pipe and the listener (plain fds).  A few busy
 * connections then exercise level, EPOLLET, EPOLLONESHOT, EPOLLRDHUP,
 * EPOLLOUT, an echo of BYTES bytes (every byte checked), poll() and
 * select() with the idle ones present; at the end every idle server end is
 * closed and each client end must be reported exactly once (ET).
 * tests/test_epoll_scale.py runs it plain and under fastivc and compares the
 * outputs; under fastivc it also prints the library's epoll counters
 * (fastivc_epoll_stats, found with dlsym) on lines starting "stats", which
 * the test reads instead of comparing.
 *
 *   epoll_scale IDLE BYTES    (prints "ready" and waits for a line on stdin
 *                              once every connection is up) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#define IDLE_S 1000000u /* data words: idle server ends IDLE_S+i, clients IDLE_C+i */
#define IDLE_C 2000000u
#define NBUSY 7

static int ep, lst;
static struct sockaddr_in la;
static void (*stats)(uint64_t out[6]);
static void (*stats_reset)(void);
static void (*wake_stats)(uint64_t out[3]);

static void die(const char *what)
{
	printf("setup failed: %s: %s\n", what, strerrorname_np(errno));
	exit(2);
}

static void nonblock(int fd)
{
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
		die("fcntl");
}

/* A connected pair that has carried one byte each way (so both ends have
 * switched to the ring under fastivc), both ends non-blocking. */
static void pair(int *c, int *s)
{
	char b;
	*c = socket(AF_INET, SOCK_STREAM, 0);
	if (*c < 0 || connect(*c, (struct sockaddr *)&la, sizeof(la)) < 0)
		die("connect");
	*s = accept(lst, NULL, NULL);
	if (*s < 0)
		die("accept");
	if (write(*c, "c", 1) != 1 || read(*s, &b, 1) != 1 || write(*s, "s", 1) != 1 ||
	    read(*c, &b, 1) != 1)
		die("first bytes");
	nonblock(*c);
	nonblock(*s);
}

static void ctl(int op, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event e = {.events = events, .data.u64 = data};
	if (epoll_ctl(ep, op, fd, &e) < 0)
		printf("epoll_ctl op %d data %llu: %s\n", op, (unsigned long long)data,
		       strerrorname_np(errno));
}

static const char *bits(uint32_t ev)
{
	static char s[64];
	snprintf(s, sizeof(s), "%s%s%s%s%s", ev & EPOLLIN ? "IN" : "", ev & EPOLLOUT ? " OUT" : "",
		 ev & EPOLLRDHUP ? " RDHUP" : "", ev & EPOLLHUP ? " HUP" : "",
		 ev & EPOLLERR ? " ERR" : "");
	return s;
}

static int cmp_ev(const void *a, const void *b)
{
	uint64_t x = ((const struct epoll_event *)a)->data.u64;
	uint64_t y = ((const struct epoll_event *)b)->data.u64;
	return x < y ? -1 : x > y;
}

static void wait_show(const char *what, int timeout)
{
	struct epoll_event ev[16];
	int n = epoll_wait(ep, ev, 16, timeout);
	printf("%-34s n=%d", what, n);
	if (n > 0)
		qsort(ev, (size_t)n, sizeof(ev[0]), cmp_ev);
	for (int i = 0; i < n; i++)
		printf(" [%llu:%s]", (unsigned long long)ev[i].data.u64, bits(ev[i].events));
	printf("\n");
	fflush(stdout);
}

static void show_stats(const char *phase)
{
	if (!stats)
		return;
	uint64_t v[6];
	stats(v);
	printf("stats %s calls=%llu passes=%llu examined=%llu max_pass=%llu entry_polls=%llu "
	       "kernel_events=%llu\n", phase, (unsigned long long)v[0], (unsigned long long)v[1],
	       (unsigned long long)v[2], (unsigned long long)v[3], (unsigned long long)v[4],
	       (unsigned long long)v[5]);
	if (wake_stats) {
		uint64_t w[3];
		wake_stats(w);
		printf("stats wake-%s queued=%llu coalesced=%llu records=%llu\n", phase,
		       (unsigned long long)w[0], (unsigned long long)w[1], (unsigned long long)w[2]);
	}
	fflush(stdout);
}

static uint8_t pattern(uint64_t i) { return (uint8_t)((i * 2654435761u) >> 13); }

/* BYTES from c to s and echoed back, driven by the big epoll set; every
 * byte checked.  No idle entry may be reported meanwhile. */
static void echo(int c, int s, size_t total)
{
	static uint8_t buf[65536], sbuf[65536];
	size_t cs = 0, cr = 0, sl = 0;
	int shut_c = 0, shut_s = 0, s_out = 0, eof_s = 0, bad = 0, stray = 0;
	ctl(EPOLL_CTL_ADD, c, EPOLLIN | EPOLLOUT, 11);
	ctl(EPOLL_CTL_ADD, s, EPOLLIN, 12);
	while (cr < total || !shut_s) {
		struct epoll_event ev[64];
		int n = epoll_wait(ep, ev, 64, 5000);
		if (n <= 0) {
			printf("echo stalled at %zu/%zu sent, %zu back\n", cs, total, cr);
			return;
		}
		for (int i = 0; i < n; i++) {
			uint64_t d = ev[i].data.u64;
			if (d == 11 && (ev[i].events & EPOLLOUT) && cs < total) {
				size_t want = total - cs > sizeof(buf) ? sizeof(buf) : total - cs;
				for (size_t k = 0; k < want; k++)
					buf[k] = pattern(cs + k);
				ssize_t w = write(c, buf, want);
				if (w > 0)
					cs += (size_t)w;
				if (cs == total && !shut_c) {
					shutdown(c, SHUT_WR);
					shut_c = 1;
					ctl(EPOLL_CTL_MOD, c, EPOLLIN, 11);
				}
			}
			if (d == 11 && (ev[i].events & EPOLLIN)) {
				ssize_t r;
				while ((r = read(c, buf, sizeof(buf))) > 0) {
					for (ssize_t k = 0; k < r; k++)
						bad += buf[k] != pattern(cr + (size_t)k);
					cr += (size_t)r;
				}
			}
			if (d == 12) {
				if ((ev[i].events & EPOLLIN) && !eof_s && sl < sizeof(sbuf)) {
					ssize_t r = read(s, sbuf + sl, sizeof(sbuf) - sl);
					if (r > 0)
						sl += (size_t)r;
					else if (r == 0)
						eof_s = 1;
				}
				if (sl) {
					ssize_t w = write(s, sbuf, sl);
					if (w > 0) {
						memmove(sbuf, sbuf + w, sl - (size_t)w);
						sl -= (size_t)w;
					}
				}
				if (eof_s && !sl && !shut_s) {
					shutdown(s, SHUT_WR);
					shut_s = 1;
				}
				int want_out = sl != 0;
				uint32_t e = (eof_s ? 0 : EPOLLIN) | (want_out ? EPOLLOUT : 0);
				if (want_out != s_out || eof_s) {
					ctl(EPOLL_CTL_MOD, s, e, 12);
					s_out = want_out;
				}
			}
			if (d >= IDLE_S)
				stray++;
		}
	}
	ctl(EPOLL_CTL_DEL, c, 0, 11);
	ctl(EPOLL_CTL_DEL, s, 0, 12);
	printf("echo %zu bytes: %s, idle entries reported: %d\n", total,
	       bad ? "CORRUPT" : "intact", stray);
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	int idle = atoi(argv[1]);
	size_t bytes = (size_t)atol(argv[2]);
	/* both ends of every connection are ours: 2 fds each, and some spare */
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rlim_t need = (rlim_t)idle * 2 + 128;
	if (rl.rlim_cur < need) {
		rl.rlim_cur = need;
		if (rl.rlim_max < need)
			rl.rlim_max = need; /* (needs CAP_SYS_RESOURCE) */
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			die("setrlimit");
	}
	stats = (void (*)(uint64_t *))dlsym(RTLD_DEFAULT, "fastivc_epoll_stats");
	stats_reset = (void (*)(void))dlsym(RTLD_DEFAULT, "fastivc_epoll_stats_reset");
	wake_stats = (void (*)(uint64_t *))dlsym(RTLD_DEFAULT, "fastivc_wake_stats");
	printf("library counters %s\n", stats ? "present" : "absent");

	la.sin_family = AF_INET;
	la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t al = sizeof(la);
	lst = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(lst, (struct sockaddr *)&la, al) || listen(lst, 128) ||
	    getsockname(lst, (struct sockaddr *)&la, &al))
		die("listener");

	/* busy pairs first: low fd numbers, so select() can see them */
	int bc[NBUSY], bs[NBUSY];
	for (int i = 0; i < NBUSY; i++)
		pair(&bc[i], &bs[i]);
	int *ic = malloc(sizeof(int) * (size_t)idle), *is = malloc(sizeof(int) * (size_t)idle);
	if (!ic || !is)
		die("malloc");
	for (int i = 0; i < idle; i++)
		pair(&ic[i], &is[i]);
	nonblock(lst);
	int pfd[2];
	if (pipe2(pfd, O_NONBLOCK) < 0)
		die("pipe");

	ep = epoll_create1(EPOLL_CLOEXEC);
	for (int i = 0; i < idle; i++) {
		ctl(EPOLL_CTL_ADD, is[i], EPOLLIN, IDLE_S + (unsigned)i);
		ctl(EPOLL_CTL_ADD, ic[i], EPOLLIN | EPOLLET | EPOLLRDHUP, IDLE_C + (unsigned)i);
	}
	ctl(EPOLL_CTL_ADD, pfd[0], EPOLLIN, 7);
	ctl(EPOLL_CTL_ADD, lst, EPOLLIN, 8);
	printf("%d idle connections registered\n", idle);
	printf("ready\n");
	fflush(stdout);
	char line[16];
	if (!fgets(line, sizeof(line), stdin))
		return 2;

	wait_show("idle: nothing to report", 0);
	wait_show("idle: nothing within 50 ms", 50);
	if (stats_reset)
		stats_reset(); /* the first wait looked at every new entry, as the kernel does */

	char b[256];
	ssize_t r;
	/* level-triggered */
	ctl(EPOLL_CTL_ADD, bs[0], EPOLLIN, 1);
	printf("write %zd\n", write(bc[0], "hello", 5));
	wait_show("LT: data", 1000);
	wait_show("LT: still data (not read)", 1000);
	printf("read %zd\n", read(bs[0], b, sizeof(b)));
	wait_show("LT: drained", 50);
	/* edge-triggered */
	ctl(EPOLL_CTL_ADD, bs[1], EPOLLIN | EPOLLET, 2);
	printf("write %zd\n", write(bc[1], "abc", 3));
	wait_show("ET: new data", 1000);
	wait_show("ET: no new edge", 50);
	printf("write %zd\n", write(bc[1], "def", 3));
	wait_show("ET: more data", 1000);
	printf("read %zd\n", read(bs[1], b, sizeof(b)));
	/* one-shot */
	ctl(EPOLL_CTL_ADD, bs[2], EPOLLIN | EPOLLONESHOT, 3);
	printf("write %zd\n", write(bc[2], "x", 1));
	wait_show("ONESHOT: data", 1000);
	printf("write %zd\n", write(bc[2], "y", 1));
	wait_show("ONESHOT: disabled", 50);
	ctl(EPOLL_CTL_MOD, bs[2], EPOLLIN | EPOLLONESHOT, 4);
	wait_show("ONESHOT: re-armed", 1000);
	printf("read %zd\n", read(bs[2], b, sizeof(b)));
	/* the peer shuts down writing with data still queued */
	ctl(EPOLL_CTL_ADD, bs[3], EPOLLIN | EPOLLRDHUP, 5);
	printf("write %zd\n", write(bc[3], "xyz", 3));
	shutdown(bc[3], SHUT_WR);
	wait_show("RDHUP with data queued", 1000);
	printf("read %zd\n", read(bs[3], b, sizeof(b)));
	printf("read at EOF %zd\n", read(bs[3], b, sizeof(b)));
	ctl(EPOLL_CTL_DEL, bs[3], 0, 5);
	/* writable, full, writable again */
	ctl(EPOLL_CTL_ADD, bc[4], EPOLLOUT, 6);
	wait_show("OUT: writable", 1000);
	size_t put = 0, got = 0;
	memset(b, 'w', sizeof(b));
	while ((r = write(bc[4], b, sizeof(b))) > 0)
		put += (size_t)r;
	printf("write until %s\n", strerrorname_np(errno));
	wait_show("OUT: full", 50);
	struct pollfd rp = {.fd = bs[4], .events = POLLIN};
	while (got < put && poll(&rp, 1, 1000) > 0)
		while ((r = read(bs[4], b, sizeof(b))) > 0)
			got += (size_t)r;
	printf("drained %s\n", got == put ? "all" : "NOT all");
	wait_show("OUT: writable again", 1000);
	ctl(EPOLL_CTL_DEL, bc[4], 0, 6);
	/* plain fds in the same set */
	printf("pipe write %zd\n", write(pfd[1], "p", 1));
	wait_show("pipe readable", 1000);
	printf("pipe read %zd\n", read(pfd[0], b, sizeof(b)));
	int nc = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	connect(nc, (struct sockaddr *)&la, sizeof(la));
	wait_show("listener readable", 1000);
	int na = accept(lst, NULL, NULL);
	printf("accepted %s\n", na >= 0 ? "yes" : strerrorname_np(errno));
	close(na);
	close(nc);
	wait_show("nothing left to report", 50);
	/* bytes through the ring, the big set driving them */
	echo(bc[5], bs[5], bytes);
	show_stats("busy");

	/* A byte to each of the last idle pairs, whose client ends got wake
	 * tokens past the first wake record's 4,096 under fastivc: each must
	 * be reported once (ET), and their peers' ring moves must have set
	 * bits rather than rung doorbells (the test reads the counters). */
	int nfar = idle < 64 ? idle : 64, far_seen = 0, far_twice = 0;
	char far_hit[64] = {0};
	for (int i = idle - nfar; i < idle; i++)
		if (write(is[i], "f", 1) != 1)
			die("write far");
	for (int tries = 0; far_seen < nfar && tries < 100; tries++) {
		struct epoll_event ev[64];
		int n = epoll_wait(ep, ev, 64, 1000);
		for (int k = 0; k < n; k++) {
			uint64_t d = ev[k].data.u64;
			if (d < IDLE_C + (unsigned)(idle - nfar) || d >= IDLE_C + (unsigned)idle)
				continue;
			int j = (int)(d - IDLE_C) - (idle - nfar);
			if (far_hit[j]) {
				far_twice++;
				continue;
			}
			far_hit[j] = 1;
			far_seen++;
			if (read(ic[idle - nfar + j], b, sizeof(b)) != 1)
				die("read far");
		}
	}
	printf("far: %d of %d idle clients reported, %d twice\n", far_seen, nfar, far_twice);
	show_stats("far");

	/* poll() over every idle socket and one busy one */
	struct pollfd *p = calloc((size_t)idle * 2 + 1, sizeof(*p));
	for (int i = 0; i < idle; i++) {
		p[2 * i] = (struct pollfd){.fd = is[i], .events = POLLIN};
		p[2 * i + 1] = (struct pollfd){.fd = ic[i], .events = POLLIN};
	}
	p[2 * idle] = (struct pollfd){.fd = bs[6], .events = POLLIN};
	printf("poll: nothing %d\n", poll(p, (nfds_t)idle * 2 + 1, 0));
	printf("write %zd\n", write(bc[6], "poll", 4));
	int pr = poll(p, (nfds_t)idle * 2 + 1, 1000);
	printf("poll: %d ready, the busy one %s\n", pr,
	       p[2 * idle].revents & POLLIN ? "readable" : "not readable");
	printf("read %zd\n", read(bs[6], b, sizeof(b)));
	for (int i = 0; i < idle; i++)
		p[2 * i + 1].events = POLLOUT;
	pr = poll(p, (nfds_t)idle * 2 + 1, 1000);
	printf("poll: %d writable of %d idle clients\n", pr, idle);
	/* select() over the fds below FD_SETSIZE */
	fd_set rs;
	FD_ZERO(&rs);
	int hi = 0, inset = 0;
	for (int i = 0; i < idle; i++)
		if (is[i] < FD_SETSIZE && ic[i] < FD_SETSIZE) {
			FD_SET(is[i], &rs);
			FD_SET(ic[i], &rs);
			hi = is[i] > hi ? is[i] : hi;
			hi = ic[i] > hi ? ic[i] : hi;
			inset += 2;
		}
	FD_SET(bs[6], &rs);
	fd_set keep = rs;
	struct timeval tv = {0, 0};
	printf("select: nothing %d\n", select(hi + 1, &rs, NULL, NULL, &tv));
	printf("write %zd\n", write(bc[6], "sel", 3));
	rs = keep;
	tv = (struct timeval){1, 0};
	int sr = select(hi + 1, &rs, NULL, NULL, &tv);
	printf("select: %d ready (idle fds in the set: %s), the busy one %s\n", sr,
	       inset ? "yes" : "no", FD_ISSET(bs[6], &rs) ? "set" : "not set");
	printf("read %zd\n", read(bs[6], b, sizeof(b)));

	/* every idle server end closes: each client end is reported once (ET) */
	for (int i = 0; i < idle; i++)
		close(is[i]);
	struct epoll_event *ev = calloc(4096, sizeof(*ev));
	char *seen = calloc((size_t)idle, 1);
	int once = 0, twice = 0, other = 0, rdhup = 0;
	while (once < idle) {
		int n = epoll_wait(ep, ev, 4096, 2000);
		if (n <= 0)
			break;
		for (int i = 0; i < n; i++) {
			uint64_t d = ev[i].data.u64;
			if (d >= IDLE_C && d < IDLE_C + (unsigned)idle) {
				if (seen[d - IDLE_C]++)
					twice++;
				else
					once++;
				rdhup += (ev[i].events & (EPOLLIN | EPOLLRDHUP)) == (EPOLLIN | EPOLLRDHUP);
			} else {
				other++;
			}
		}
	}
	printf("peers closed: %d of %d clients reported, %d with IN|RDHUP, %d twice, %d others\n",
	       once, idle, rdhup, twice, other);
	wait_show("ET: no new edge after EOF", 100);
	int eofs = 0;
	for (int i = 0; i < idle; i++)
		eofs += read(ic[i], b, sizeof(b)) == 0;
	printf("clients at EOF: %d\n", eofs);
	show_stats("end");
	for (int i = 0; i < idle; i++)
		close(ic[i]);
	for (int i = 0; i < NBUSY; i++) {
		close(bc[i]);
		close(bs[i]);
	}
	close(ep);
	close(lst);
	return 0;
}
