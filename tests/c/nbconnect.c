/* The non-blocking surface on loopback TCP, single-threaded: the three ways
 * to make a socket non-blocking (SOCK_NONBLOCK, O_NONBLOCK, FIONBIO),
 * accept4(SOCK_NONBLOCK), non-blocking connect (EINPROGRESS, POLLOUT,
 * SO_ERROR; ECONNREFUSED to a closed port), EAGAIN on empty reads and on
 * full writes, EPOLLRDHUP/EPOLLHUP after shutdown and close, and an epoll
 * fd nested in another.  Each mode prints return values and errno names;
 * tests/test_families.py runs it plain and under fastivc (event loops on)
 * and compares the outputs.
 *
 *   nbconnect 4|6 MODE|list */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int v6;
static struct sockaddr_storage lss;
static socklen_t lsl;

static void SHOW(const char *what, long r)
{
	printf("%-36s %ld %s\n", what, r, r < 0 ? strerrorname_np(errno) : "");
	fflush(stdout);
}

static void die(const char *what)
{
	printf("setup failed: %s: %s\n", what, strerrorname_np(errno));
	exit(2);
}

static void loopback(struct sockaddr_storage *ss, socklen_t *sl)
{
	memset(ss, 0, sizeof(*ss));
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		*sl = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)ss;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		*sl = sizeof(*a);
	}
}

/* A listener on an ephemeral loopback port (address in lss/lsl). */
static int listener(int flags)
{
	loopback(&lss, &lsl);
	int l = socket(lss.ss_family, SOCK_STREAM | flags, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&lss, lsl) < 0 || listen(l, 4) < 0 ||
	    getsockname(l, (struct sockaddr *)&lss, &lsl) < 0)
		die("listener");
	return l;
}

static const char *revents(short r)
{
	static char b[64];
	snprintf(b, sizeof(b), "%s%s%s%s%s", r & POLLIN ? "IN " : "", r & POLLOUT ? "OUT " : "",
		 r & POLLRDHUP ? "RDHUP " : "", r & POLLHUP ? "HUP " : "", r & POLLERR ? "ERR " : "");
	return b;
}

static void poll_show(const char *what, int fd, short events, int timeout)
{
	struct pollfd p = {.fd = fd, .events = events};
	int r = poll(&p, 1, timeout);
	printf("%-36s %d %s%s\n", what, r, r < 0 ? strerrorname_np(errno) : "",
	       r > 0 ? revents(p.revents) : "");
	fflush(stdout);
}

static void epoll_show(const char *what, int ep, int timeout)
{
	struct epoll_event ev[4];
	int n = epoll_wait(ep, ev, 4, timeout);
	printf("%-36s n=%d", what, n);
	for (int i = 0; i < n; i++)
		printf(" [%llu:%s]", (unsigned long long)ev[i].data.u64,
		       revents((short)(ev[i].events & 0xffff)));
	printf("\n");
	fflush(stdout);
}

static void ctl(int ep, int op, int fd, uint32_t events, uint64_t tag)
{
	struct epoll_event e = {.events = events, .data.u64 = tag};
	if (epoll_ctl(ep, op, fd, &e) < 0)
		printf("epoll_ctl op %d tag %llu: %s\n", op, (unsigned long long)tag,
		       strerrorname_np(errno));
}

static void show_nonblock(const char *what, int fd)
{
	int fl = fcntl(fd, F_GETFL);
	SHOW(what, fl < 0 ? -1 : !!(fl & O_NONBLOCK));
}

static void show_so_error(const char *what, int fd)
{
	int err = -1;
	socklen_t el = sizeof(err);
	int r = getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
	printf("%-36s %d %s\n", what, r, r < 0 ? strerrorname_np(errno)
					      : err ? strerrorname_np(err) : "0");
	fflush(stdout);
}

/* A non-blocking connect to our listener, completed: EINPROGRESS, POLLOUT,
 * SO_ERROR 0; then accept4 with `aflags`. */
