/* epoll semantics on one connection, single-threaded, non-blocking sockets:
 * non-blocking connect, level-triggered, EPOLLET, EPOLLONESHOT, EPOLLRDHUP,
 * DEL.  tests/test_eventloops.py runs it plain and under fastivc (event
 * loops on) and compares the outputs line by line. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static int ep;

static void wait_show(const char *what, int timeout)
{
	struct epoll_event ev[4];
	int n = epoll_wait(ep, ev, 4, timeout);
	printf("%-34s n=%d", what, n);
	for (int i = 0; i < n; i++)
		printf(" [%llu:%s%s%s%s%s]", (unsigned long long)ev[i].data.u64,
		       ev[i].events & EPOLLIN ? "IN" : "", ev[i].events & EPOLLOUT ? " OUT" : "",
		       ev[i].events & EPOLLRDHUP ? " RDHUP" : "", ev[i].events & EPOLLHUP ? " HUP" : "",
		       ev[i].events & EPOLLERR ? " ERR" : "");
	printf("\n");
	fflush(stdout);
}

static void ctl(int op, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event e = {.events = events, .data.u64 = data};
	int r = epoll_ctl(ep, op, fd, &e);
	if (r < 0)
		printf("epoll_ctl op %d fd-tag %llu: %s\n", op, (unsigned long long)data,
		       strerrorname_np(errno));
}

int main(void)
{
	char buf[64];
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (bind(l, (struct sockaddr *)&a, al) || listen(l, 4) || getsockname(l, (struct sockaddr *)&a, &al))
		return 2;
	ep = epoll_create1(EPOLL_CLOEXEC);
	int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int r = connect(c, (struct sockaddr *)&a, al);
	printf("connect %s\n", r == 0 ? "0" : strerrorname_np(errno));
	ctl(EPOLL_CTL_ADD, c, EPOLLOUT, 1);
	wait_show("connected (client OUT)", 1000);
	int err = -1;
	socklen_t el = sizeof(err);
	getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el);
	printf("SO_ERROR %d\n", err);
	ctl(EPOLL_CTL_DEL, c, 0, 1);
	ctl(EPOLL_CTL_ADD, l, EPOLLIN, 9);
	wait_show("listener IN", 1000);
	int s = accept4(l, NULL, NULL, SOCK_NONBLOCK);
	ctl(EPOLL_CTL_DEL, l, 0, 9);

	ctl(EPOLL_CTL_ADD, s, EPOLLIN, 2);
	wait_show("LT: nothing yet", 0);
	printf("write %zd\n", write(c, "abc", 3));
	wait_show("LT: data", 1000);
	wait_show("LT: still data (not read)", 1000);
	printf("read %zd\n", read(s, buf, sizeof(buf)));
	wait_show("LT: drained", 50);
	ssize_t rr = read(s, buf, sizeof(buf));
	printf("read empty %zd %s\n", rr, rr < 0 ? strerrorname_np(errno) : "");

	ctl(EPOLL_CTL_MOD, s, EPOLLIN | EPOLLET, 3);
	printf("write %zd\n", write(c, "12345", 5));
	wait_show("ET: new data", 1000);
	wait_show("ET: no new edge", 50);
	printf("write %zd\n", write(c, "67890", 5));
	wait_show("ET: more data", 1000);
	printf("read %zd\n", read(s, buf, sizeof(buf)));

	ctl(EPOLL_CTL_MOD, s, EPOLLIN | EPOLLONESHOT, 4);
	printf("write %zd\n", write(c, "x", 1));
	wait_show("ONESHOT: data", 1000);
	printf("write %zd\n", write(c, "y", 1));
	wait_show("ONESHOT: disabled", 50);
	ctl(EPOLL_CTL_MOD, s, EPOLLIN | EPOLLONESHOT, 5);
	wait_show("ONESHOT: re-armed", 1000);
	printf("read %zd\n", read(s, buf, sizeof(buf)));

	/* DEL and ADD again around every request, as ae (redis-benchmark, wrk)
	 * does: under fastivc the kernel registration of a socket on the ring
	 * stays (a ghost), which the program must never notice. */
	ctl(EPOLL_CTL_DEL, s, 0, 5);
	printf("write %zd\n", write(c, "gh", 2));
	wait_show("DEL: data, not watched", 50);
	ctl(EPOLL_CTL_MOD, s, EPOLLIN, 10);
	ctl(EPOLL_CTL_DEL, s, 0, 10);
	ctl(EPOLL_CTL_ADD, s, EPOLLIN, 11);
	wait_show("ADD again: pending data", 1000);
	ctl(EPOLL_CTL_ADD, s, EPOLLIN, 12);
	printf("read %zd\n", read(s, buf, sizeof(buf)));
	wait_show("ADD again: drained", 50);
	for (int i = 0; i < 3; i++) {
		ctl(EPOLL_CTL_DEL, s, 0, 11);
		ctl(EPOLL_CTL_ADD, s, EPOLLIN | EPOLLET, 13);
	}
	wait_show("ET after DEL/ADD: nothing", 50);
	printf("write %zd\n", write(c, "et", 2));
	wait_show("ET after DEL/ADD: data", 1000);
	wait_show("ET after DEL/ADD: no new edge", 50);
	ctl(EPOLL_CTL_DEL, s, 0, 13);
	ctl(EPOLL_CTL_ADD, s, EPOLLIN | EPOLLET, 14);
	wait_show("ET re-added: the unread data", 1000);
	printf("read %zd\n", read(s, buf, sizeof(buf)));
	ctl(EPOLL_CTL_DEL, s, 0, 14);
	/* a deleted socket closed, its fd number reused by a new one */
	int s2 = dup(s);
	close(s);
	int p2[2];
	if (pipe(p2))
		return 2;
	printf("fd reused %d\n", p2[0] == s || p2[1] == s);
	printf("pipe write %zd\n", write(p2[1], "p", 1));
	ctl(EPOLL_CTL_ADD, p2[0] == s ? p2[0] : p2[1], p2[0] == s ? EPOLLIN : EPOLLOUT, 15);
	wait_show("reused fd: pipe end", 1000);
	ctl(EPOLL_CTL_DEL, p2[0] == s ? p2[0] : p2[1], 0, 15);
	close(p2[0]);
	close(p2[1]);
	if (dup2(s2, s) != s)
		return 2;
	close(s2);
	ctl(EPOLL_CTL_ADD, s, EPOLLIN, 16);
	printf("write %zd\n", write(c, "z", 1));
	wait_show("dup2 back: data", 1000);
	printf("read %zd\n", read(s, buf, sizeof(buf)));
	ctl(EPOLL_CTL_DEL, s, 0, 16);
	ctl(EPOLL_CTL_ADD, s, EPOLLIN, 5);

	ctl(EPOLL_CTL_ADD, c, EPOLLOUT, 6);
	wait_show("client writable", 1000);
	ctl(EPOLL_CTL_DEL, c, 0, 6);

	ctl(EPOLL_CTL_MOD, s, EPOLLIN | EPOLLRDHUP, 7);
	shutdown(c, SHUT_WR);
	wait_show("peer shut down writing", 1000);
	printf("read at EOF %zd\n", read(s, buf, sizeof(buf)));
	ctl(EPOLL_CTL_ADD, s, EPOLLIN, 8);
	ctl(EPOLL_CTL_DEL, s, 0, 7);
	ctl(EPOLL_CTL_DEL, s, 0, 7);
	close(c);
	close(s);
	close(l);
	close(ep);
	return 0;
}
