/* Soak (issue 13, make soak): randomized traffic over many connections,
 * every byte checked.  A plain socket program: it knows nothing of fastivc
 * except that, under it, it asks the library how many of its connections
 * are on the fabric (fastivc_fork_stats through dlsym).
 *
 *   soak both   HOST PORT GIB CONNS WORKERS SEED
 *   soak server HOST PORT GIB CONNS WORKERS SEED
 *   soak client HOST PORT GIB CONNS WORKERS SEED
 *
 * The client opens CONNS connections, then forks WORKERS processes that
 * all inherit every connection (shared sides) and each keep every
 * WORKERS-th one (the others closed: back to one holder); now and then a
 * worker hands one connection to a child of its own (fork, the parent lets
 * go).  It uses blocking sockets with poll: write, send, writev, sendmsg
 * of random sizes (1 B .. 1 MiB, log-uniform), MSG_DONTWAIT sometimes;
 * read, recv, readv, recvmsg, MSG_PEEK (checked against the read that
 * follows) and MSG_WAITALL.  The server is one epoll loop over
 * non-blocking sockets.  Each direction of each connection carries
 * GIB/(2*CONNS) GiB of a stream that is a function of (SEED, connection,
 * direction, offset), then shutdown(SHUT_WR); the reader checks every byte
 * and the length at EOF.  A connection's first 8 bytes name it.
 *
 * Each process prints one JSON line: bytes checked, corrupt bytes, wrong
 * lengths.  Exit 0 only when every byte was right; 3 when nothing moved
 * for 20 s (a hang). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "onfabric.h"

#define MAXCONN 4096
#define BUF (1u << 20)
#define STALL_MS 20000

static uint64_t seed, quota_all;

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* byte `off` of the stream of connection id, direction dir (0: c->s) */
static void stream_fill(uint8_t *p, uint64_t id, int dir, uint64_t off, size_t n)
{
	uint64_t key = mix(seed ^ (id << 1 | (uint64_t)dir));
	for (size_t k = 0; k < n;) {
		uint64_t w = mix(key + ((off + k) >> 3));
		unsigned b = (unsigned)((off + k) & 7);
		for (; b < 8 && k < n; b++, k++)
			p[k] = (uint8_t)(w >> (8 * b));
	}
}

static uint64_t rnd_state = 1;
static uint64_t rnd(void) { return rnd_state = mix(rnd_state); }

/* log-uniform 1 .. 1 MiB */
static size_t rnd_size(void) { return 1 + (size_t)(rnd() % ((size_t)1 << (rnd() % 21))); }

struct conn {
	int fd;
	uint64_t id;
	uint64_t sent, recvd, quota; /* stream bytes, after the 8-byte name */
	int named, hdr_got;          /* client: name sent; server: bytes of it read */
	uint8_t hdr[8];
	int wr_done, rd_done;
};

static struct conn conns[MAXCONN];
static int nconns;
static uint64_t checked, corrupt, badlen;
static uint8_t *wbuf, *rbuf, *pbuf, *ebuf;

static uint64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

static void verify(struct conn *c, int dir, const uint8_t *p, size_t n)
{
	if (c->recvd + n > c->quota) {
		badlen++;
		n = c->recvd < c->quota ? (size_t)(c->quota - c->recvd) : 0;
	}
	stream_fill(ebuf, c->id, dir, c->recvd, n);
	for (size_t k = 0; k < n; k++)
		corrupt += p[k] != ebuf[k];
	c->recvd += n;
	checked += n;
}

/* one write of a random size and kind; returns bytes or -1 (errno) */
static ssize_t do_write(struct conn *c, int dir, int nonblock)
{
	if (!c->named) {
		uint8_t name[8];
		memcpy(name, &c->id, 8);
		ssize_t r = send(c->fd, name, 8, MSG_NOSIGNAL);
		if (r == 8)
			c->named = 1;
		return r < 0 ? -1 : 0; /* (a partial name: the socket is broken) */
	}
	size_t n = rnd_size();
	if (n > c->quota - c->sent)
		n = (size_t)(c->quota - c->sent);
	stream_fill(wbuf, c->id, dir, c->sent, n);
	int flags = MSG_NOSIGNAL | (nonblock || rnd() % 4 == 0 ? MSG_DONTWAIT : 0);
	ssize_t r;
	switch (rnd() % 4) {
	case 0:
		r = flags & MSG_DONTWAIT ? send(c->fd, wbuf, n, flags) : write(c->fd, wbuf, n);
		break;
	case 1:
		r = send(c->fd, wbuf, n, flags);
		break;
	default: {
		struct iovec iov[3];
		size_t a = n / 3, b = n / 2;
		iov[0] = (struct iovec){wbuf, a};
		iov[1] = (struct iovec){wbuf + a, b - a};
		iov[2] = (struct iovec){wbuf + b, n - b};
		if (rnd() % 2 && !(flags & MSG_DONTWAIT)) {
			r = writev(c->fd, iov, 3);
		} else {
			struct msghdr m = {.msg_iov = iov, .msg_iovlen = 3};
			r = sendmsg(c->fd, &m, flags);
		}
	}
	}
	if (r > 0)
		c->sent += (uint64_t)r;
	if (c->sent == c->quota && !c->wr_done) {
		shutdown(c->fd, SHUT_WR);
		c->wr_done = 1;
	}
	return r;
}