static void nb_pair(int l, int aflags, int *c, int *s)
{
	*c = socket(lss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int r = connect(*c, (struct sockaddr *)&lss, lsl);
	SHOW("non-blocking connect", r);
	poll_show("poll connecting socket for OUT", *c, POLLOUT, 2000);
	show_so_error("SO_ERROR after connect", *c);
	poll_show("poll listener for IN", l, POLLIN, 2000);
	*s = accept4(l, NULL, NULL, aflags);
	SHOW("accept4", *s < 0 ? -1 : 0);
}

/* Read until EAGAIN (after waiting up to 1 s for the first byte). */
static ssize_t drain(int fd, char *buf, size_t n)
{
	poll_show("poll for IN", fd, POLLIN, 1000);
	ssize_t got = 0, r;
	while ((r = read(fd, buf + got, n - (size_t)got)) > 0)
		got += r;
	return got;
}

static void hop(const char *what, int from, int to, const char *msg)
{
	char buf[128] = {0};
	ssize_t w = write(from, msg, strlen(msg));
	ssize_t r = drain(to, buf, sizeof(buf));
	printf("%-36s write %zd read %zd [%.*s]\n", what, w, r, r > 0 ? (int)r : 0, buf);
	fflush(stdout);
}

/* ---- modes ---- */

static int mode_flags(void)
{
	int l = listener(0), c, s;
	nb_pair(l, SOCK_NONBLOCK, &c, &s);
	show_nonblock("SOCK_NONBLOCK socket", c);
	show_nonblock("accept4 SOCK_NONBLOCK", s);
	char b[16];
	SHOW("read empty (nonblocking)", read(s, b, sizeof(b)));
	hop("data c->s", c, s, "hello");
	int fl = fcntl(s, F_GETFL);
	SHOW("fcntl clear O_NONBLOCK", fcntl(s, F_SETFL, fl & ~O_NONBLOCK));
	show_nonblock("now", s);
	SHOW("recv MSG_DONTWAIT on blocking", recv(s, b, sizeof(b), MSG_DONTWAIT));
	SHOW("fcntl set O_NONBLOCK", fcntl(s, F_SETFL, fl | O_NONBLOCK));
	show_nonblock("now", s);
	SHOW("read empty", read(s, b, sizeof(b)));
	int off = 0, on = 1;
	SHOW("FIONBIO off", ioctl(s, FIONBIO, &off));
	show_nonblock("now", s);
	SHOW("FIONBIO on", ioctl(s, FIONBIO, &on));
	show_nonblock("now", s);
	SHOW("recv empty", recv(s, b, sizeof(b), 0));
	hop("data s->c", s, c, "world");
	/* a blocking accepted socket made non-blocking afterwards */
	int c2, s2;
	nb_pair(l, 0, &c2, &s2);
	show_nonblock("accept4 without flags", s2);
	SHOW("FIONBIO on", ioctl(s2, FIONBIO, &on));
	SHOW("read empty", read(s2, b, sizeof(b)));
	hop("conn2 c->s", c2, s2, "second");
	hop("conn2 s->c", s2, c2, "reply");
	/* the listener itself */
	SHOW("fcntl listener O_NONBLOCK", fcntl(l, F_SETFL, O_NONBLOCK));
	SHOW("accept4 with none pending", accept4(l, NULL, NULL, SOCK_NONBLOCK));
	close(c), close(s), close(c2), close(s2), close(l);
	return 0;
}

static int mode_connect(void)
{
	int l = listener(SOCK_NONBLOCK), c, s;
	nb_pair(l, SOCK_NONBLOCK, &c, &s);
	SHOW("connect again", connect(c, (struct sockaddr *)&lss, lsl));
	struct sockaddr_storage a;
	socklen_t al = sizeof(a);
	SHOW("getpeername", getpeername(c, (struct sockaddr *)&a, &al));
	hop("c->s", c, s, "through");
	hop("s->c", s, c, "and back");
	/* a second connection made non-blocking by fcntl before connect */
	int c2 = socket(lss.ss_family, SOCK_STREAM, 0);
	SHOW("fcntl O_NONBLOCK before connect", fcntl(c2, F_SETFL, O_NONBLOCK));
	SHOW("non-blocking connect", connect(c2, (struct sockaddr *)&lss, lsl));
	poll_show("poll for OUT", c2, POLLOUT, 2000);
	show_so_error("SO_ERROR", c2);
	poll_show("listener IN", l, POLLIN, 2000);
	int s2 = accept4(l, NULL, NULL, SOCK_NONBLOCK);
	SHOW("accept4", s2 < 0 ? -1 : 0);
	hop("conn2 c->s", c2, s2, "fcntl made");
	hop("conn2 s->c", s2, c2, "it so");
	/* and a third by FIONBIO */
	int c3 = socket(lss.ss_family, SOCK_STREAM, 0), on = 1;
	SHOW("FIONBIO before connect", ioctl(c3, FIONBIO, &on));
	SHOW("non-blocking connect", connect(c3, (struct sockaddr *)&lss, lsl));
	poll_show("poll for OUT", c3, POLLOUT, 2000);
	show_so_error("SO_ERROR", c3);
	poll_show("listener IN", l, POLLIN, 2000);
	int s3 = accept4(l, NULL, NULL, SOCK_NONBLOCK);
	hop("conn3 c->s", c3, s3, "ioctl");
	hop("conn3 s->c", s3, c3, "too");
	close(c), close(s), close(c2), close(s2), close(c3), close(s3), close(l);
	return 0;
}

static int mode_refused(void)
{
	/* a port nobody listens on: bound, never listening, then closed */
	int l = listener(0);
	close(l);
	int c = socket(lss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int r = connect(c, (struct sockaddr *)&lss, lsl);
	SHOW("non-blocking connect, closed port", r);
	poll_show("poll for OUT", c, POLLOUT, 2000);
	show_so_error("SO_ERROR", c);
	show_so_error("SO_ERROR again (cleared)", c);
	char b[4];
	SHOW("read", read(c, b, sizeof(b)));
	SHOW("write", send(c, "x", 1, MSG_NOSIGNAL));
	close(c);
	/* a working connection afterwards from a fresh socket */
	int l2 = listener(0), c2, s2;
	nb_pair(l2, SOCK_NONBLOCK, &c2, &s2);
	hop("after refusal, new conn", c2, s2, "fine");
	close(c2), close(s2), close(l2);
	return 0;
}

static int mode_fill(void)
{
	int l = listener(0), c, s;
	nb_pair(l, SOCK_NONBLOCK, &c, &s);
	static char buf[65536];
	memset(buf, 'f', sizeof(buf));
	long long written = 0, rounds = 0;
	ssize_t r;
	int err = 0;
	for (;;) {
		r = write(c, buf, sizeof(buf));
		if (r < 0) {
			err = errno;
			break;
		}
		written += r;
		rounds++;
	}
	printf("%-36s %s\n", "write until full", strerrorname_np(err));
	/* drain, letting the writer top up until it is all across */
	long long got = 0;
	static char in[65536];
	for (int idle = 0; idle < 3;) {
		struct pollfd p = {.fd = s, .events = POLLIN};
		if (poll(&p, 1, 200) <= 0) {
			idle++;
			continue;
		}
		while ((r = read(s, in, sizeof(in))) > 0)
			got += r;
	}
	printf("%-36s %d\n", "drained all that was written", got == written);
	poll_show("writer writable again", c, POLLOUT, 1000);
	/* the writer refills and then a second round drains again */
	long long w2 = 0;
	while ((r = write(c, buf, sizeof(buf))) > 0)
		w2 += r;
	printf("%-36s %s\n", "refill until full", strerrorname_np(errno));
	long long g2 = 0;
	for (int idle = 0; idle < 3;) {
		struct pollfd p = {.fd = s, .events = POLLIN};
		if (poll(&p, 1, 200) <= 0) {
			idle++;
			continue;
		}
		while ((r = read(s, in, sizeof(in))) > 0)
			g2 += r;
	}
	printf("%-36s %d\n", "drained the refill", g2 == w2);
	SHOW("read empty", read(s, in, sizeof(in)));
	close(c), close(s), close(l);
	return 0;
}

static int mode_rdhup(void)
{
	int l = listener(0), c, s;
	nb_pair(l, SOCK_NONBLOCK, &c, &s);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLRDHUP, 1);
	epoll_show("nothing yet", ep, 0);
	SHOW("write then shutdown(c, WR)", write(c, "last", 4));
	SHOW("shutdown", shutdown(c, SHUT_WR));
	epoll_show("s after peer shutdown WR", ep, 1000);
	poll_show("poll s IN|RDHUP", s, POLLIN | POLLRDHUP, 1000);
	char b[16];
	SHOW("read data", read(s, b, sizeof(b)));
	SHOW("read EOF", read(s, b, sizeof(b)));
	epoll_show("s at EOF", ep, 0);
	hop("s->c still open", s, c, "half open");
	SHOW("shutdown(s, WR)", shutdown(s, SHUT_WR));
	epoll_show("s after both shut", ep, 1000);
	int ep2 = epoll_create1(EPOLL_CLOEXEC);
	ctl(ep2, EPOLL_CTL_ADD, c, EPOLLIN | EPOLLRDHUP, 2);
	epoll_show("c after both shut", ep2, 1000);
	close(ep), close(ep2), close(c), close(s), close(l);
	return 0;
}

/* The peer closes: EOF with RDHUP; then a write to it, as on TCP, is taken
 * and answered by a reset (HUP, ERR), and the next write fails. */
static int mode_peer_close(void)
{
	int l = listener(0), c, s;
	char b[16];
	nb_pair(l, SOCK_NONBLOCK, &c, &s);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLRDHUP, 3);
	SHOW("close c", close(c));
	epoll_show("s after peer close", ep, 1000);
	SHOW("read EOF", read(s, b, sizeof(b)));
	SHOW("write to closed peer", send(s, "x", 1, MSG_NOSIGNAL));
	usleep(50000);
	epoll_show("s after write to closed peer", ep, 1000);
	SHOW("write again", send(s, "x", 1, MSG_NOSIGNAL));
	SHOW("read", read(s, b, sizeof(b)));
	close(ep), close(s), close(l);
	return 0;
}

