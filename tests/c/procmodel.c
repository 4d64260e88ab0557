/* The process model on loopback TCP connections: dup*, F_DUPFD*, fork
 * (one process goes on; both go on), threads sharing one socket, exec with
 * an inherited connection, close_range, posix_spawn/vfork, and a signal
 * during a blocking read.  Each mode is one case; it prints what the calls
 * returned (values and errno names, never fds, pids or timings) and exits 0.
 * tests/test_families.py runs every mode plain and under fastivc and
 * compares the output line by line.
 *
 *   procmodel 4|6 MODE            (MODE: see the table at the end)
 *   procmodel 4|6 exec-child FD   (re-invoked by the exec modes) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* How long any wait for the peer may take before the program reports it
 * and goes on: a broken library shows as a line in the output, not a hang. */
#define WAIT_MS 3000

static int v6;
static const char *self_exe, *ipv_arg;

static void SHOW(const char *what, long r)
{
	printf("%-34s %ld %s\n", what, r, r < 0 ? strerrorname_np(errno) : "");
	fflush(stdout);
}

static void die(const char *what)
{
	printf("setup failed: %s: %s\n", what, strerrorname_np(errno));
	fflush(stdout);
	exit(2);
}

/* A connected pair over loopback: c from connect(), s from accept4(). */
static void pair(int cflags, int sflags, int *c, int *s)
{
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
	int l = socket(ss.ss_family, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&ss, sl) < 0 || listen(l, 4) < 0 ||
	    getsockname(l, (struct sockaddr *)&ss, &sl) < 0)
		die("listener");
	*c = socket(ss.ss_family, SOCK_STREAM | cflags, 0);
	if (*c < 0 || connect(*c, (struct sockaddr *)&ss, sl) < 0)
		die("connect");
	*s = accept4(l, NULL, NULL, sflags);
	if (*s < 0)
		die("accept4");
	close(l);
}

/* Wait up to WAIT_MS for fd to be readable: 1, or 0 on timeout. */
static int readable(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	int r;
	do
		r = poll(&p, 1, WAIT_MS);
	while (r < 0 && errno == EINTR);
	return r > 0;
}

/* Read exactly n bytes (poll-guarded); returns the count, which is short on
 * EOF, error or timeout; *why says which. */
static size_t rd_full(int fd, void *buf, size_t n, const char **why)
{
	size_t got = 0;
	*why = "ok";
	while (got < n) {
		if (!readable(fd)) {
			*why = "timeout";
			break;
		}
		ssize_t r = read(fd, (char *)buf + got, n - got);
		if (r == 0) {
			*why = "eof";
			break;
		}
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			*why = strerrorname_np(errno);
			break;
		}
		got += (size_t)r;
	}
	return got;
}

static int wr_full(int fd, const void *buf, size_t n)
{
	size_t put = 0;
	while (put < n) {
		ssize_t r = write(fd, (const char *)buf + put, n - put);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		put += (size_t)r;
	}
	return 0;
}

/* Send msg on `from`, read it on `to`, print what arrived. */
static void hop(const char *label, int from, int to, const char *msg)
{
	size_t n = strlen(msg);
	char buf[256] = {0};
	const char *why;
	int w = wr_full(from, msg, n);
	size_t got = rd_full(to, buf, n, &why);
	printf("%-34s write %d read %zu %s [%.*s]\n", label, w, got, why, (int)got, buf);
	fflush(stdout);
}

/* What a read gives once the peer is gone: "eof", data, an error or timeout. */
static void expect_eof(const char *label, int fd)
{
	char b[64];
	if (!readable(fd)) {
		printf("%-34s timeout\n", label);
	} else {
		ssize_t r = read(fd, b, sizeof(b));
		printf("%-34s %zd %s\n", label, r, r < 0 ? strerrorname_np(errno) : "");
	}
	fflush(stdout);
}

static void show_status(const char *label, pid_t pid)
{
	int st = 0;
	pid_t r;
	do
		r = waitpid(pid, &st, 0);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		printf("%-34s waitpid %s\n", label, strerrorname_np(errno));
	else if (WIFEXITED(st))
		printf("%-34s exit %d\n", label, WEXITSTATUS(st));
	else
		printf("%-34s signal %d\n", label, WIFSIGNALED(st) ? WTERMSIG(st) : -1);
	fflush(stdout);
}

