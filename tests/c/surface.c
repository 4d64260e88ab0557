/* The blocking I/O surface on one connection, single-threaded (connect to
 * our own listener, then accept: I2).  It prints what each call returned;
 * tests/test_surface.py runs it plain and under fastivc and compares the
 * two outputs line by line.  Built with _FORTIFY_SOURCE so read/recv/
 * recvfrom/poll go through the __*_chk variants.
 *
 *   surface 4|6 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t sigpipes;
static void on_sigpipe(int s) { (void)s; sigpipes++; }

static void SHOW(const char *what, ssize_t r)
{
	const char *e = r < 0 ? strerrorname_np(errno) : "";
	printf("%-28s %zd %s\n", what, r, e);
	fflush(stdout);
}

/* Lengths the compiler cannot see, so _FORTIFY_SOURCE must call the
 * checking variants (__read_chk, __recv_chk, __recvfrom_chk, __poll_chk). */
static volatile size_t LEN10 = 10, LEN4 = 4, LEN256 = 256;
static volatile nfds_t ONE = 1;

static size_t fill(int fd, char *buf, size_t n) /* read exactly n */
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	return got;
}

int main(int argc, char **argv)
{
	int v6 = argc > 1 && argv[1][0] == '6';
	struct sockaddr_storage ss = {0};
	socklen_t sl;
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		sl = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sl = sizeof(*a);
	}
	signal(SIGPIPE, on_sigpipe);
	int l = socket(ss.ss_family, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&ss, sl) < 0 || listen(l, 4) < 0 ||
	    getsockname(l, (struct sockaddr *)&ss, &sl) < 0)
		return 2;
	int c = socket(ss.ss_family, SOCK_STREAM, 0);
	SHOW("connect", connect(c, (struct sockaddr *)&ss, sl));
	int s = accept(l, NULL, NULL);
	SHOW("accept", s >= 0 ? 0 : -1);
	char buf[256], big[100000];
	struct iovec iov[3];

	SHOW("write", write(c, "hello", 5));
	SHOW("read", read(s, buf, LEN256));
	printf("  data %.5s\n", buf);

	iov[0] = (struct iovec){"ab", 2};
	iov[1] = (struct iovec){"cde", 3};
	iov[2] = (struct iovec){"fghij", 5};
	SHOW("writev", writev(c, iov, 3));
	char r1[4], r2[20];
	struct iovec riov[2] = {{r1, 4}, {r2, 20}};
	usleep(20000);
	SHOW("readv", readv(s, riov, 2));
	printf("  data %.4s|%.6s\n", r1, r2);

	SHOW("send NOSIGNAL", send(c, "peekaboo", 8, MSG_NOSIGNAL));
	usleep(20000);
	SHOW("recv PEEK", recv(s, buf, LEN4, MSG_PEEK));
	printf("  data %.4s\n", buf);
	SHOW("recv", recv(s, buf, sizeof(buf), 0));
	printf("  data %.8s\n", buf);

	SHOW("sendto NULL", sendto(c, "xyz", 3, 0, NULL, 0));
	struct sockaddr_storage from;
	socklen_t fl = sizeof(from);
	usleep(20000);
	SHOW("recvfrom", recvfrom(s, buf, LEN256, 0, (struct sockaddr *)&from, &fl));
	printf("  addrlen %u\n", (unsigned)fl);

	struct msghdr m = {0};
	iov[0] = (struct iovec){"msg1", 4};
	iov[1] = (struct iovec){"msg2", 4};
	m.msg_iov = iov;
	m.msg_iovlen = 2;
	SHOW("sendmsg", sendmsg(c, &m, 0));
	struct msghdr rm = {0};
	struct iovec ri = {buf, sizeof(buf)};
	rm.msg_iov = &ri;
	rm.msg_iovlen = 1;
	usleep(20000);
	SHOW("recvmsg", recvmsg(s, &rm, 0));
	printf("  data %.8s flags %d\n", buf, rm.msg_flags);

	SHOW("write 4", write(c, "1234", 4));
	SHOW("write 6", write(c, "567890", 6));
	SHOW("recv WAITALL 10", recv(s, buf, LEN10, MSG_WAITALL));
	printf("  data %.10s\n", buf);

	SHOW("recv DONTWAIT (empty)", recv(s, buf, 10, MSG_DONTWAIT));

	SHOW("write 7", write(c, "seven!!", 7));
	usleep(20000);
	int n = -1;
	SHOW("ioctl FIONREAD", ioctl(s, FIONREAD, &n));
	printf("  bytes %d\n", n);
	SHOW("read 7", read(s, buf, 7));

	struct pollfd p = {s, POLLIN, 0};
	SHOW("poll (empty, 0 ms)", poll(&p, 1, 0));
	SHOW("write 1", write(c, "!", 1));
	SHOW("poll (data)", poll(&p, ONE, 1000));
	printf("  revents %s\n", p.revents & POLLIN ? "POLLIN" : "-");
	struct pollfd pw = {c, POLLOUT, 0};
	SHOW("poll POLLOUT", poll(&pw, 1, 1000));
	fd_set rs;
	FD_ZERO(&rs);
	FD_SET(s, &rs);
	struct timeval tv = {1, 0};
	SHOW("select (data)", select(s + 1, &rs, NULL, NULL, &tv));
	printf("  set %d\n", FD_ISSET(s, &rs));
	SHOW("read 1", read(s, buf, 1));
	FD_ZERO(&rs);
	FD_SET(s, &rs);
	tv = (struct timeval){0, 50000};
	SHOW("select (empty, 50 ms)", select(s + 1, &rs, NULL, NULL, &tv));

	struct timeval to = {0, 100000};
	SHOW("setsockopt SO_RCVTIMEO", setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &to, sizeof(to)));
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	SHOW("recv (timeout)", recv(s, buf, 10, 0));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
	printf("  waited %s\n", ms >= 90 && ms < 2000 ? "about 100 ms" : "WRONG");
	to = (struct timeval){0, 0};
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &to, sizeof(to));

	int one = 1, val = 7;
	socklen_t vl = sizeof(val);
	SHOW("setsockopt TCP_NODELAY", setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)));
	SHOW("getsockopt TCP_NODELAY", getsockopt(c, IPPROTO_TCP, TCP_NODELAY, &val, &vl));
	printf("  value %d\n", val != 0);
	vl = sizeof(val);
	SHOW("getsockopt SO_ERROR", getsockopt(c, SOL_SOCKET, SO_ERROR, &val, &vl));
	printf("  value %d\n", val);

	/* sendfile from a file */
	char path[] = "/tmp/fastivc-surface-XXXXXX";
	int f = mkstemp(path);
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)(i * 7);
	if (write(f, big, sizeof(big)) != (ssize_t)sizeof(big))
		return 2;
	off_t off = 10;
	SHOW("sendfile", sendfile(c, f, &off, sizeof(big) - 10));
	printf("  offset %lld\n", (long long)off);
	static char back[sizeof(big)];
	size_t got = fill(s, back, sizeof(big) - 10);
	printf("  received %zu intact %d\n", got, memcmp(back, big + 10, got) == 0);
	unlink(path);
	close(f);

	/* non-blocking via fcntl */
	int fl0 = fcntl(s, F_GETFL);
	SHOW("fcntl O_NONBLOCK", fcntl(s, F_SETFL, fl0 | O_NONBLOCK));
	SHOW("read (nonblocking, empty)", read(s, buf, 10));
	SHOW("fcntl blocking", fcntl(s, F_SETFL, fl0));
	int nb = 1;
	SHOW("ioctl FIONBIO", ioctl(s, FIONBIO, &nb));
	SHOW("recv (FIONBIO, empty)", recv(s, buf, 10, 0));
	nb = 0;
	ioctl(s, FIONBIO, &nb);

	/* dup, dup2, F_DUPFD */
	int d = dup(s);
	SHOW("write via c", write(c, "dup!", 4));
	SHOW("read via dup", read(d, buf, 4));
	int d2 = fcntl(c, F_DUPFD_CLOEXEC, 50);
	SHOW("write via F_DUPFD", write(d2, "fd", 2));
	close(d2);
	SHOW("dup2", dup2(d, 60));
	SHOW("read via dup2", read(60, buf, 2));
	close(60);
	close(d);

	/* shutdown each direction */
	SHOW("shutdown c SHUT_WR", shutdown(c, SHUT_WR));
	SHOW("read at EOF", read(s, buf, 10));
	SHOW("write s after c SHUT_WR", write(s, "bye", 3));
	SHOW("read c", read(c, buf, 10));
	SHOW("write c after SHUT_WR", send(c, "x", 1, MSG_NOSIGNAL));
	SHOW("shutdown s SHUT_WR", shutdown(s, SHUT_WR));
	SHOW("read c at EOF", read(c, buf, 10));

	/* EPIPE / SIGPIPE after the peer closed */
	int c2 = socket(ss.ss_family, SOCK_STREAM, 0);
	connect(c2, (struct sockaddr *)&ss, sl);
	int s2 = accept(l, NULL, NULL);
	SHOW("write c2", write(c2, "x", 1));
	SHOW("read s2", read(s2, buf, 1));
	close(s2);
	usleep(20000);
	ssize_t w;
	int tries = 0;
	while ((w = send(c2, "y", 1, MSG_NOSIGNAL)) > 0 && tries++ < 100)
		usleep(1000);
	SHOW("send after peer close", w);
	printf("  sigpipe before write %d\n", (int)sigpipes);
	SHOW("write after peer close", write(c2, "z", 1));
	printf("  sigpipe after write %d\n", sigpipes > 0);
	close(c2);

	/* SO_SNDTIMEO: a peer that does not read; a blocking send returns what
	 * fit when the timeout expires.  (Whether a second send then fails
	 * depends on TCP buffer autotuning, so it is not compared.) */
	int c3 = socket(ss.ss_family, SOCK_STREAM, 0);
	connect(c3, (struct sockaddr *)&ss, sl);
	int s3 = accept(l, NULL, NULL);
	(void)s3;
	to = (struct timeval){0, 100000};
	SHOW("setsockopt SO_SNDTIMEO", setsockopt(c3, SOL_SOCKET, SO_SNDTIMEO, &to, sizeof(to)));
	size_t huge = 64u << 20;
	char *junk = calloc(1, huge);
	ssize_t part = send(c3, junk, huge, 0);
	printf("  partial send %s\n", part > 0 && (size_t)part < huge ? "yes" : "NO");
	free(junk);
	close(c3);
	close(s3);
	close(c);
	close(s);
	close(l);
	return 0;
}