static int mode_nested(void)
{
	int l = listener(0), c, s;
	nb_pair(l, SOCK_NONBLOCK, &c, &s);
	int inner = epoll_create1(EPOLL_CLOEXEC), outer = epoll_create1(EPOLL_CLOEXEC);
	ctl(inner, EPOLL_CTL_ADD, s, EPOLLIN, 1);
	ctl(outer, EPOLL_CTL_ADD, inner, EPOLLIN, 100);
	epoll_show("outer: nothing yet", outer, 0);
	poll_show("poll inner: nothing yet", inner, POLLIN, 0);
	SHOW("write c", write(c, "nested", 6));
	epoll_show("outer: inner readable", outer, 1000);
	poll_show("poll inner", inner, POLLIN, 1000);
	epoll_show("inner: socket readable", inner, 0);
	char b[16];
	SHOW("read s", read(s, b, sizeof(b)));
	epoll_show("outer: drained", outer, 50);
	/* edge-triggered on the outer level */
	ctl(outer, EPOLL_CTL_MOD, inner, EPOLLIN | EPOLLET, 101);
	SHOW("write c", write(c, "edge", 4));
	epoll_show("outer ET: new data", outer, 1000);
	epoll_show("outer ET: no new edge", outer, 50);
	SHOW("write c", write(c, "more", 4));
	epoll_show("outer ET: more data", outer, 1000);
	SHOW("read s", read(s, b, sizeof(b)));
	epoll_show("inner: drained", inner, 0);
	/* the peer shuts down: the inner set reports it, so does the outer */
	ctl(inner, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLRDHUP, 2);
	ctl(outer, EPOLL_CTL_MOD, inner, EPOLLIN, 102);
	SHOW("shutdown c WR", shutdown(c, SHUT_WR));
	epoll_show("outer: peer shut down", outer, 1000);
	epoll_show("inner: peer shut down", inner, 0);
	close(outer), close(inner), close(c), close(s), close(l);
	return 0;
}