/* fork() with stdout flushed (no duplicated output) and a child that dies
 * with its parent (no orphan can hold the test's pipes). */
static pid_t xfork(void)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0)
		prctl(PR_SET_PDEATHSIG, SIGKILL);
	return pid;
}

static void fill_pattern(unsigned char *b, size_t n, uint64_t off)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)((off + i) % 251);
}

static int check_pattern(const unsigned char *b, size_t n, uint64_t off)
{
	for (size_t i = 0; i < n; i++)
		if (b[i] != (unsigned char)((off + i) % 251))
			return 0;
	return 1;
}

/* Echo everything on fd until EOF, then close it (a forked server). */
static void echo_until_eof(int fd)
{
	static char buf[65536];
	for (;;) {
		if (!readable(fd))
			break;
		ssize_t r = read(fd, buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0 || wr_full(fd, buf, (size_t)r) < 0)
			break;
	}
	close(fd);
}

/* ---- dup, dup2, dup3, F_DUPFD, F_DUPFD_CLOEXEC ---- */

static void show_cloexec(const char *label, int fd)
{
	int f = fcntl(fd, F_GETFD);
	SHOW(label, f < 0 ? -1 : (f & FD_CLOEXEC));
}

static int mode_dup(void)
{
	int c, s, c2, s2;
	pair(0, 0, &c, &s);
	int d[6];
	const char *name[6] = {"orig", "dup", "dup2", "dup3 CLOEXEC", "F_DUPFD", "F_DUPFD_CLOEXEC"};
	d[0] = s;
	d[1] = dup(s);
	SHOW("dup", d[1] >= 0 ? 0 : -1);
	d[2] = dup2(s, 100);
	SHOW("dup2 to 100", d[2]);
	d[3] = dup3(s, 101, O_CLOEXEC);
	SHOW("dup3 O_CLOEXEC to 101", d[3]);
	d[4] = fcntl(s, F_DUPFD, 200);
	SHOW("F_DUPFD from 200", d[4]);
	d[5] = fcntl(s, F_DUPFD_CLOEXEC, 210);
	SHOW("F_DUPFD_CLOEXEC from 210", d[5]);
	SHOW("dup2 onto itself", dup2(s, s) == s ? 0 : -1);
	SHOW("dup3 onto itself", dup3(s, s, 0));
	SHOW("dup3 bad flags", dup3(s, 102, 12345));
	show_cloexec("cloexec dup2", d[2]);
	show_cloexec("cloexec dup3", d[3]);
	show_cloexec("cloexec F_DUPFD", d[4]);
	show_cloexec("cloexec F_DUPFD_CLOEXEC", d[5]);
	for (int i = 0; i < 6; i++) {
		char l[64], m[64];
		snprintf(l, sizeof(l), "to %s", name[i]);
		snprintf(m, sizeof(m), "request-%d", i);
		hop(l, c, d[i], m);
		snprintf(l, sizeof(l), "from %s", name[i]);
		snprintf(m, sizeof(m), "reply-%d", i);
		hop(l, d[i], c, m);
	}
	/* the original goes first; every copy still works */
	SHOW("close orig", close(s));
	hop("after close orig: to dup", c, d[1], "still here");
	hop("after close orig: from dup3", d[3], c, "me too");
	/* dup2 of another connection onto a copy: that copy moves over */
	pair(0, 0, &c2, &s2);
	SHOW("dup2 other conn onto dup2 copy", dup2(s2, d[2]));
	hop("conn2 via replaced fd", c2, d[2], "second connection");
	hop("conn1 via F_DUPFD", c, d[4], "first connection");
	SHOW("close conn2 orig", close(s2));
	hop("conn2 still via replaced fd", d[2], c2, "second again");
	SHOW("close replaced fd", close(d[2]));
	expect_eof("conn2 peer after last close", c2);
	/* close the rest one at a time; the peer sees EOF only after the last */
	int order[4] = {1, 3, 4, 5};
	for (int i = 0; i < 4; i++) {
		char l[64];
		if (i < 3) {
			snprintf(l, sizeof(l), "close %s", name[order[i]]);
			SHOW(l, close(d[order[i]]));
			snprintf(l, sizeof(l), "then via %s", name[order[i + 1]]);
			hop(l, c, d[order[i + 1]], "ok");
		} else {
			SHOW("close last copy", close(d[order[i]]));
		}
	}
	expect_eof("conn1 peer after last close", c);
	close(c);
	close(c2);
	return 0;
}

