/* A peer is untrusted input: corrupted headers, ring indices, offers and
 * lease words must give an error (EPROTO / ECONNRESET), never an
 * out-of-bounds access, a crash or a hang.  Run under ASan+UBSan too. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "fastivc/atomics.h"
#include "fastivc/util.h"

static void test_corrupt_header_fields_refused(void)
{
	struct memfab m;
	memfab_init(&m, 4096);
	void *copy = malloc(m.len);
	/* every 4-byte word of the used header, set to a few hostile values */
	uint32_t vals[] = {0, 1, 0xffffffffu, 0x80000000u, 4095, 4097};
	for (size_t off = 0; off < 160; off += 4) {
		for (size_t v = 0; v < sizeof(vals) / sizeof(vals[0]); v++) {
			memcpy(copy, m.mem, m.len);
			uint32_t old;
			memcpy(&old, (uint8_t *)copy + off, 4);
			if (old == vals[v])
				continue;
			memcpy((uint8_t *)copy + off, &vals[v], 4);
			struct fivc_fabric f;
			char err[256] = "";
			int r = fivc_fabric_attach_mem(copy, m.len, &f, err, sizeof(err));
			int harmless = (off >= 24 && off < 32) /* epoch */ || off == 92 /* flags */ ||
				       off == 12 || off == 20; /* high halves checked via the whole */
			if (r == 0) {
				/* accepted: then it must be a field that does not matter,
				 * and the geometry we took must fit the region */
				CHECK(harmless || f.size <= m.len);
				CHECK(f.size <= m.len);
			} else {
				CHECK(err[0] != 0);
			}
		}
	}
	/* a region shorter than the header says */
	struct fivc_fabric f;
	char err[256] = "";
	CHECK_EQ(fivc_fabric_attach_mem(m.mem, m.len - 1, &f, err, sizeof(err)), -EPROTO);
	CHECK(strstr(err, "bytes") != NULL);
	CHECK_EQ(fivc_fabric_attach_mem(m.mem, 100, &f, err, sizeof(err)), -EPROTO);
	free(copy);
	memfab_free(&m);
}

static void test_version_mismatch_names_file_and_versions(void)
{
	char path[] = "/tmp/fastivc-test-ver-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	struct memfab m;
	memfab_init(&m, 4096);
	((struct fivc_fabric_hdr *)m.mem)->layout_version = FIVC_LAYOUT_VERSION + 1;
	CHECK(write(fd, m.mem, m.len) == (ssize_t)m.len);
	close(fd);
	struct fivc_fabric f;
	char err[512] = "";
	CHECK_EQ(fivc_fabric_open(path, NULL, &f, err, sizeof(err)), -EPROTONOSUPPORT);
	CHECK(strstr(err, path) != NULL);
	{
		char other[32];
		snprintf(other, sizeof(other), "layout version %u", FIVC_LAYOUT_VERSION + 1);
		CHECK(strstr(err, other) != NULL);
	}
	{
		char want[32];
		snprintf(want, sizeof(want), "version %u", FIVC_LAYOUT_VERSION);
		CHECK(strstr(err, want) != NULL);
	}
	/* a file that is not a fabric at all */
	fd = open(path, O_WRONLY | O_TRUNC);
	CHECK(write(fd, "hello", 5) == 5);
	close(fd);
	CHECK_EQ(fivc_fabric_open(path, NULL, &f, err, sizeof(err)), -EPROTO);
	CHECK(strstr(err, "not a fastivc fabric") != NULL);
	unlink(path);
	/* a directory that does not exist */
	CHECK(fivc_fabric_open("/nonexistent-dir/fab", NULL, &f, err, sizeof(err)) < 0);
	CHECK(strstr(err, "/nonexistent-dir/fab") != NULL);
	memfab_free(&m);
}

static void test_ring_tail_beyond_size_resets(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	uint8_t buf[64];
	int eof;
	memfab_init(&m, 4096);
	memfab_pair(&m, &c, &s);
	CHECK_EQ(fivc_chan_write(&c, "abc", 3, 0), 3);
	fivc_store_release(&c.tx->tail, (uint64_t)4096 + 1); /* peer claims > size */
	CHECK_EQ(fivc_chan_read(&s, buf, sizeof(buf), 0), -ECONNRESET);
	CHECK_EQ(fivc_chan_read(&s, buf, sizeof(buf), 0), -ECONNRESET); /* sticky */
	CHECK_EQ(fivc_chan_readable(&s, &eof), -ECONNRESET);
	memfab_free(&m);
}