/* one read of a random size and kind; 0 at EOF, -1 (errno) */
static ssize_t do_read(struct conn *c, int dir, int nonblock)
{
	size_t n = rnd_size();
	int dw = nonblock ? MSG_DONTWAIT : 0;
	ssize_t r;
	if (rnd() % 8 == 0) { /* a peek, then the read must give the same bytes */
		r = recv(c->fd, pbuf, n, MSG_PEEK | dw);
		if (r <= 0)
			return r;
		ssize_t g = recv(c->fd, rbuf, (size_t)r, MSG_DONTWAIT);
		if (g != r || memcmp(pbuf, rbuf, (size_t)r)) {
			corrupt += (uint64_t)r; /* MSG_PEEK and the read disagree */
			if (g <= 0)
				return g;
		}
		verify(c, dir, rbuf, (size_t)g);
		return g;
	}
	uint64_t left = c->quota - c->recvd;
	switch (rnd() % 5) {
	case 0:
		r = nonblock ? recv(c->fd, rbuf, n, dw) : read(c->fd, rbuf, n);
		break;
	case 1:
		r = recv(c->fd, rbuf, n, dw);
		break;
	case 2: /* WAITALL, for no more than the stream still owes */
		if (!nonblock && left) {
			r = recv(c->fd, rbuf, n < left ? n : (size_t)left, MSG_WAITALL);
			break;
		}
		/* fall through */
	default: {
		struct iovec iov[2] = {{rbuf, n / 2}, {rbuf + n / 2, n - n / 2}};
		if (rnd() % 2 && !nonblock) {
			r = readv(c->fd, iov, 2);
		} else {
			struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
			r = recvmsg(c->fd, &m, dw);
		}
	}
	}
	if (r > 0)
		verify(c, dir, rbuf, (size_t)r);
	if (r == 0) {
		if (c->recvd != c->quota)
			badlen++;
		c->rd_done = 1;
	}
	return r;
}

static void report(const char *role, double secs, long fab)
{
	printf("{\"role\": \"%s\", \"pid\": %d, \"checked\": %llu, \"corrupt\": %llu, "
	       "\"bad_lengths\": %llu, \"seconds\": %.2f, \"on_fabric\": %ld}\n",
	       role, (int)getpid(), (unsigned long long)checked, (unsigned long long)corrupt,
	       (unsigned long long)badlen, secs, fab);
	fflush(stdout);
}

static int finished(const struct conn *c) { return c->wr_done && c->rd_done; }

/* ---- client ---- */