/* ---- fork: one process goes on ---- */

#define BIG (3u << 20)

/* Send BIG bytes through an echoing peer in lockstep chunks and check them. */
static void lockstep_echo(const char *label, int fd)
{
	static unsigned char out[65536], in[65536];
	uint64_t off = 0;
	int ok = 1;
	const char *why = "ok";
	while (off < BIG && ok) {
		size_t k = 1000 + (off * 7919) % 60000;
		if (k > BIG - off)
			k = BIG - off;
		fill_pattern(out, k, off);
		if (wr_full(fd, out, k) < 0) {
			why = strerrorname_np(errno);
			break;
		}
		if (rd_full(fd, in, k, &why) != k || !check_pattern(in, k, off))
			ok = 0;
		off += k;
	}
	printf("%-34s sent %llu intact %d %s\n", label, (unsigned long long)off, ok, why);
	fflush(stdout);
}

static int mode_fork_parent_closes(void)
{
	int c, s;
	pair(0, 0, &c, &s);
	SHOW("write before fork", write(c, "pre-fork", 8));
	pid_t pid = xfork();
	if (pid == 0) { /* the child serves the connection */
		close(c);
		echo_until_eof(s);
		_exit(0);
	}
	SHOW("parent closes its server copy", close(s));
	char b[8];
	const char *why;
	size_t got = rd_full(c, b, 8, &why);
	printf("%-34s %zu %s [%.*s]\n", "echo of pre-fork data", got, why, (int)got, b);
	lockstep_echo("echo through the child", c);
	SHOW("shutdown write", shutdown(c, SHUT_WR));
	expect_eof("after child closed", c);
	show_status("child", pid);
	close(c);
	return 0;
}

static int mode_fork_child_closes(void)
{
	int c, s;
	pair(0, 0, &c, &s);
	hop("before fork", c, s, "one");
	pid_t pid = xfork();
	if (pid == 0) { /* a helper that lets go of every inherited socket */
		close(c);
		close(s);
		_exit(0);
	}
	show_status("child", pid);
	hop("after child closed: c->s", c, s, "two");
	hop("after child closed: s->c", s, c, "three");
	pid = xfork();
	if (pid == 0) /* a child that leaves without closing */
		_exit(0);
	show_status("child exits holding", pid);
	hop("after child exit: c->s", c, s, "four");
	hop("after child exit: s->c", s, c, "five");
	SHOW("close s", close(s));
	expect_eof("c after close s", c);
	close(c);
	return 0;
}

/* ---- fork: both processes use the connection ---- */

/* The parent writes, a child reads the responses (echoed by a server child). */
static int mode_fork_split(void)
{
	int c, s;
	pair(0, 0, &c, &s);
	pid_t srv = xfork();
	if (srv == 0) {
		close(c);
		echo_until_eof(s);
		_exit(0);
	}
	close(s);
	pid_t rdr = xfork();
	if (rdr == 0) {
		static unsigned char in[65536];
		uint64_t off = 0;
		int ok = 1;
		const char *why = "ok";
		while (off < BIG) {
			size_t k = sizeof(in) < BIG - off ? sizeof(in) : BIG - off;
			size_t got = rd_full(c, in, k, &why);
			ok &= check_pattern(in, got, off);
			off += got;
			if (got < k)
				break;
		}
		printf("%-34s %llu intact %d %s\n", "reader child got", (unsigned long long)off, ok,
		       why);
		expect_eof("reader child then", c);
		_exit(0);
	}
	static unsigned char out[65536];
	uint64_t off = 0;
	int w = 0;
	while (off < BIG && w == 0) {
		size_t k = 1 + (off * 7919) % sizeof(out);
		if (k > BIG - off)
			k = BIG - off;
		fill_pattern(out, k, off);
		w = wr_full(c, out, k);
		off += k;
	}
	shutdown(c, SHUT_WR);
	show_status("reader child", rdr);
	printf("%-34s %llu %d\n", "parent wrote", (unsigned long long)off, w);
	close(c);
	show_status("server child", srv);
	return 0;
}