/* What the library remembers of a socket's flags and binding instead of
 * asking the kernel at each connect and accept must follow every way they
 * change: O_NONBLOCK set through a dup (one open file, two fds), SOCK_NONBLOCK
 * cleared by fcntl, a client bound before connect, a listener made
 * non-blocking through a dup. */
static int mode_shared_file(void)
{
	int l = listener(0), on = 1;
	char b[16];
	struct sockaddr_storage a;
	socklen_t al;
	int c = socket(lss.ss_family, SOCK_STREAM, 0), d = dup(c);
	SHOW("fcntl O_NONBLOCK on a dup", fcntl(d, F_SETFL, O_NONBLOCK));
	close(d);
	SHOW("connect, non-blocking through the dup", connect(c, (struct sockaddr *)&lss, lsl));
	poll_show("poll for OUT", c, POLLOUT, 2000);
	show_so_error("SO_ERROR", c);
	int s = accept4(l, NULL, NULL, SOCK_NONBLOCK);
	SHOW("accept4", s < 0 ? -1 : 0);
	SHOW("read empty", read(c, b, sizeof(b)));
	hop("c->s", c, s, "dup made");
	hop("s->c", s, c, "it so");
	int c2 = socket(lss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
	SHOW("fcntl clear SOCK_NONBLOCK", fcntl(c2, F_SETFL, 0));
	SHOW("blocking connect", connect(c2, (struct sockaddr *)&lss, lsl));
	int s2 = accept4(l, NULL, NULL, SOCK_NONBLOCK);
	SHOW("recv MSG_DONTWAIT on blocking", recv(c2, b, sizeof(b), MSG_DONTWAIT));
	hop("conn2 c->s", c2, s2, "blocking");
	SHOW("FIONBIO on", ioctl(c2, FIONBIO, &on));
	hop("conn2 s->c", s2, c2, "again");
	int c3 = socket(lss.ss_family, SOCK_STREAM, 0);
	loopback(&a, &al);
	SHOW("bind before connect", bind(c3, (struct sockaddr *)&a, al));
	struct sockaddr_storage b1, b2;
	socklen_t l1 = sizeof(b1), l2 = sizeof(b2);
	getsockname(c3, (struct sockaddr *)&b1, &l1);
	SHOW("blocking connect", connect(c3, (struct sockaddr *)&lss, lsl));
	getsockname(c3, (struct sockaddr *)&b2, &l2);
	SHOW("source port kept", l1 == l2 && !memcmp(&b1, &b2, l1));
	int s3 = accept4(l, NULL, NULL, SOCK_NONBLOCK);
	SHOW("fcntl O_NONBLOCK", fcntl(c3, F_SETFL, O_NONBLOCK));
	hop("conn3 c->s", c3, s3, "bound");
	hop("conn3 s->c", s3, c3, "first");
	d = dup(l);
	SHOW("fcntl listener O_NONBLOCK on a dup", fcntl(d, F_SETFL, O_NONBLOCK));
	close(d);
	SHOW("accept with none pending", accept(l, NULL, NULL));
	close(c), close(s), close(c2), close(s2), close(c3), close(s3), close(l);
	return 0;
}

static const struct {
	const char *name;
	int (*fn)(void);
} MODES[] = {
	{"flags", mode_flags},   {"connect", mode_connect}, {"refused", mode_refused},
	{"fill", mode_fill},     {"rdhup", mode_rdhup},     {"peer-close", mode_peer_close},
	{"nested", mode_nested}, {"shared-file", mode_shared_file},
};

int main(int argc, char **argv)
{
	if (argc < 3)
		goto usage;
	v6 = argv[1][0] == '6';
	signal(SIGPIPE, SIG_IGN);
	if (!strcmp(argv[2], "list")) {
		for (size_t i = 0; i < sizeof(MODES) / sizeof(MODES[0]); i++)
			printf("%s\n", MODES[i].name);
		return 0;
	}
	for (size_t i = 0; i < sizeof(MODES) / sizeof(MODES[0]); i++)
		if (!strcmp(argv[2], MODES[i].name))
			return MODES[i].fn();
usage:
	fprintf(stderr, "usage: nbconnect 4|6 MODE|list\n");
	return 2;
}