/* A worker runs the connections it holds to the end, blocking sockets. */
static int client_worker(int handoffs_left, const char *role)
{
	uint64_t t0 = now_ms(), last = t0, handed = t0;
	long fab = on_fabric();
	int fab_seen = 0;
	pid_t kids[8];
	int nkids = 0;
	for (;;) {
		struct pollfd p[MAXCONN];
		int map[MAXCONN], n = 0;
		for (int i = 0; i < nconns; i++) {
			struct conn *c = &conns[i];
			if (c->fd < 0 || finished(c))
				continue;
			p[n] = (struct pollfd){.fd = c->fd,
					       .events = (short)((c->rd_done ? 0 : POLLIN) |
								 (c->wr_done ? 0 : POLLOUT))};
			map[n++] = i;
		}
		if (!n)
			break;
		if (!fab_seen && now_ms() - t0 > 200) { /* past the upgrade: all switched */
			fab = on_fabric();
			fab_seen = 1;
		}
		int r = poll(p, (nfds_t)n, 1000);
		if (r < 0 && errno != EINTR)
			return 2;
		if (r <= 0) {
			if (now_ms() - last > STALL_MS) {
				fprintf(stderr, "soak %s: nothing moved for %d s\n", role, STALL_MS / 1000);
				return 3;
			}
			continue;
		}
		last = now_ms();
		for (int k = 0; k < n; k++) {
			struct conn *c = &conns[map[k]];
			if ((p[k].revents & (POLLIN | POLLHUP | POLLERR)) && !c->rd_done &&
			    do_read(c, 1, 0) < 0 && errno != EAGAIN && errno != EINTR) {
				fprintf(stderr, "soak %s: read conn %llu: %s\n", role,
					(unsigned long long)c->id, strerror(errno));
				return 2;
			}
			if ((p[k].revents & POLLOUT) && !c->wr_done && do_write(c, 0, 0) < 0 &&
			    errno != EAGAIN && errno != EINTR) {
				fprintf(stderr, "soak %s: write conn %llu: %s\n", role,
					(unsigned long long)c->id, strerror(errno));
				return 2;
			}
		}
		/* now and then one connection goes to a child of ours */
		if (handoffs_left && nkids < 8 && now_ms() - handed > 100 + rnd() % 200) {
			handed = now_ms();
			int pick = map[rnd() % (uint64_t)n];
			if (finished(&conns[pick]))
				continue;
			handoffs_left--;
			fflush(stdout);
			pid_t pid = fork();
			if (pid == 0) {
				for (int i = 0; i < nconns; i++)
					if (i != pick && conns[i].fd >= 0) {
						close(conns[i].fd);
						conns[i].fd = -1;
					}
				checked = corrupt = badlen = 0;
				_exit(client_worker(0, "client-child"));
			}
			if (pid > 0) {
				kids[nkids++] = pid;
				close(conns[pick].fd);
				conns[pick].fd = -1;
			}
		}
	}
	int rc = 0;
	for (int k = 0; k < nkids; k++) {
		int st;
		waitpid(kids[k], &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			rc = rc ? rc : 4;
	}
	report(role, (double)(now_ms() - t0) / 1000, fab);
	return rc ? rc : (corrupt || badlen) ? 1 : 0;
}

static int resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *ai;
	char ps[16];
	snprintf(ps, sizeof(ps), "%d", port);
	if (getaddrinfo(host, ps, &hints, &ai))
		return -1;
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

static int client(const char *host, int port, int workers)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (resolve(host, port, &ss, &len))
		return 2;
	for (int i = 0; i < nconns; i++) {
		int fd = socket(ss.ss_family, SOCK_STREAM, 0);
		int tries = 0;
		while (connect(fd, (struct sockaddr *)&ss, len) < 0) {
			if (errno != ECONNREFUSED || ++tries > 100) {
				fprintf(stderr, "soak client: connect: %s\n", strerror(errno));
				return 2;
			}
			close(fd);
			usleep(50000);
			fd = socket(ss.ss_family, SOCK_STREAM, 0);
		}
		conns[i].fd = fd;
	}
	/* WORKERS processes inherit every connection, then each keeps its own */
	pid_t pids[64];
	int nw = workers < 1 ? 1 : workers > 64 ? 64 : workers;
	fflush(stdout);
	for (int w = 0; w < nw; w++) {
		pid_t pid = nw == 1 ? 0 : fork();
		if (pid == 0) {
			rnd_state = mix(seed + 1000 + (uint64_t)w);
			for (int i = 0; i < nconns; i++)
				if (i % nw != w) {
					close(conns[i].fd);
					conns[i].fd = -1;
				}
			/* SOAK_HANDOFFS=0: no connection handed to a child (README:
			 * a known corruption after such a hand-off) */
			const char *h = getenv("SOAK_HANDOFFS");
			int rc = client_worker(h ? atoi(h) : 4, "client");
			if (nw == 1)
				return rc;
			_exit(rc);
		}
		pids[w] = pid;
	}
	for (int i = 0; i < nconns; i++)
		close(conns[i].fd);
	int rc = 0;
	for (int w = 0; w < nw; w++) {
		int st;
		waitpid(pids[w], &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			rc = rc ? rc : WIFEXITED(st) ? WEXITSTATUS(st) : 5;
	}
	return rc;
}

/* ---- server: one epoll loop, non-blocking ---- */

static int server(int ls)
{
	uint64_t t0 = now_ms(), last = t0;
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	int accepted = 0, done = 0, named = 0;
	long fab = -1;
	struct epoll_event evs[256];
	while (done < nconns) {
		int n = epoll_wait(ep, evs, 256, 1000);
		if (n < 0 && errno != EINTR)
			return 2;
		if (n <= 0) {
			if (now_ms() - last > STALL_MS) {
				fprintf(stderr, "soak server: nothing moved for %d s\n", STALL_MS / 1000);
				return 3;
			}
			continue;
		}
		last = now_ms();
		for (int k = 0; k < n; k++) {
			if (evs[k].data.u64 == UINT64_MAX) {
				int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
				if (fd < 0)
					continue;
				struct conn *c = &conns[accepted++];
				memset(c, 0, sizeof(*c));
				c->fd = fd;
				c->named = 1;
				ev = (struct epoll_event){.events = EPOLLIN | EPOLLOUT,
							  .data.u64 = (uint64_t)(c - conns)};
				epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
				if (accepted == nconns)
					epoll_ctl(ep, EPOLL_CTL_DEL, ls, NULL);
				continue;
			}
			struct conn *c = &conns[evs[k].data.u64];
			if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
				if (c->hdr_got < 8) {
					ssize_t r = recv(c->fd, c->hdr + c->hdr_got, 8 - (size_t)c->hdr_got, 0);
					if (r > 0 && (c->hdr_got += (int)r) == 8) {
						memcpy(&c->id, c->hdr, 8);
						c->quota = quota_all;
						if (++named == nconns) {
							fab = on_fabric(); /* all named: none closed yet */
							for (int j = 0; j < accepted; j++)
								if (finished(&conns[j]) && conns[j].fd >= 0) {
									close(conns[j].fd);
									conns[j].fd = -1;
									done++;
								}
						}
					} else if (r == 0) {
						badlen++;
						c->rd_done = 1;
					}
				} else if (!c->rd_done && do_read(c, 0, 1) < 0 && errno != EAGAIN) {
					fprintf(stderr, "soak server: read: %s\n", strerror(errno));
					return 2;
				}
			}
			if ((evs[k].events & EPOLLOUT) && c->hdr_got == 8 && !c->wr_done &&
			    do_write(c, 1, 1) < 0 && errno != EAGAIN) {
				fprintf(stderr, "soak server: write: %s\n", strerror(errno));
				return 2;
			}
			if (c->wr_done && !(c->rd_done)) {
				ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = evs[k].data.u64};
				epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
			}
			/* (closed only once every connection was named and counted:
			 * a closed one would be missing from on_fabric) */
			if (finished(c) && c->fd >= 0 && named == nconns) {
				close(c->fd);
				c->fd = -1;
				done++;
			}
		}
	}
	report("server", (double)(now_ms() - t0) / 1000, fab);
	return (corrupt || badlen) ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc != 8) {
		fprintf(stderr, "usage: soak both|server|client HOST PORT GIB CONNS WORKERS SEED\n");
		return 2;
	}
	const char *mode = argv[1], *host = argv[2];
	int port = atoi(argv[3]);
	double gib = strtod(argv[4], NULL);
	nconns = atoi(argv[5]);
	int workers = atoi(argv[6]);
	seed = strtoull(argv[7], NULL, 0);
	if (nconns < 1 || nconns > MAXCONN - 1 || gib <= 0) {
		fprintf(stderr, "soak: CONNS must be 1..%d and GIB > 0\n", MAXCONN - 1);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	rnd_state = mix(seed + (mode[0] == 's'));
	wbuf = malloc(BUF);
	rbuf = malloc(BUF);
	pbuf = malloc(BUF);
	ebuf = malloc(BUF);
	uint64_t quota = quota_all = (uint64_t)(gib * (double)(1ull << 30) / (2.0 * nconns));
	for (int i = 0; i < MAXCONN; i++) {
		conns[i].id = (uint64_t)i;
		conns[i].quota = quota;
		conns[i].fd = -1;
	}
	if (!strcmp(mode, "client"))
		return client(host, port, workers);
	struct sockaddr_storage ss;
	socklen_t len;
	if (resolve(host, port, &ss, &len))
		return 2;
	int ls = socket(ss.ss_family, SOCK_STREAM, 0), one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&ss, len) < 0 || listen(ls, 1024) < 0) {
		fprintf(stderr, "soak: listen on %s:%d: %s\n", host, port, strerror(errno));
		return 2;
	}
	if (!strcmp(mode, "server"))
		return server(ls);
	fflush(stdout);
	pid_t sp = fork();
	if (sp == 0)
		_exit(server(ls));
	close(ls);
	int rc = client(host, port, workers);
	int st;
	waitpid(sp, &st, 0);
	int src = WIFEXITED(st) ? WEXITSTATUS(st) : 5;
	return rc ? rc : src;
}