/* A record: 'P' or 'C', a sequence number, a size-dependent filler. */
static size_t rec_size(unsigned i) { return 8 + (i * 37) % 500; }

static void rec_fill(unsigned char *b, char who, unsigned i)
{
	size_t n = rec_size(i);
	memset(b, (unsigned char)('a' + i % 26), n);
	b[0] = (unsigned char)who;
	memcpy(b + 1, &i, 4);
}

static int rec_ok(const unsigned char *b, char who, unsigned i)
{
	unsigned char want[512];
	rec_fill(want, who, i);
	return memcmp(b, want, rec_size(i)) == 0;
}

#define ROUNDS 1000

static void token_wait(int fd)
{
	char t;
	while (read(fd, &t, 1) < 0 && errno == EINTR)
		;
}

/* Parent and child write in turn, ordered by a token on two pipes; a server
 * child checks that the records arrive whole, once, in turn order. */
static int mode_fork_alt_write(void)
{
	int c, s, p2c[2], c2p[2];
	pair(0, 0, &c, &s);
	pid_t srv = xfork();
	if (srv == 0) {
		close(c);
		unsigned char b[512];
		unsigned n = 0, good = 0;
		const char *why = "ok";
		for (unsigned i = 0; i < 2 * ROUNDS; i++) {
			if (rd_full(s, b, rec_size(i), &why) != rec_size(i))
				break;
			n++;
			good += rec_ok(b, i % 2 ? 'C' : 'P', i);
		}
		printf("%-34s %u in order %u %s\n", "server got records", n, good, why);
		expect_eof("server then", s);
		_exit(0);
	}
	close(s);
	if (pipe(p2c) || pipe(c2p))
		die("pipe");
	pid_t kid = xfork();
	unsigned char b[512];
	if (kid == 0) {
		int bad = 0;
		for (unsigned i = 1; i < 2 * ROUNDS; i += 2) {
			token_wait(p2c[0]);
			rec_fill(b, 'C', i);
			bad |= wr_full(c, b, rec_size(i));
			if (write(c2p[1], "t", 1) != 1)
				bad = 1;
		}
		close(c);
		_exit(bad);
	}
	int bad = 0;
	for (unsigned i = 0; i < 2 * ROUNDS; i += 2) {
		rec_fill(b, 'P', i);
		bad |= wr_full(c, b, rec_size(i));
		if (write(p2c[1], "t", 1) != 1)
			bad = 1;
		token_wait(c2p[0]);
	}
	show_status("writer child", kid);
	SHOW("parent write errors", bad);
	close(c);
	show_status("server child", srv);
	return 0;
}

/* A server child writes records; parent and child read them in turn. */
static int mode_fork_alt_read(void)
{
	int c, s, p2c[2], c2p[2];
	pair(0, 0, &c, &s);
	pid_t srv = xfork();
	if (srv == 0) {
		close(c);
		unsigned char b[512];
		int bad = 0;
		for (unsigned i = 0; i < 2 * ROUNDS && !bad; i++) {
			rec_fill(b, i % 2 ? 'C' : 'P', i);
			bad = wr_full(s, b, rec_size(i));
		}
		close(s);
		_exit(bad);
	}
	close(s);
	if (pipe(p2c) || pipe(c2p))
		die("pipe");
	pid_t kid = xfork();
	unsigned char b[512];
	const char *why = "ok";
	if (kid == 0) {
		unsigned good = 0;
		for (unsigned i = 1; i < 2 * ROUNDS; i += 2) {
			token_wait(p2c[0]);
			if (rd_full(c, b, rec_size(i), &why) == rec_size(i))
				good += rec_ok(b, 'C', i);
			if (write(c2p[1], "t", 1) != 1)
				break;
		}
		printf("%-34s %u %s\n", "child read records in turn", good, why);
		fflush(stdout);
		close(c);
		_exit(0);
	}
	unsigned good = 0;
	for (unsigned i = 0; i < 2 * ROUNDS; i += 2) {
		if (rd_full(c, b, rec_size(i), &why) == rec_size(i))
			good += rec_ok(b, 'P', i);
		if (write(p2c[1], "t", 1) != 1)
			break;
		token_wait(c2p[0]);
	}
	show_status("reader child", kid);
	printf("%-34s %u %s\n", "parent read records in turn", good, why);
	expect_eof("parent then", c);
	close(c);
	show_status("server child", srv);
	return 0;
}

