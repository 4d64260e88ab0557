/* Two-process stress: each process has a writer thread sending random-size
 * chunks of a deterministic byte stream and a reader thread verifying every
 * byte it receives, both directions at once, through a file-backed fabric.
 *
 *   stress FABRIC_PATH MIB_PER_DIRECTION [RING_KIB]
 *
 * With FASTIVC_STRESS_SHRINK=1 each writer now and then pauses and runs the
 * janitor's idle step, so the rings move between their inline buffer and
 * pool buffers while bytes are in flight (layout.h); at the end every pool
 * buffer must be free again.
 *
 * Prints per direction the bytes moved, the FNV-1a checksum of the stream
 * and the number of mismatching bytes; exits 1 on any mismatch. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

struct dir {
	struct fivc_chan *ch;
	uint64_t total, seed, rnd;
	uint64_t moved, mismatches, fnv;
};

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static int shrink;
static unsigned shrinks; /* rings moved back to their inline buffer */

static void *writer(void *arg)
{
	struct dir *d = arg;
	size_t cap = 3 * (size_t)d->ch->max_size + 7;
	uint8_t *buf = malloc(cap);
	d->fnv = 0xcbf29ce484222325ull;
	while (d->moved < d->total) {
		d->rnd = splitmix64(d->rnd);
		size_t n = (size_t)(d->rnd % ((d->rnd >> 60) < 4 ? 64 : cap)) + 1;
		if (n > d->total - d->moved)
			n = (size_t)(d->total - d->moved);
		stream_fill(d->seed, d->moved, buf, n);
		d->fnv = fnv1a(d->fnv, buf, n);
		ssize_t r = fivc_chan_write(d->ch, buf, n, 0);
		if (r != (ssize_t)n) {
			fprintf(stderr, "stress: write returned %zd for %zu\n", r, n);
			exit(1);
		}
		d->moved += n;
		if (shrink && (d->rnd >> 20) % 16 == 0) {
			/* idle: until the reader drained it, then back to inline */
			int was = fivc_chan_tx_grown(d->ch);
			for (int k = 0; k < 1000 && fivc_chan_tx_idle(d->ch); k++)
				usleep(20);
			if (was && !fivc_chan_tx_grown(d->ch))
				__atomic_add_fetch(&shrinks, 1, __ATOMIC_RELAXED);
		}
	}
	fivc_chan_shutdown(d->ch, SHUT_WR);
	free(buf);
	return NULL;
}

static void *reader(void *arg)
{
	struct dir *d = arg;
	size_t cap = 3 * (size_t)d->ch->max_size + 7;
	uint8_t *buf = malloc(cap);
	d->fnv = 0xcbf29ce484222325ull;
	for (;;) {
		d->rnd = splitmix64(d->rnd);
		size_t n = (size_t)(d->rnd % ((d->rnd >> 60) < 4 ? 64 : cap)) + 1;
		int flags = (d->rnd >> 50) & 1 ? FIVC_WAITALL : 0;
		ssize_t r = fivc_chan_read(d->ch, buf, n, flags);
		if (r < 0) {
			fprintf(stderr, "stress: read error %zd\n", r);
			exit(1);
		}
		if (r == 0)
			break;
		size_t ok = stream_verify(d->seed, d->moved, buf, (size_t)r);
		if (ok != (size_t)r) {
			for (size_t i = ok; i < (size_t)r; i++)
				d->mismatches += buf[i] != stream_byte(d->seed, d->moved + i);
			if (d->mismatches < 10)
				fprintf(stderr, "stress: mismatch at byte %llu\n",
					(unsigned long long)(d->moved + ok));
		}
		d->fnv = fnv1a(d->fnv, buf, (size_t)r);
		d->moved += (uint64_t)r;
	}
	free(buf);
	return NULL;
}

static int run_side(struct fivc_chan *ch, uint64_t total, int side)
{
	struct dir w = {.ch = ch, .total = total, .seed = 100 + side, .rnd = 11 + side};
	struct dir r = {.ch = ch, .total = total, .seed = 101 - side, .rnd = 21 + side};
	pthread_t tw, tr;
	CHECK(pthread_create(&tw, NULL, writer, &w) == 0);
	CHECK(pthread_create(&tr, NULL, reader, &r) == 0);
	pthread_join(tw, NULL);
	pthread_join(tr, NULL);
	printf("side %d: sent %llu fnv %016llx; received %llu fnv %016llx mismatches %llu\n",
	       side, (unsigned long long)w.moved, (unsigned long long)w.fnv,
	       (unsigned long long)r.moved, (unsigned long long)r.fnv,
	       (unsigned long long)r.mismatches);
	fflush(stdout);
	return r.mismatches == 0 && r.moved == total ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: stress FABRIC MIB [RING_KIB]\n");
		return 2;
	}
	const char *path = argv[1];
	const char *sh = getenv("FASTIVC_STRESS_SHRINK");
	shrink = sh && *sh == '1';
	uint64_t total = strtoull(argv[2], NULL, 0) << 20;
	struct fivc_geometry g = {.nslots = 2, .nmembers = 8, .noffers = 4,
				  .ring_size = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 0) * 1024 : 0};
	unlink(path);
	struct fivc_fabric f;
	char err[512];
	uint32_t slot, gen;
	if (fivc_fabric_open(path, &g, &f, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	CHECK(fivc_slot_claim(&f, NULL, 1, &slot, &gen) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		struct fivc_fabric f2;
		struct fivc_chan s;
		CHECK(fivc_fabric_open(path, NULL, &f2, err, sizeof(err)) == 0);
		CHECK(f2.self != f.self);
		CHECK(fivc_slot_attach(&f2, slot, gen) == 0);
		CHECK(fivc_chan_open(&s, &f2, slot, gen, FIVC_SIDE_SERVER) == 0);
		int rc = run_side(&s, total, 1);
		fivc_chan_close(&s);
		fivc_fabric_close(&f2);
		_exit(rc);
	}
	struct fivc_chan c;
	CHECK(fivc_chan_open(&c, &f, slot, gen, FIVC_SIDE_CLIENT) == 0);
	int rc = run_side(&c, total, 0);
	int st;
	waitpid(pid, &st, 0);
	fivc_chan_close(&c);
	CHECK_EQ((uint32_t)fivc_slot_at(&f, slot)->lease, 0); /* both sides gone */
	for (int k = 0; k < FIVC_POOL_CLASSES; k++)
		for (uint32_t i = 0; i < f.g.npool[k]; i++)
			CHECK_EQ(fivc_pool_at(&f, k, i)->owner, 0); /* every buffer given back */
	fivc_fabric_close(&f);
	unlink(path);
	if (rc || !WIFEXITED(st) || WEXITSTATUS(st)) {
		fprintf(stderr, "stress: FAILED\n");
		return 1;
	}
	if (shrink && !shrinks) {
		fprintf(stderr, "stress: FAILED: no ring ever went back to its inline buffer\n");
		return 1;
	}
	printf("stress: ok, %llu MiB each way, zero mismatches, %u shrinks\n",
	       (unsigned long long)(total >> 20), shrinks);
	return 0;
}
