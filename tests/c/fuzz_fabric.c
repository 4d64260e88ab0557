/* Fuzz target for everything the library reads from shared memory.
 *
 * The input decides (a) a header image to validate, or (b) byte patches
 * applied to a live fabric (offers, slot lease words, ring headers and
 * indices) after which the registry and channel operations run on it.
 * The image is malloc'ed at its exact size, so ASan reports any access
 * outside it.  Only non-blocking channel calls are made: a hostile peer must
 * produce errors, not hangs.
 *
 * libFuzzer build (clang, -DFIVC_LIBFUZZER): the usual libFuzzer binary.
 * Otherwise a standalone driver: `fuzz_fabric N` runs N random inputs, and
 * `fuzz_fabric FILE...` replays inputs (crash reproducers). */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/socket.h>

#include "fuzz_driver.h"

static const struct fivc_geometry G = {.nmembers = 4, .noffers = 4, .nslots = 2, .ring_size = 16384};

static void exercise(struct fivc_fabric *a, struct fivc_fabric *b, const struct fivc_tuple *t)
{
	uint8_t buf[5000];
	int eof;
	struct fivc_offer_view v;
	if (fivc_offer_lookup(b, t, &v) == 0) {
		fivc_offer_adopt(b, &v);
		fivc_offer_poll(a, v.idx, v.word);
		fivc_offer_withdraw(a, v.idx, v.word);
		fivc_offer_remove(a, v.idx, v.word);
	}
	for (uint32_t i = 0; i < a->g.nslots; i++) {
		uint64_t w = fivc_load_relaxed(&fivc_slot_at(a, i)->lease);
		struct fivc_chan c, s;
		int rc = fivc_chan_open(&c, a, i, FIVC_LEASE_GEN(w), 0);
		int rs = fivc_chan_open(&s, b, i, FIVC_LEASE_GEN(w), 1);
		for (int k = 0; k < 3; k++) {
			if (rc == 0) {
				fivc_chan_write(&c, buf, 100 + 1000 * (size_t)k, FIVC_NONBLOCK);
				fivc_chan_read(&c, buf, sizeof(buf), FIVC_NONBLOCK | (k ? 0 : FIVC_PEEK));
				fivc_chan_readable(&c, &eof);
				fivc_chan_writable(&c);
			}
			if (rs == 0) {
				fivc_chan_read(&s, buf, sizeof(buf), FIVC_NONBLOCK);
				fivc_chan_write(&s, buf, 4097, FIVC_NONBLOCK);
				fivc_chan_readable(&s, &eof);
			}
		}
		if (rc == 0)
			fivc_chan_close(&c);
		if (rs == 0) {
			fivc_chan_shutdown(&s, SHUT_WR);
			fivc_chan_close(&s);
		}
		fivc_slot_attach(b, i, FIVC_LEASE_GEN(w));
		fivc_slot_release(a, i, FIVC_LEASE_GEN(w), 0);
	}
	uint32_t slot, gen, idx;
	uint64_t word;
	if (fivc_slot_claim(a, t, 1, &slot, &gen) == 0)
		fivc_offer_post(a, t, 1, slot, gen, &idx, &word);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	struct fivc_geometry g = G;
	uint64_t len;
	struct fivc_fabric L;
	fivc_layout_compute(&g, &L, &len);
	uint8_t *img = malloc(len);
	memset(img, 0, len);
	fivc_fabric_format(img, len, &g);
	struct fivc_fabric a, b;
	char err[256];
	struct fivc_tuple t = {.sport = 1, .dport = 2};
	int mode = data[0] & 1;
	data++;
	size--;
	if (mode == 0) {
		/* a header image: validated, and if accepted, used */
		memcpy(img, data, FIVC_MIN(size, (size_t)FIVC_PAGE));
		if (fivc_fabric_attach_mem(img, len, &a, err, sizeof(err)) == 0 &&
		    fivc_fabric_attach_mem(img, len, &b, err, sizeof(err)) == 0) {
			CHECK(a.size <= len);
			a.self = 1;
			b.self = 2;
			exercise(&a, &b, &t);
		}
		free(img);
		return 0;
	}
	CHECK(fivc_fabric_attach_mem(img, len, &a, err, sizeof(err)) == 0);
	CHECK(fivc_fabric_attach_mem(img, len, &b, err, sizeof(err)) == 0);
	a.self = 1;
	b.self = 2;
	/* a live state: one connected slot with bytes in flight, one offer */
	uint32_t slot, gen, idx;
	uint64_t word;
	struct fivc_chan c;
	CHECK(fivc_slot_claim(&a, &t, 1, &slot, &gen) == 0);
	CHECK(fivc_offer_post(&a, &t, 1, slot, gen, &idx, &word) == 0);
	CHECK(fivc_chan_open(&c, &a, slot, gen, 0) == 0);
	CHECK(fivc_chan_write(&c, "hello", 5, 0) == 5);
	/* and a ring that grew onto a pool buffer with bytes still in the
	 * inline one: its descriptor is among what the patches hit */
	static uint8_t blob[10000];
	CHECK(fivc_chan_write(&c, blob, sizeof(blob), FIVC_NONBLOCK) == (ssize_t)sizeof(blob));
	CHECK(c.txv.buf != FIVC_BUF_INLINE);
	/* patches: [u16 offset into the non-header part][u8 n][n bytes] */
	size_t p = 0;
	while (p + 3 <= size) {
		uint64_t off = FIVC_PAGE + ((uint64_t)data[p] | (uint64_t)data[p + 1] << 8) * 4;
		size_t n = data[p + 2] % 17;
		p += 3;
		if (off >= len)
			off = FIVC_PAGE + off % (len - FIVC_PAGE);
		n = (size_t)FIVC_MIN((uint64_t)n, FIVC_MIN((uint64_t)(size - p), len - off));
		memcpy(img + off, data + p, n);
		p += n;
	}
	exercise(&a, &b, &t);
	free(img);
	return 0;
}

#ifndef FIVC_LIBFUZZER
int main(int argc, char **argv)
{
	return fuzz_driver_main(argc, argv, "fuzz_fabric", 2048, 12345);
}
#endif