/* ---- threads sharing one socket ---- */

#define NTHREADS 4
#define TBYTES (4u << 20)

struct treader {
	int fd, idx;
	uint64_t total;
	uint64_t hist[256];
	int err;
};

static void *reader_thread(void *arg)
{
	struct treader *t = arg;
	unsigned char buf[4096];
	unsigned seed = (unsigned)t->idx;
	for (;;) {
		size_t want = 1 + (seed = seed * 1103515245u + 12345u) % sizeof(buf);
		ssize_t r = read(t->fd, buf, want);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			t->err = errno;
		if (r <= 0)
			break;
		t->total += (uint64_t)r;
		for (ssize_t i = 0; i < r; i++)
			t->hist[buf[i]]++;
	}
	return NULL;
}

static int mode_threads_read(void)
{
	int c, s;
	pair(0, 0, &c, &s);
	static struct treader t[NTHREADS];
	pthread_t th[NTHREADS];
	for (int i = 0; i < NTHREADS; i++) {
		t[i].fd = s;
		t[i].idx = i;
		pthread_create(&th[i], NULL, reader_thread, &t[i]);
	}
	static unsigned char out[8192];
	uint64_t want[256] = {0};
	uint64_t off = 0;
	int w = 0;
	while (off < TBYTES && w == 0) {
		size_t k = 1 + (off * 7919) % sizeof(out);
		if (k > TBYTES - off)
			k = TBYTES - off;
		fill_pattern(out, k, off);
		for (size_t i = 0; i < k; i++)
			want[out[i]]++;
		w = wr_full(c, out, k);
		off += k;
	}
	SHOW("writer done", w);
	SHOW("shutdown write", shutdown(c, SHUT_WR));
	uint64_t total = 0, hist[256] = {0};
	int errs = 0;
	for (int i = 0; i < NTHREADS; i++) {
		pthread_join(th[i], NULL);
		total += t[i].total;
		errs += t[i].err != 0;
		for (int b = 0; b < 256; b++)
			hist[b] += t[i].hist[b];
	}
	printf("%-34s %llu of %llu, byte counts equal %d, errors %d\n", "readers got",
	       (unsigned long long)total, (unsigned long long)off,
	       memcmp(hist, want, sizeof(hist)) == 0, errs);
	close(c);
	close(s);
	return 0;
}

#define WRECS 3000

struct twriter {
	int fd, id, short_writes, errs;
};

struct whdr {
	uint16_t magic;
	uint8_t writer, pad;
	uint32_t seq, len;
};

static size_t wlen(int id, unsigned seq) { return (seq * 31u + (unsigned)id * 7u) % 500u; }

static void *writer_thread(void *arg)
{
	struct twriter *t = arg;
	unsigned char b[512];
	for (unsigned seq = 0; seq < WRECS; seq++) {
		struct whdr h = {0xf17c, (uint8_t)t->id, 0, seq, (uint32_t)wlen(t->id, seq)};
		memcpy(b, &h, sizeof(h));
		for (size_t j = 0; j < h.len; j++)
			b[sizeof(h) + j] = (unsigned char)(t->id * 13 + seq + j);
		size_t n = sizeof(h) + h.len;
		ssize_t r = write(t->fd, b, n);
		if (r < 0 && errno == EINTR) {
			seq--;
			continue;
		}
		if (r < 0) {
			t->errs++;
			break;
		}
		if ((size_t)r != n) { /* keep the stream whole; count it */
			t->short_writes++;
			if (wr_full(t->fd, b + r, n - (size_t)r) < 0)
				break;
		}
	}
	return NULL;
}

