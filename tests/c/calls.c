/* The calls that reach a socket by another way than read/recv/write/send
 * (tests/test_calls.py, issue 11): recvmmsg, sendmmsg, preadv2, pwritev2,
 * stdio on fdopen'd sockets, daemon(), execl/execlp/execle/fexecve.  A
 * plain socket program; one JSON line per scenario:
 * {"name", "steps": [...], "accelerated"}, each step what a program sees
 * (returns, errno names, lengths, bytes).  Run on plain TCP and under
 * fastivc, the lines must be equal but for "accelerated".
 *
 *   calls            all scenarios
 *   calls child FD WORD   (exec'd) write WORD on FD, then exit */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "onfabric.h"

static char steps[65536];
static size_t at;

static void step(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void step(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (at)
		at += (size_t)snprintf(steps + at, sizeof(steps) - at, ", ");
	at += (size_t)snprintf(steps + at, sizeof(steps) - at, "\"");
	size_t from = at;
	at += (size_t)vsnprintf(steps + at, sizeof(steps) - at, fmt, ap);
	for (size_t i = from; i < at && i < sizeof(steps); i++) /* (JSON: no escapes needed) */
		if ((unsigned char)steps[i] < 0x20 || steps[i] == '"' || steps[i] == '\\')
			steps[i] = '|';
	at += (size_t)snprintf(steps + at, sizeof(steps) - at, "\"");
	va_end(ap);
}

static const char *en(int e)
{
	static char b[32];
	switch (e) {
	case EAGAIN: return "EAGAIN";
	case EPIPE: return "EPIPE";
	case ESPIPE: return "ESPIPE";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case EINVAL: return "EINVAL";
	case EBADF: return "EBADF";
	case ECONNRESET: return "ECONNRESET";
	case ENOTCONN: return "ENOTCONN";
	case EINTR: return "EINTR";
	default: snprintf(b, sizeof(b), "errno%d", e); return b;
	}
}

/* a result: the count, or the errno's name */
static void res(const char *what, long r)
{
	if (r < 0)
		step("%s -1 %s", what, en(errno));
	else
		step("%s %ld", what, r);
}

static void settle(void) { usleep(50000); } /* loopback delivers (the ring needs none) */

struct pair {
	int w, r;
	long acc; /* of the two ends, on the fabric after the switch (-1: no fastivc) */
};

static struct pair pair_open(void)
{
	long base = on_fabric();
	struct pair p = {.acc = -1};
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof(a);
	if (bind(ls, (struct sockaddr *)&a, l) || listen(ls, 1) ||
	    getsockname(ls, (struct sockaddr *)&a, &l))
		exit(2);
	p.w = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(p.w, (struct sockaddr *)&a, l))
		exit(2);
	p.r = accept(ls, NULL, NULL);
	close(ls);
	int one = 1;
	setsockopt(p.w, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	char c;
	if (send(p.w, "!", 1, 0) != 1 || recv(p.r, &c, 1, 0) != 1 || /* the switch */
	    send(p.r, "!", 1, 0) != 1 || recv(p.w, &c, 1, 0) != 1)
		exit(2);
	if (base >= 0)
		p.acc = on_fabric() - base;
	return p;
}

static void done(const char *name, struct pair *p)
{
	if (p->w >= 0)
		close(p->w);
	if (p->r >= 0)
		close(p->r);
	printf("{\"name\": \"%s\", \"accelerated\": %ld, \"steps\": [%s]}\n", name, p->acc, steps);
	fflush(stdout);
	at = 0;
	steps[0] = 0;
}

/* what is there now, as text (non-blocking) */
static void drain(int fd, const char *what)
{
	char b[256];
	ssize_t n = recv(fd, b, sizeof(b) - 1, MSG_DONTWAIT);
	if (n < 0) {
		step("%s -1 %s", what, en(errno));
		return;
	}
	b[n] = 0;
	step("%s %zd '%s'", what, n, b);
}

static void mmsg_entries(struct mmsghdr *v, int n, int r)
{
	for (int i = 0; i < r && i < n; i++) {
		struct iovec *io = v[i].msg_hdr.msg_iov;
		step("entry %d len %u '%.*s' flags %d", i, v[i].msg_len, (int)v[i].msg_len,
		     (char *)io[0].iov_base, v[i].msg_hdr.msg_flags);
	}
}

static void t_recvmmsg(const char *name, size_t entry, int flags, int shut, int tmo)
{
	struct pair p = pair_open();
	send(p.w, "hello", 5, 0);
	send(p.w, "world", 5, 0);
	if (shut)
		shutdown(p.w, SHUT_WR);
	settle();
	enum { N = 4 };
	char bufs[N][64];
	struct iovec io[N];
	struct mmsghdr v[N];
	memset(v, 0, sizeof(v));
	for (int i = 0; i < N; i++) {
		io[i] = (struct iovec){bufs[i], entry};
		v[i].msg_hdr.msg_iov = &io[i];
		v[i].msg_hdr.msg_iovlen = 1;
	}
	struct timespec ts = {0, 0};
	int r = recvmmsg(p.r, v, N, flags, tmo ? &ts : NULL);
	res("recvmmsg", r);
	mmsg_entries(v, N, r);
	if (tmo)
		step("timeout left %ld.%09ld", (long)ts.tv_sec, ts.tv_nsec);
	drain(p.r, "then");
	done(name, &p);
}

static void t_recvmmsg_errors(void)
{
	struct pair p = pair_open();
	struct mmsghdr v[1];
	char b[8];
	struct iovec io = {b, sizeof(b)};
	memset(v, 0, sizeof(v));
	v[0].msg_hdr.msg_iov = &io;
	v[0].msg_hdr.msg_iovlen = 1;
	res("empty nonblocking", recvmmsg(p.r, v, 1, MSG_DONTWAIT, NULL));
	struct timespec bad = {0, 2000000000L};
	res("bad timeout", recvmmsg(p.r, v, 1, MSG_DONTWAIT, &bad));
	res("vlen 0", recvmmsg(p.r, v, 0, MSG_DONTWAIT, NULL));
	done("recvmmsg errors", &p);
}

static void two_entries(struct mmsghdr v[2], struct iovec io[2], char bufs[2][64])
{
	memset(v, 0, 2 * sizeof(*v));
	for (int i = 0; i < 2; i++) {
		io[i] = (struct iovec){bufs[i], 64};
		v[i].msg_hdr.msg_iov = &io[i];
		v[i].msg_hdr.msg_iovlen = 1;
	}
}

/* A reset after bytes: the entry after them meets the error, which the
 * kernel keeps for the next call (do_recvmmsg: sk_err) */
static void t_recvmmsg_reset(void)
{
	struct pair p = pair_open();
	send(p.w, "hello", 5, 0);
	send(p.r, "x", 1, 0);
	settle();
	close(p.w); /* with "x" unread: a reset */
	p.w = -1;
	settle();
	char bufs[2][64];
	struct iovec io[2];
	struct mmsghdr v[2];
	two_entries(v, io, bufs);
	int r = recvmmsg(p.r, v, 2, 0, NULL);
	res("recvmmsg", r);
	mmsg_entries(v, 2, r);
	drain(p.r, "next");
	drain(p.r, "then");
	done("recvmmsg reset after bytes", &p);
}

/* The reset while the second entry waits: the call returns the first, and
 * the error is the next call's (do_recvmmsg puts it back into sk_err) */
static void *close_later(void *arg)
{
	usleep(100000);
	close(*(int *)arg); /* with "x" unread: a reset */
	return NULL;
}

static void t_recvmmsg_reset_later(void)
{
	struct pair p = pair_open();
	send(p.w, "hello", 5, 0);
	send(p.r, "x", 1, 0);
	settle();
	char bufs[2][64];
	struct iovec io[2];
	struct mmsghdr v[2];
	two_entries(v, io, bufs);
	pthread_t t;
	int wfd = p.w;
	p.w = -1;
	pthread_create(&t, NULL, close_later, &wfd);
	int r = recvmmsg(p.r, v, 2, 0, NULL);
	pthread_join(t, NULL);
	res("recvmmsg", r);
	mmsg_entries(v, 2, r);
	drain(p.r, "next");
	drain(p.r, "then");
	done("recvmmsg reset while waiting", &p);
}

static void t_sendmmsg(void)
{
	struct pair p = pair_open();
	struct iovec io[3] = {{"ab", 2}, {"cd", 2}, {"efg", 3}};
	struct mmsghdr v[3];
	memset(v, 0, sizeof(v));
	for (int i = 0; i < 3; i++) {
		v[i].msg_hdr.msg_iov = &io[i];
		v[i].msg_hdr.msg_iovlen = 1;
	}
	res("sendmmsg", sendmmsg(p.w, v, 3, 0));
	for (int i = 0; i < 3; i++)
		step("len %u", v[i].msg_len);
	settle();
	drain(p.r, "read");
	res("vlen 0", sendmmsg(p.w, v, 0, 0));
	shutdown(p.w, SHUT_WR);
	res("after shutdown", sendmmsg(p.w, v, 3, MSG_NOSIGNAL));
	done("sendmmsg", &p);
}

static void t_v2(void)
{
	struct pair p = pair_open();
	char a[4], b[8];
	struct iovec io[2] = {{a, sizeof(a)}, {b, sizeof(b)}};
	struct iovec wio[2] = {{"0123", 4}, {"456789", 6}};
	res("pwritev2 -1", pwritev2(p.w, wio, 2, -1, 0));
	res("pwritev2 at 0", pwritev2(p.w, wio, 2, 0, 0));
	res("pwritev2 bad flag", pwritev2(p.w, wio, 2, -1, 0x4000));
	res("pwritev2 nowait", pwritev2(p.w, wio, 1, -1, RWF_NOWAIT));
	settle();
	res("preadv2 at 0", preadv2(p.r, io, 2, 0, 0));
	res("preadv2 bad flag", preadv2(p.r, io, 2, -1, 0x4000));
	memset(a, 0, sizeof(a));
	memset(b, 0, sizeof(b));
	long r = preadv2(p.r, io, 2, -1, 0);
	res("preadv2 -1", r);
	step("bytes '%.4s' '%.8s'", a, b);
	r = preadv2(p.r, io, 2, -1, RWF_NOWAIT);
	res("preadv2 nowait", r);
	step("bytes '%.4s'", a);
	res("preadv2 nowait empty", preadv2(p.r, io, 2, -1, RWF_NOWAIT));
	struct iovec none = {a, 0};
	res("preadv2 zero length", preadv2(p.r, &none, 1, -1, RWF_NOWAIT));
	res("preadv64v2 -1 nowait", preadv64v2(p.r, io, 2, -1, RWF_NOWAIT));
	shutdown(p.w, SHUT_WR);
	settle();
	res("preadv2 at eof", preadv2(p.r, io, 2, -1, 0));
	done("preadv2 pwritev2", &p);
}

static const char *chomp(char *s)
{
	if (!s)
		return "(null)";
	s[strcspn(s, "\n")] = '|';
	return s;
}

static void t_stdio(void)
{
	struct pair p = pair_open();
	FILE *fw = fdopen(p.w, "w"), *fr = fdopen(p.r, "r");
	step("fdopen %d %d", fw != NULL, fr != NULL);
	step("fileno %d %d", fileno(fw) == p.w, fileno(fr) == p.r);
	step("fprintf %d", fprintf(fw, "line one\nline %s\n", "two"));
	drain(p.r, "before fflush"); /* (in the FILE's buffer) */
	step("fflush %d", fflush(fw));
	settle();
	char line[64];
	step("fgets '%s'", chomp(fgets(line, sizeof(line), fr)));
	step("fgets '%s'", chomp(fgets(line, sizeof(line), fr)));
	long t = ftell(fr);
	step("ftell %ld %s", t, t < 0 ? en(errno) : "");
	FILE *fb = fdopen(dup(p.r), "a+");
	step("fputs %d fflush %d", fputs("back\n", fb), fflush(fb));
	step("fclose %d", fclose(fb));
	settle();
	drain(p.w, "writer reads");
	FILE *bad = fdopen(p.r, "q");
	step("fdopen bad mode %d %s", bad != NULL, bad ? "" : en(errno));
	step("fclose %d", fclose(fw));
	res("fd after fclose", fcntl(p.w, F_GETFD));
	p.w = -1;
	settle();
	step("fgets at eof %d feof %d", fgets(line, sizeof(line), fr) != NULL, feof(fr));
	step("fclose %d", fclose(fr));
	p.r = -1;
	done("stdio", &p);
}

/* what fd gives until its end, and how it ended */
static void read_to_end(int fd)
{
	char b[64];
	size_t got = 0;
	for (;;) {
		ssize_t n = recv(fd, b + got, sizeof(b) - 1 - got, 0);
		if (n <= 0) {
			res("end", n);
			break;
		}
		got += (size_t)n;
	}
	b[got] = 0;
	step("read '%s'", b);
}

/* a daemon()'s child keeps the connection: it writes after its parent
 * (the one that called daemon) is gone, and hands it to the program it
 * execs */
static void t_daemon(const char *self)
{
	struct pair p = pair_open();
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		close(p.r);
		if (daemon(1, 1) < 0)
			_exit(3);
		usleep(1500000); /* past the library's liveness checks */
		send(p.w, "from the daemon, ", 17, MSG_NOSIGNAL);
		char fd[16];
		snprintf(fd, sizeof(fd), "%d", p.w);
		execl(self, "calls", "child", fd, "daemon", (char *)NULL); /* and its exec */
		_exit(127);
	}
	int st;
	waitpid(pid, &st, 0);
	step("daemon's parent exit %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	close(p.w);
	p.w = -1;
	read_to_end(p.r);
	done("daemon", &p);
}

/* exec by execl, execlp, execle, fexecve: the new program writes on the
 * inherited socket */
static void t_exec(const char *self, int how)
{
	static const char *names[] = {"execl", "execlp", "execle", "fexecve"};
	struct pair p = pair_open();
	char fd[16];
	snprintf(fd, sizeof(fd), "%d", p.w);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		close(p.r);
		switch (how) {
		case 0:
			execl(self, "calls", "child", fd, names[how], (char *)NULL);
			break;
		case 1:
			execlp(self, "calls", "child", fd, names[how], (char *)NULL);
			break;
		case 2:
			execle(self, "calls", "child", fd, names[how], (char *)NULL, environ);
			break;
		default: {
			int pf = open(self, O_RDONLY | O_CLOEXEC);
			char *av[] = {"calls", "child", fd, (char *)names[how], NULL};
			fexecve(pf, av, environ);
		}
		}
		_exit(127);
	}
	close(p.w);
	p.w = -1;
	read_to_end(p.r);
	int st;
	waitpid(pid, &st, 0);
	step("exit %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	char name[32];
	snprintf(name, sizeof(name), "%s", names[how]);
	done(name, &p);
}

/* syscall(): the calls made raw on one end of an accelerated pair and
 * through libc on the other (non-blocking: a raw call that went past the
 * ring would find or leave the bytes on TCP, and the other end nothing):
 * read/write, recvfrom/sendto, readv/writev, recvmsg/sendmsg, FIONREAD,
 * fcntl, poll, a dup that reads on, shutdown and the EOF, close */
static void got(const char *what, long n, const char *b)
{
	res(what, n);
	if (n > 0)
		step("got '%.*s'", (int)n, b);
}

static void t_raw(void)
{
	struct pair p = pair_open();
	char b[64];
	long fl = syscall(SYS_fcntl, p.r, F_GETFL);
	res("fcntl O_NONBLOCK", syscall(SYS_fcntl, p.r, F_SETFL, fl | O_NONBLOCK));
	fcntl(p.w, F_SETFL, fcntl(p.w, F_GETFL) | O_NONBLOCK);
	res("read empty", syscall(SYS_read, p.r, b, sizeof(b)));
	res("write", syscall(SYS_write, p.w, "raw one", 7));
	settle();
	got("recv", recv(p.r, b, sizeof(b), 0), b);
	res("send", send(p.w, "raw two", 7, 0));
	settle();
	int avail = -1;
	res("ioctl FIONREAD", syscall(SYS_ioctl, p.r, FIONREAD, &avail));
	step("avail %d", avail);
	got("read", syscall(SYS_read, p.r, b, sizeof(b)), b);
	res("sendto", syscall(SYS_sendto, p.r, "three", 5, 0, NULL, 0));
	settle();
	got("recv", recv(p.w, b, sizeof(b), 0), b);
	res("send", send(p.r, "four", 4, 0));
	settle();
	got("recvfrom", syscall(SYS_recvfrom, p.w, b, sizeof(b), 0, NULL, NULL), b);
	struct iovec wv[2] = {{"ab", 2}, {"cde", 3}};
	res("writev", syscall(SYS_writev, p.w, wv, 2));
	settle();
	got("recv", recv(p.r, b, sizeof(b), 0), b);
	res("send", send(p.w, "fghij", 5, 0));
	settle();
	char x[2], y[8];
	struct iovec rv[2] = {{x, 2}, {y, 8}};
	long n = syscall(SYS_readv, p.r, rv, 2);
	res("readv", n);
	if (n > 2)
		step("got '%.2s' '%.*s'", x, (int)(n - 2), y);
	struct iovec mv = {"msg", 3};
	struct msghdr m = {.msg_iov = &mv, .msg_iovlen = 1};
	res("sendmsg", syscall(SYS_sendmsg, p.r, &m, 0));
	settle();
	got("recv", recv(p.w, b, sizeof(b), 0), b);
	res("send", send(p.r, "msg2", 4, 0));
	settle();
	struct iovec mr = {b, sizeof(b)};
	struct msghdr mm = {.msg_iov = &mr, .msg_iovlen = 1};
	got("recvmsg", syscall(SYS_recvmsg, p.w, &mm, 0), b);
	struct pollfd pf = {.fd = p.r, .events = POLLIN | POLLOUT};
	res("poll", syscall(SYS_poll, &pf, 1, 0));
	step("revents %d", pf.revents);
	res("send", send(p.w, "dup", 3, 0));
	settle();
	long d = syscall(SYS_dup, p.r);
	res("dup", d >= 0 ? 0 : -1);
	got("read dup", syscall(SYS_read, (int)d, b, sizeof(b)), b);
	res("close dup", syscall(SYS_close, (int)d));
	res("shutdown", syscall(SYS_shutdown, p.w, SHUT_WR));
	settle();
	res("recv at end", recv(p.r, b, sizeof(b), 0));
	res("close", syscall(SYS_close, p.w));
	p.w = -1;
	settle();
	res("send to the closed end", send(p.r, "x", 1, MSG_NOSIGNAL));
	done("raw syscall()", &p);
}

/* ---- the program's handlers, as it set them (issue 11: fastivc runs them
 * through a trampoline of its own, which must not show) ---- */

static volatile sig_atomic_t h_runs, h_signo, h_code, h_value;
static void h1(int sig) { h_runs++; h_signo = sig; }
static void h2(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	h_runs++;
	h_signo = sig;
	h_code = si->si_code;
	h_value = si->si_value.sival_int;
}

static const char *hname(void *h)
{
	return h == (void *)SIG_DFL ? "DFL" : h == (void *)SIG_IGN ? "IGN" : h == (void *)SIG_HOLD ? "HOLD"
	     : h == (void *)h1 ? "h1" : h == (void *)h2 ? "h2" : "other";
}

/* what sigaction reports for sig */
static void act_is(const char *what, int sig)
{
	struct sigaction o;
	if (sigaction(sig, NULL, &o) < 0) {
		step("%s -1 %s", what, en(errno));
		return;
	}
	void *h = o.sa_flags & SA_SIGINFO ? (void *)o.sa_sigaction : (void *)o.sa_handler;
	step("%s %s siginfo=%d restart=%d resethand=%d nodefer=%d masks_self=%d", what, hname(h),
	     !!(o.sa_flags & SA_SIGINFO), !!(o.sa_flags & SA_RESTART),
	     !!(o.sa_flags & SA_RESETHAND), !!(o.sa_flags & SA_NODEFER),
	     sigismember(&o.sa_mask, sig));
}

static void ran(const char *what)
{
	step("%s runs=%d signo=%d", what, (int)h_runs, (int)h_signo);
	h_runs = h_signo = 0;
}

struct kick {
	pthread_t main;
	int sig, fd, write_ms;
};

static void *kick_later(void *arg)
{
	struct kick *k = arg;
	usleep(50000);
	pthread_kill(k->main, k->sig);
	if (k->write_ms) {
		usleep((useconds_t)k->write_ms * 1000);
		send(k->fd, "late", 4, MSG_NOSIGNAL);
	}
	return NULL;
}

/* a blocking recv on the ring that a handler interrupts (none restarting)
 * or that goes on (SA_RESTART) */
static void recv_kicked(const char *what, struct pair *p, int restart)
{
	struct kick k = {pthread_self(), SIGUSR1, p->w, restart ? 200 : 0};
	pthread_t t;
	char b[16];
	struct sigaction a = {.sa_handler = h1, .sa_flags = restart ? SA_RESTART : 0};
	sigemptyset(&a.sa_mask);
	sigaction(SIGUSR1, &a, NULL);
	pthread_create(&t, NULL, kick_later, &k);
	res(what, recv(p->r, b, sizeof(b), 0));
	pthread_join(t, NULL);
	ran(what);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* siginterrupt, sigset: programs call them */
static void t_sigaction(void)
{
	struct pair p = pair_open();
	struct sigaction a = {.sa_handler = h1}, o;
	sigemptyset(&a.sa_mask);
	res("sigaction h1", sigaction(SIGUSR1, &a, &o));
	step("its old %s", hname((void *)o.sa_handler));
	act_is("then", SIGUSR1);
	raise(SIGUSR1);
	ran("raised");
	a.sa_sigaction = h2;
	a.sa_flags = SA_SIGINFO;
	res("sigaction h2 siginfo", sigaction(SIGUSR1, &a, &o));
	step("its old %s siginfo=%d", hname((void *)o.sa_handler), !!(o.sa_flags & SA_SIGINFO));
	act_is("then", SIGUSR1);
	sigqueue(getpid(), SIGUSR1, (union sigval){.sival_int = 42});
	step("queued runs=%d signo=%d code=%d value=%d", (int)h_runs, (int)h_signo,
	     h_code == SI_QUEUE, (int)h_value);
	h_runs = h_signo = 0;
	step("signal old %s", hname((void *)signal(SIGUSR2, h1)));
	act_is("signal()", SIGUSR2);
	res("siginterrupt 1", siginterrupt(SIGUSR2, 1));
	act_is("then", SIGUSR2);
	step("signal old %s", hname((void *)signal(SIGUSR2, h1)));
	act_is("signal() after siginterrupt", SIGUSR2);
	res("siginterrupt 0", siginterrupt(SIGUSR2, 0));
	act_is("then", SIGUSR2);
	step("sysv_signal old %s", hname((void *)sysv_signal(SIGUSR2, h1)));
	act_is("sysv_signal()", SIGUSR2);
	raise(SIGUSR2);
	ran("raised");
	act_is("after its one run", SIGUSR2);
	a.sa_handler = h1;
	a.sa_flags = SA_RESETHAND;
	sigaction(SIGUSR1, &a, NULL);
	raise(SIGUSR1);
	ran("resethand raised");
	act_is("after", SIGUSR1);
	signal(SIGUSR1, h1);
	/* a child sharing our memory resets it before its exec, as Python's
	 * subprocess does: ours is still h1 (regression: the library's table
	 * of handlers was changed for the parent too) */
	pid_t c = vfork();
	if (c == 0) {
		signal(SIGUSR1, SIG_DFL);
		_exit(0);
	}
	waitpid(c, NULL, 0);
	act_is("after a vfork child reset it", SIGUSR1);
	raise(SIGUSR1);
	ran("raised");
	step("sigset hold old %s", hname((void *)sigset(SIGUSR1, SIG_HOLD)));
	raise(SIGUSR1);
	ran("held");
	step("sigset h1 old %s", hname((void *)sigset(SIGUSR1, h1)));
	ran("released");
	step("signal ign old %s", hname((void *)signal(SIGUSR1, SIG_IGN)));
	raise(SIGUSR1);
	ran("ignored");
	res("sigaction SIGKILL", sigaction(SIGKILL, &a, NULL));
	res("sigaction 0", sigaction(0, &a, NULL));
	errno = 0;
	void *h65 = (void *)signal(65, h1);
	step("signal 65 %s %s", h65 == (void *)SIG_ERR ? "SIG_ERR" : hname(h65), en(errno));
	recv_kicked("recv, a handler", &p, 0);
	recv_kicked("recv, an SA_RESTART handler", &p, 1);
	signal(SIGUSR1, SIG_DFL);
	signal(SIGUSR2, SIG_DFL);
	done("the program's handlers", &p);
}
#pragma GCC diagnostic pop

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "child")) {
		int fd = atoi(argv[2]);
		char b[64];
		int n = snprintf(b, sizeof(b), "after %s", argv[3]);
		return send(fd, b, (size_t)n, MSG_NOSIGNAL) == n ? 0 : 1;
	}
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return 2;
	self[n] = 0;
	t_recvmmsg("recvmmsg small entries", 4, MSG_DONTWAIT, 0, 0);
	t_recvmmsg("recvmmsg one entry takes all", 64, MSG_DONTWAIT, 0, 0);
	t_recvmmsg("recvmmsg waitforone", 4, MSG_WAITFORONE, 0, 0);
	t_recvmmsg("recvmmsg at eof", 64, 0, 1, 0);
	t_recvmmsg("recvmmsg zero timeout", 4, 0, 0, 1);
	t_recvmmsg_errors();
	t_recvmmsg_reset();
	t_recvmmsg_reset_later();
	t_sendmmsg();
	t_raw();
	t_sigaction();
	t_v2();
	t_stdio();
	t_daemon(self);
	for (int how = 0; how < 4; how++)
		t_exec(self, how);
	return 0;
}
