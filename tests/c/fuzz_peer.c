/* Hostile-peer fuzzing on a real fabric file, with two processes (issue 13).
 *
 * fuzz_fabric.c fuzzes what the library reads on an in-memory fabric, in
 * one process.  Here the fabric is a file, opened as the library opens it
 * (member locks, the real open), and the peer is another process: what it
 * writes, and its death, reach us as they would from a real peer.
 *
 * The honest side is this process.  It holds two connections with the
 * peer (one it claimed and the peer attached, one the peer offered and we
 * adopted), with bytes in flight.  The peer, forked per input, plays the
 * input as a script of steps:
 *   patch      bytes written anywhere past the header page (rings, slots,
 *              offers, members, pool entries, listeners, wake records)
 *   write/read on its ends, with whatever state the patches left
 *   shutdown/close one of its ends
 *   offer      a new connection offered to us (we look it up and adopt it)
 *   die        _exit with no cleanup: its lock goes, and our reclaim frees
 *              what it held
 * After each step the honest side runs its operations: non-blocking reads
 * and writes, readiness, peer checks, offer lookup and adoption, a read
 * that may block for a few milliseconds (SO_RCVTIMEO), and a reclaim pass
 * (fivc_gc: locks asked of the kernel).  Steps alternate through a
 * socketpair, so an input replays the same way.
 *
 * A crash, an ASan/UBSan report or a hang (libFuzzer's -timeout) of the
 * honest side is a finding.  So is a crash of the peer other than our
 * SIGKILL: it runs the library too, on memory it corrupted itself.
 *
 * libFuzzer build (clang, -DFIVC_LIBFUZZER).  Otherwise a driver:
 * `fuzz_peer N [SECONDS]` runs N random inputs (or for SECONDS), and
 * `fuzz_peer FILE...` replays inputs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fuzz_driver.h"

#define NCHAN 4

static const struct fivc_geometry G = {.nmembers = 8, .noffers = 8, .nslots = 4,
				       .ring_size = 16384};

struct side {
	struct fivc_fabric f;
	struct fivc_chan ch[NCHAN];
	int open[NCHAN];
};

static const struct fivc_tuple T1 = {.sport = 1000, .dport = 2000};
static const struct fivc_tuple T2 = {.sport = 1001, .dport = 2000};

static uint8_t junk[20000];

/* ---- the peer: one step of the script ---- */

static size_t peer_step(struct side *p, const uint8_t *d, size_t n, size_t i)
{
	uint8_t op = d[i++] % 9;
	uint8_t buf[8192];
	switch (op) {
	case 0: case 1: case 2: { /* patch: [region][u16 offset][len][bytes] */
		if (i + 4 > n)
			return n;
		uint32_t o = (uint32_t)d[i + 1] | (uint32_t)d[i + 2] << 8;
		uint8_t *at;
		/* the control structures first: a random offset in a file of
		 * megabytes would mostly hit ring bytes */
		switch (d[i] % 8) {
		case 0: case 1: case 2:
			at = (uint8_t *)fivc_slot_at(&p->f, o % p->f.g.nslots) + (o >> 2) % 1024;
			break;
		case 3:
			at = (uint8_t *)fivc_offer_at(&p->f, o % p->f.g.noffers) +
			     (o >> 3) % sizeof(struct fivc_offer);
			break;
		case 4:
			at = (uint8_t *)fivc_member_at(&p->f, o % p->f.g.nmembers) +
			     (o >> 3) % sizeof(struct fivc_member);
			break;
		case 5: {
			int c = o % FIVC_POOL_CLASSES;
			at = p->f.g.npool[c] ? (uint8_t *)fivc_pool_at(&p->f, c, (o >> 1) % p->f.g.npool[c])
					     : p->f.base + FIVC_PAGE;
			break;
		}
		case 6:
			at = (uint8_t *)fivc_waker_at(&p->f, o % FIVC_WAKERS) + (o >> 11) % 16;
			break;
		default: {
			uint64_t span = p->f.size - FIVC_PAGE;
			at = p->f.base + FIVC_PAGE + ((uint64_t)o * 4099) % span;
		}
		}
		size_t len = d[i + 3] % 17;
		i += 4;
		len = FIVC_MIN(len, n - i);
		len = (size_t)FIVC_MIN((uint64_t)len, (uint64_t)(p->f.base + p->f.size - at));
		memcpy(at, d + i, len);
		return i + len;
	}
	case 3: /* write on every open end */
		for (int k = 0; k < NCHAN; k++)
			if (p->open[k])
				fivc_chan_write(&p->ch[k], junk, 1 + (i < n ? d[i] : 0) * 64u, FIVC_NONBLOCK);
		return i + 1;
	case 4:
		for (int k = 0; k < NCHAN; k++)
			if (p->open[k])
				fivc_chan_read(&p->ch[k], buf, sizeof(buf), FIVC_NONBLOCK);
		return i;
	case 5: { /* shutdown or close one end */
		int k = i < n ? d[i] % NCHAN : 0;
		if (p->open[k]) {
			if (i < n && (d[i] & 0x10)) {
				fivc_chan_close(&p->ch[k]);
				p->open[k] = 0;
			} else {
				fivc_chan_shutdown(&p->ch[k], SHUT_WR);
			}
		}
		return i + 1;
	}
	case 6: { /* a new offer to us */
		uint32_t slot, gen, idx;
		uint64_t word;
		for (int k = 0; k < NCHAN; k++)
			if (!p->open[k] && fivc_slot_claim(&p->f, &T2, 77, &slot, &gen) == 0) {
				if (fivc_offer_post(&p->f, &T2, 77, slot, gen, &idx, &word) == 0 &&
				    fivc_chan_open(&p->ch[k], &p->f, slot, gen, FIVC_SIDE_CLIENT) == 0)
					p->open[k] = 1;
				break;
			}
		return i;
	}
	case 7: /* a reclaim pass of its own */ {
		struct fivc_gc_report r;
		fivc_gc(&p->f, &r);
		return i;
	}
	default: /* die, holding everything */
		_exit(0);
	}
}