static int mode_threads_write(void)
{
	int c, s;
	pair(0, 0, &c, &s);
	static struct twriter t[NTHREADS];
	pthread_t th[NTHREADS];
	for (int i = 0; i < NTHREADS; i++) {
		t[i] = (struct twriter){.fd = c, .id = i};
		pthread_create(&th[i], NULL, writer_thread, &t[i]);
	}
	/* the reader is this thread; the writers finish, then shut down */
	unsigned next[NTHREADS] = {0}, records = 0, bad = 0;
	unsigned char b[512];
	const char *why = "ok";
	for (;;) {
		struct whdr h;
		size_t got = rd_full(s, &h, sizeof(h), &why);
		if (got != sizeof(h))
			break;
		if (h.magic != 0xf17c || h.writer >= NTHREADS || h.len >= 512 - sizeof(h)) {
			bad++;
			break;
		}
		if (rd_full(s, b, h.len, &why) != h.len) {
			bad++;
			break;
		}
		int ok = h.seq == next[h.writer] && h.len == wlen(h.writer, h.seq);
		for (size_t j = 0; ok && j < h.len; j++)
			ok = b[j] == (unsigned char)(h.writer * 13 + h.seq + j);
		bad += !ok;
		next[h.writer] = h.seq + 1;
		if (++records == NTHREADS * WRECS) {
			int shorts = 0, errs = 0;
			for (int i = 0; i < NTHREADS; i++) {
				pthread_join(th[i], NULL);
				shorts += t[i].short_writes;
				errs += t[i].errs;
			}
			printf("%-34s short %d errors %d\n", "writers done", shorts, errs);
			shutdown(c, SHUT_WR);
		}
	}
	printf("%-34s %u bad %u end %s\n", "reader got whole records", records, bad, why);
	int inorder = 1;
	for (int i = 0; i < NTHREADS; i++)
		inorder &= next[i] == WRECS;
	printf("%-34s %d\n", "every writer complete and in order", inorder);
	close(c);
	close(s);
	return 0;
}

/* ---- exec ---- */

/* The exec'd program: read what the parent sent, echo it back, exit. */
static int mode_exec_child(int fd)
{
	char b[64];
	const char *why;
	size_t got = rd_full(fd, b, 21, &why);
	printf("%-34s %zu %s [%.*s]\n", "exec'd child read", got, why, (int)got, b);
	char out[80];
	int n = snprintf(out, sizeof(out), "echo:%.*s", (int)got, b);
	SHOW("exec'd child write", wr_full(fd, out, (size_t)n));
	SHOW("exec'd child close", close(fd));
	return 0;
}

static pid_t spawn_self(const char *mode, int fd)
{
	char fds[16];
	snprintf(fds, sizeof(fds), "%d", fd);
	pid_t pid = xfork();
	if (pid == 0) {
		char *argv[] = {(char *)"procmodel", (char *)ipv_arg, (char *)mode, fds, NULL};
		execv(self_exe, argv);
		_exit(127);
	}
	return pid;
}

/* An accelerated fd that survives exec: the new program uses it, including
 * bytes that were sent before the exec and not yet read. */
static int mode_exec(void)
{
	int c, s;
	pair(SOCK_CLOEXEC, 0, &c, &s);
	show_cloexec("server fd cloexec", s);
	SHOW("write before exec", write(c, "before-exec", 11));
	pid_t pid = spawn_self("exec-child", s);
	SHOW("parent closes server fd", close(s));
	SHOW("write after exec", write(c, "after-exec", 10));
	char b[64];
	const char *why;
	size_t got = rd_full(c, b, 26, &why);
	/* the child prints too: let it finish before we print, for one order */
	fflush(stdout);
	show_status("exec'd child", pid);
	printf("%-34s %zu %s [%.*s]\n", "reply", got, why, (int)got, b);
	expect_eof("then", c);
	close(c);
	return 0;
}

static int mode_cloexec_child(int fd)
{
	show_cloexec("exec'd child: fd after exec", fd);
	show_cloexec("exec'd child: copy after exec", 300);
	return 0;
}

/* ---- close_range ---- */

/* A daemon-style closefrom(3) between two connections: the second is as
 * good as the first (the library keeps what it needs open). */
static int mode_closefrom(void)
{
	int c, s;
	pair(0, 0, &c, &s);
	hop("first conn c->s", c, s, "one");
	closefrom(3);
	SHOW("old fd after closefrom", fcntl(c, F_GETFD));
	pair(0, 0, &c, &s);
	hop("second conn c->s", c, s, "two");
	hop("second conn s->c", s, c, "back");
	close(c);
	expect_eof("then", s);
	close(s);
	return 0;
}