/* A peer's buffer descriptor (layout.h) is checked like its indices. */
static void corrupt_desc(struct fivc_ring_hdr *r, uint32_t buf, uint64_t from, uint64_t tail)
{
	fivc_store_relaxed(&r->desc_seq, r->desc_seq + 1);
	r->buf = buf;
	r->from = from;
	fivc_store_release(&r->desc_seq, r->desc_seq + 1);
	fivc_store_release(&r->tail, tail);
}

static void test_ring_descriptor_corruption_resets(void)
{
	uint8_t buf[64];
	/* a class or index that does not exist; a buffer lent to another
	 * slot; bytes beyond what the named buffer holds */
	for (int k = 0; k < 3; k++) {
		struct memfab m;
		struct fivc_chan c, s;
		memfab_init(&m, 1024 * 1024);
		memfab_pair(&m, &c, &s);
		uint32_t other, og, lent;
		CHECK_EQ(fivc_slot_claim(&m.a, NULL, 1, &other, &og), 0);
		CHECK_EQ(fivc_pool_take(&m.a, 0, other, og, 0, &lent), 0);
		CHECK_EQ(fivc_chan_write(&c, "abc", 3, 0), 3);
		uint32_t w = k == 0 ? FIVC_BUF_WORD(1, 99999) : k == 1 ? lent : FIVC_BUF_INLINE;
		corrupt_desc(c.tx, w, 0, k == 2 ? 3 + 8192 : 3);
		CHECK_EQ(fivc_chan_read(&s, buf, sizeof(buf), 0), -ECONNRESET);
		CHECK_EQ(fivc_chan_read(&s, buf, sizeof(buf), 0), -ECONNRESET); /* sticky */
		memfab_free(&m);
	}
}

static void test_ring_descriptor_never_settling_resets(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	uint8_t buf[64];
	memfab_init(&m, 1024 * 1024);
	memfab_pair(&m, &c, &s);
	CHECK_EQ(fivc_chan_write(&c, "abc", 3, 0), 3);
	fivc_store_release(&c.tx->desc_seq, c.tx->desc_seq | 1u); /* "writing", forever */
	CHECK_EQ(fivc_chan_read(&s, buf, sizeof(buf), 0), -ECONNRESET);
	memfab_free(&m);
}

static void test_ring_tail_backwards_resets(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	uint8_t buf[64];
	memfab_init(&m, 4096);
	memfab_pair(&m, &c, &s);
	CHECK_EQ(fivc_chan_write(&c, "abcdef", 6, 0), 6);
	CHECK_EQ(fivc_chan_read(&s, buf, 6, 0), 6);
	fivc_store_release(&c.tx->tail, 2); /* behind our head */
	CHECK_EQ(fivc_chan_read(&s, buf, sizeof(buf), FIVC_NONBLOCK), -ECONNRESET);
	memfab_free(&m);
}

static void test_ring_head_corruption_resets_writer(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	uint8_t buf[4096] = {0};
	memfab_init(&m, 4096);
	memfab_pair(&m, &c, &s);
	CHECK_EQ(fivc_chan_write(&c, buf, 100, 0), 100);
	fivc_store_release(&c.tx->head, 5000); /* head beyond tail */
	CHECK_EQ(fivc_chan_write(&c, buf, 4096, FIVC_NONBLOCK), -ECONNRESET);
	CHECK_EQ(fivc_chan_writable(&c), -ECONNRESET);
	memfab_free(&m);
	/* our own index scribbled by the peer is never read back */
	memfab_init(&m, 4096);
	memfab_pair(&m, &c, &s);
	CHECK_EQ(fivc_chan_write(&c, "xyz", 3, 0), 3);
	fivc_store_release(&s.rx->head, 12345); /* the server's own head */
	CHECK_EQ(fivc_chan_read(&s, buf, 10, 0), 3);
	CHECK(memcmp(buf, "xyz", 3) == 0);
	memfab_free(&m);
}

static void test_ring_magic_and_size_checked_at_open(void)
{
	struct memfab m;
	struct fivc_chan c;
	memfab_init(&m, 4096);
	uint32_t slot, gen;
	CHECK_EQ(fivc_slot_claim(&m.a, NULL, 1, &slot, &gen), 0);
	struct fivc_slot *s = fivc_slot_at(&m.a, slot);
	s->ring[1].magic = 0xdead;
	CHECK_EQ(fivc_chan_open(&c, &m.a, slot, gen, 0), -EPROTO);
	s->ring[1].magic = FIVC_RING_MAGIC;
	s->ring[0].size = 1u << 30;
	CHECK_EQ(fivc_chan_open(&c, &m.a, slot, gen, 0), -EPROTO);
	s->ring[0].size = 4096;
	s->ring[0].tail = 99999; /* inconsistent indices found at open */
	CHECK_EQ(fivc_chan_open(&c, &m.a, slot, gen, 0), -EPROTO);
	s->ring[0].tail = 0;
	CHECK_EQ(fivc_chan_open(&c, &m.a, slot, gen, 0), 0);
	CHECK_EQ(fivc_chan_open(&c, &m.a, slot + 100, gen, 0), -EINVAL);
	CHECK_EQ(fivc_chan_open(&c, &m.a, slot, gen + 1, 0), -ESTALE);
	memfab_free(&m);
}