/* The peer never calls exit(): in a libFuzzer build, exit() in the forked
 * peer would report the fuzz target as exited. */
#define PCHECK(cond) CHECK_THEN(cond, _exit(3))

static void peer_main(const char *path, int sock, const uint8_t *d, size_t n, uint32_t slot,
		      uint32_t gen)
{
	struct side p = {0};
	char err[512];
	if (fivc_fabric_open(path, NULL, &p.f, err, sizeof(err)) < 0 || !p.f.self)
		_exit(3);
	/* our end of the honest side's connection, and one we offer */
	if (fivc_slot_attach(&p.f, slot, gen) == 0 &&
	    fivc_chan_open(&p.ch[0], &p.f, slot, gen, FIVC_SIDE_SERVER) == 0)
		p.open[0] = 1;
	uint32_t s2, g2, idx;
	uint64_t word;
	PCHECK(fivc_slot_claim(&p.f, &T1, 55, &s2, &g2) == 0);
	PCHECK(fivc_offer_post(&p.f, &T1, 55, s2, g2, &idx, &word) == 0);
	PCHECK(fivc_chan_open(&p.ch[1], &p.f, s2, g2, FIVC_SIDE_CLIENT) == 0);
	p.open[1] = 1;
	PCHECK(fivc_chan_write(&p.ch[1], junk, 5000, 0) == 5000);
	char go;
	PCHECK(write(sock, "r", 1) == 1);
	size_t i = 0;
	while (read(sock, &go, 1) == 1 && go == 's') {
		if (i < n)
			i = peer_step(&p, d, n, i);
		if (write(sock, i < n ? "k" : "e", 1) != 1)
			break;
	}
	_exit(0);
}

/* ---- the honest side ---- */