static int mode_close_range(void)
{
	int c, s, c2, s2, c3, s3;
	pair(0, 0, &c, &s);
	for (int i = 0; i < 3; i++)
		SHOW("F_DUPFD copy at 300+", fcntl(s, F_DUPFD, 300 + i) - 300);
	SHOW("close_range copies", close_range(300, 302, 0));
	show_cloexec("copy after close_range", 301);
	hop("orig still: c->s", c, s, "alive");
	hop("orig still: s->c", s, c, "yes");
	/* a new connection lands on a number close_range freed */
	pair(0, 0, &c2, &s2);
	SHOW("new conn at a freed number", fcntl(s2, F_DUPFD, 300) - 300);
	close(s2);
	hop("new conn via 300: c2->s2", c2, 300, "new");
	hop("new conn via 300: s2->c2", 300, c2, "conn");
	hop("old conn unaffected", c, s, "old");
	/* close_range over the last reference: the peer sees EOF */
	SHOW("close_range last ref", close_range(s, s, 0));
	expect_eof("peer after close_range", c);
	SHOW("close 300", close(300));
	expect_eof("conn2 peer after close", c2);
	/* and a third connection reuses what is free */
	close(c);
	close(c2);
	pair(0, 0, &c3, &s3);
	hop("third conn c->s", c3, s3, "third");
	hop("third conn s->c", s3, c3, "works");
	close(c3);
	close(s3);
	return 0;
}

static int mode_close_range_cloexec(void)
{
	int c, s;
	pair(SOCK_CLOEXEC, 0, &c, &s);
	SHOW("F_DUPFD copy at 300", fcntl(s, F_DUPFD, 300) - 300);
	hop("before: c->s", c, s, "before");
	SHOW("close_range CLOEXEC fd", close_range(s, s, CLOSE_RANGE_CLOEXEC));
	SHOW("close_range CLOEXEC copy", close_range(300, 300, CLOSE_RANGE_CLOEXEC));
	show_cloexec("fd now", s);
	show_cloexec("copy now", 300);
	pid_t pid = spawn_self("cloexec-child", s);
	show_status("exec'd child", pid);
	hop("after exec: c->s", c, s, "after");
	hop("after exec: s->copy", 300, c, "exec");
	SHOW("close fd", close(s));
	hop("via copy", c, 300, "copy");
	SHOW("close copy", close(300));
	expect_eof("peer after last close", c);
	close(c);
	return 0;
}

/* ---- posix_spawn and vfork children that only exec ---- */

static int run_true(int use_vfork)
{
	char *argv[] = {(char *)"true", NULL};
	pid_t pid;
	fflush(NULL);
	if (use_vfork) {
		pid = vfork();
		if (pid == 0) {
			execv("/bin/true", argv);
			_exit(127);
		}
	} else {
		int r = posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ);
		if (r) {
			errno = r;
			return -1;
		}
	}
	if (pid < 0)
		return -1;
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int mode_spawn(int use_vfork)
{
	int c1, s1, c2, s2;
	pair(SOCK_CLOEXEC, SOCK_CLOEXEC, &c1, &s1);
	pair(0, 0, &c2, &s2);
	hop("cloexec conn before", c1, s1, "one");
	hop("inherited conn before", c2, s2, "two");
	SHOW(use_vfork ? "vfork+execv /bin/true" : "posix_spawn /bin/true", run_true(use_vfork));
	hop("cloexec conn after: c->s", c1, s1, "three");
	hop("cloexec conn after: s->c", s1, c1, "four");
	hop("inherited conn after: c->s", c2, s2, "five");
	hop("inherited conn after: s->c", s2, c2, "six");
	SHOW("again", run_true(use_vfork));
	hop("cloexec conn again", s1, c1, "seven");
	hop("inherited conn again", c2, s2, "eight");
	SHOW("close s1", close(s1));
	expect_eof("c1 then", c1);
	SHOW("close c2", close(c2));
	expect_eof("s2 then", s2);
	close(c1);
	close(s2);
	return 0;
}

static int mode_posix_spawn(void) { return mode_spawn(0); }
static int mode_vfork(void) { return mode_spawn(1); }