struct blk {
	struct fivc_chan *ch;
	ssize_t r;
};
static void *blocked_reader(void *arg)
{
	struct blk *b = arg;
	uint8_t buf[16];
	b->ch->spin_ns = 0;
	b->r = fivc_chan_read(b->ch, buf, sizeof(buf), 0);
	return NULL;
}

static void test_sleeping_reader_sees_corruption_not_hang(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	memfab_init(&m, 4096);
	memfab_pair(&m, &c, &s);
	struct blk b = {&s, 1};
	pthread_t t;
	CHECK(pthread_create(&t, NULL, blocked_reader, &b) == 0);
	usleep(50000);
	/* the "peer" scribbles a bogus tail and never rings the bell */
	fivc_store_release(&c.tx->tail, (uint64_t)1 << 40);
	uint64_t t0 = fivc_now_ns(CLOCK_MONOTONIC);
	pthread_join(t, NULL);
	CHECK_EQ(b.r, -ECONNRESET);
	CHECK(fivc_now_ns(CLOCK_MONOTONIC) - t0 < 2000000000ull); /* bounded by the liveness period */
	memfab_free(&m);
}

static void test_corrupt_offers_ignored(void)
{
	struct memfab m;
	memfab_init(&m, 4096);
	struct fivc_tuple t = {.sport = 1, .dport = 2};
	uint32_t slot, gen, idx;
	uint64_t word;
	struct fivc_offer_view v;
	CHECK_EQ(fivc_slot_claim(&m.a, &t, 1, &slot, &gen), 0);
	CHECK_EQ(fivc_offer_post(&m.a, &t, 1, slot, gen, &idx, &word), 0);
	struct fivc_offer *o = fivc_offer_at(&m.a, idx);
	o->slot = 100000; /* out of range */
	CHECK_EQ(fivc_offer_lookup(&m.b, &t, &v), -ENOENT);
	o->slot = slot;
	o->state = FIVC_OFFER_WORD(FIVC_OFFER_GEN(word), 60000, FIVC_OFFER_PENDING); /* bogus owner */
	CHECK_EQ(fivc_offer_lookup(&m.b, &t, &v), -ENOENT);
	o->state = word;
	CHECK_EQ(fivc_offer_lookup(&m.b, &t, &v), 0);
	v.idx = 1u << 30;
	CHECK_EQ(fivc_offer_adopt(&m.b, &v), -EINVAL);
	CHECK_EQ(fivc_offer_poll(&m.a, 1u << 30, word), -EINVAL);
	/* a wrong slot generation in the offer: adopt refuses */
	o->slot_gen = gen + 5;
	CHECK_EQ(fivc_offer_lookup(&m.b, &t, &v), 0);
	CHECK_EQ(fivc_offer_adopt(&m.b, &v), -ESTALE);
	/* lease words with member ids out of range are neither trusted nor used */
	struct fivc_slot *s = fivc_slot_at(&m.a, slot);
	s->lease = FIVC_LEASE_WORD(gen, 65534, 65534);
	CHECK_EQ(fivc_slot_release(&m.a, slot, gen, 0), -ESTALE);
	CHECK_EQ(fivc_slot_attach(&m.b, slot, gen), -EBUSY);
	/* (65535: a quarantined side, held by nobody, never attached to) */
	s->lease = FIVC_LEASE_WORD(gen, 0, FIVC_LEASE_QUARANTINE);
	CHECK_EQ(fivc_slot_release(&m.a, slot, gen, 0), -ESTALE);
	CHECK_EQ(fivc_slot_attach(&m.b, slot, gen), -ECONNRESET);
	memfab_free(&m);
}

int main(void)
{
	RUN(test_corrupt_header_fields_refused);
	RUN(test_version_mismatch_names_file_and_versions);
	RUN(test_ring_tail_beyond_size_resets);
	RUN(test_ring_tail_backwards_resets);
	RUN(test_ring_descriptor_corruption_resets);
	RUN(test_ring_descriptor_never_settling_resets);
	RUN(test_ring_head_corruption_resets_writer);
	RUN(test_ring_magic_and_size_checked_at_open);
	RUN(test_sleeping_reader_sees_corruption_not_hang);
	RUN(test_corrupt_offers_ignored);
	return 0;
}