static void honest_ops(struct side *h, int k0)
{
	uint8_t buf[8192];
	int eof;
	for (int k = 0; k < NCHAN; k++) {
		if (!h->open[k])
			continue;
		struct fivc_chan *c = &h->ch[k];
		fivc_chan_write(c, junk, 100 + 3000 * (size_t)((k + k0) % 3), FIVC_NONBLOCK);
		fivc_chan_read(c, buf, sizeof(buf), FIVC_NONBLOCK | ((k + k0) % 2 ? FIVC_PEEK : 0));
		fivc_chan_readable(c, &eof);
		fivc_chan_writable(c);
		fivc_chan_peer_check(c);
		fivc_chan_tx_idle(c);
	}
	/* a read that may block: it must come back (data, EOF, an error, or
	 * EAGAIN when its SO_RCVTIMEO of 2 ms runs out) */
	struct fivc_chan *c = &h->ch[k0 % NCHAN];
	if (h->open[k0 % NCHAN]) {
		c->rd_timeout_ns = 2000000;
		fivc_chan_read(c, buf, sizeof(buf), 0);
	}
	struct fivc_offer_view v;
	for (int t = 0; t < 2; t++) {
		if (fivc_offer_lookup(&h->f, t ? &T2 : &T1, &v) != 0)
			continue;
		for (int k = 0; k < NCHAN; k++)
			if (!h->open[k]) {
				if (fivc_offer_adopt(&h->f, &v) == 0 &&
				    fivc_chan_open(&h->ch[k], &h->f, v.slot, v.slot_gen,
						   FIVC_SIDE_SERVER) == 0)
					h->open[k] = 1;
				break;
			}
	}
	struct fivc_gc_report r;
	fivc_gc(&h->f, &r);
}

static char path[128];

/* One byte from the peer within 5 s (libFuzzer's timer signals interrupt
 * our calls: EINTR is retried). */
static int recv_ack(int fd, char *ack)
{
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	int r;
	while ((r = poll(&pf, 1, 5000)) < 0 && errno == EINTR)
		;
	if (r != 1)
		return 0;
	ssize_t n;
	while ((n = read(fd, ack, 1)) < 0 && errno == EINTR)
		;
	return n == 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!path[0])
		snprintf(path, sizeof(path), "/dev/shm/fastivc-fuzz-peer-%d", (int)getpid());
	unlink(path);
	struct side h = {0};
	char err[512];
	struct fivc_geometry g = G;
	CHECK(fivc_fabric_open(path, &g, &h.f, err, sizeof(err)) == 0);
	CHECK(h.f.self != 0);
	uint32_t slot, gen;
	CHECK(fivc_slot_claim(&h.f, &T1, 1, &slot, &gen) == 0);
	CHECK(fivc_chan_open(&h.ch[0], &h.f, slot, gen, FIVC_SIDE_CLIENT) == 0);
	h.open[0] = 1;
	/* grown onto a pool buffer, bytes still in the inline ring */
	CHECK(fivc_chan_write(&h.ch[0], junk, 100, 0) == 100);
	CHECK(fivc_chan_write(&h.ch[0], junk, sizeof(junk), FIVC_NONBLOCK) > 0);
	int sp[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		close(sp[0]);
		peer_main(path, sp[1], data, size, slot, gen);
	}
	close(sp[1]);
	char ack = 0;
	int alive = recv_ack(sp[0], &ack) && ack == 'r';
	for (int step = 0; alive && step < 512; step++) {
		ssize_t w;
		while ((w = write(sp[0], "s", 1)) < 0 && errno == EINTR)
			;
		alive = w == 1 && recv_ack(sp[0], &ack);
		honest_ops(&h, step);
		if (ack == 'e')
			break;
	}
	kill(pid, SIGKILL);
	int st;
	pid_t w;
	while ((w = waitpid(pid, &st, 0)) < 0 && errno == EINTR)
		;
	CHECK(w == pid);
	close(sp[0]);
	if (WIFSIGNALED(st) ? WTERMSIG(st) != SIGKILL : WEXITSTATUS(st) != 0) {
		fprintf(stderr, "fuzz_peer: the peer %s %d\n", WIFSIGNALED(st) ? "died of signal" : "exited",
			WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
		abort(); /* a crash of the library in the peer */
	}
	/* the peer is dead: what it held is reclaimed, ours still works */
	honest_ops(&h, 0);
	for (int k = 0; k < NCHAN; k++)
		if (h.open[k])
			fivc_chan_close(&h.ch[k]);
	struct fivc_gc_report r;
	fivc_gc(&h.f, &r);
	fivc_fabric_close(&h.f);
	unlink(path);
	return 0;
}

#ifndef FIVC_LIBFUZZER
int main(int argc, char **argv)
{
	memset(junk, 'j', sizeof(junk));
	return fuzz_driver_main(argc, argv, "fuzz_peer (two processes)", 1024, 4242);
}
#else
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	memset(junk, 'j', sizeof(junk));
	return 0;
}
#endif