/* ---- a signal during a blocking read ---- */

static volatile sig_atomic_t alarms;
static void on_alarm(int sig) { (void)sig; alarms++; }

static int late_fd;
static void *late_writer(void *arg)
{
	(void)arg;
	usleep(400000);
	if (write(late_fd, "late", 4) != 4)
		perror("write");
	return NULL;
}

/* SIGALRM arrives 100 ms into a blocking read (or recv) that data ends
 * 400 ms in: with SA_RESTART the call goes on and returns the data, without
 * it the call fails with EINTR and the next one returns the data. */
static int mode_signal(int restart, int use_recv)
{
	int c, s;
	pair(0, 0, &c, &s);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGALRM);
	pthread_sigmask(SIG_BLOCK, &m, NULL); /* the writer thread never takes it */
	late_fd = c;
	pthread_t th;
	pthread_create(&th, NULL, late_writer, NULL);
	pthread_sigmask(SIG_UNBLOCK, &m, NULL);
	struct sigaction sa = {.sa_handler = on_alarm, .sa_flags = restart ? SA_RESTART : 0};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval it = {.it_value = {.tv_usec = 100000}};
	setitimer(ITIMER_REAL, &it, NULL);
	char b[16] = {0};
	ssize_t r = use_recv ? recv(s, b, sizeof(b), 0) : read(s, b, sizeof(b));
	SHOW(use_recv ? "blocking recv" : "blocking read", r);
	printf("%-34s %d\n", "alarms so far", (int)alarms);
	if (r < 0) {
		r = use_recv ? recv(s, b, sizeof(b), 0) : read(s, b, sizeof(b));
		SHOW("again", r);
	}
	printf("%-34s [%.*s]\n", "data", r > 0 ? (int)r : 0, b);
	pthread_join(th, NULL);
	close(c);
	close(s);
	return 0;
}

static int mode_signal_restart_read(void) { return mode_signal(1, 0); }
static int mode_signal_restart_recv(void) { return mode_signal(1, 1); }
static int mode_signal_eintr_read(void) { return mode_signal(0, 0); }
static int mode_signal_eintr_recv(void) { return mode_signal(0, 1); }

static const struct {
	const char *name;
	int (*fn)(void);
} MODES[] = {
	{"dup", mode_dup},
	{"fork-parent-closes", mode_fork_parent_closes},
	{"fork-child-closes", mode_fork_child_closes},
	{"fork-split", mode_fork_split},
	{"fork-alt-write", mode_fork_alt_write},
	{"fork-alt-read", mode_fork_alt_read},
	{"threads-read", mode_threads_read},
	{"threads-write", mode_threads_write},
	{"exec", mode_exec},
	{"close-range", mode_close_range},
	{"close-range-cloexec", mode_close_range_cloexec},
	{"closefrom", mode_closefrom},
	{"posix-spawn", mode_posix_spawn},
	{"vfork", mode_vfork},
	{"signal-restart-read", mode_signal_restart_read},
	{"signal-restart-recv", mode_signal_restart_recv},
	{"signal-eintr-read", mode_signal_eintr_read},
	{"signal-eintr-recv", mode_signal_eintr_recv},
};

int main(int argc, char **argv)
{
	if (argc < 3)
		goto usage;
	ipv_arg = argv[1];
	v6 = argv[1][0] == '6';
	self_exe = "/proc/self/exe";
	static char exe[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = 0;
		self_exe = exe;
	}
	signal(SIGPIPE, SIG_IGN);
	if (!strcmp(argv[2], "exec-child") && argc > 3)
		return mode_exec_child(atoi(argv[3]));
	if (!strcmp(argv[2], "cloexec-child") && argc > 3)
		return mode_cloexec_child(atoi(argv[3]));
	if (!strcmp(argv[2], "list")) {
		for (size_t i = 0; i < sizeof(MODES) / sizeof(MODES[0]); i++)
			printf("%s\n", MODES[i].name);
		return 0;
	}
	for (size_t i = 0; i < sizeof(MODES) / sizeof(MODES[0]); i++)
		if (!strcmp(argv[2], MODES[i].name))
			return MODES[i].fn();
usage:
	fprintf(stderr, "usage: procmodel 4|6 MODE|list\n");
	return 2;
}
