/* The standalone driver of the fuzz targets (builds without libFuzzer):
 *   PROG N [SECONDS]   N random inputs of up to maxlen bytes (or for
 *                      SECONDS), mostly small values: they hit the
 *                      interesting offsets and opcodes
 *   PROG FILE...       replays inputs (crash reproducers) */
#ifndef FIVC_FUZZ_DRIVER_H
#define FIVC_FUZZ_DRIVER_H

#include <time.h>

#include "check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static inline int fuzz_driver_main(int argc, char **argv, const char *what, size_t maxlen,
				   uint64_t seed)
{
	if (argc > 1 && argv[1][0] >= '0' && argv[1][0] <= '9') {
		unsigned long n = strtoul(argv[1], NULL, 0), i;
		double secs = argc > 2 ? strtod(argv[2], NULL) : 0;
		struct timespec t0, t;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		uint8_t *in = malloc(maxlen);
		CHECK(in != NULL);
		uint64_t r = seed;
		for (i = 0; i < n; i++) {
			r = splitmix64(r);
			size_t len = (size_t)(r % maxlen);
			for (size_t j = 0; j < len; j++) {
				r = splitmix64(r);
				in[j] = (uint8_t)((r >> 8) & 1 ? r % 8 : r >> 24);
			}
			LLVMFuzzerTestOneInput(in, len);
			clock_gettime(CLOCK_MONOTONIC, &t);
			if (secs > 0 && (double)(t.tv_sec - t0.tv_sec) +
						(double)(t.tv_nsec - t0.tv_nsec) / 1e9 >= secs) {
				i++;
				break;
			}
		}
		free(in);
		printf("%s: %lu random inputs, no fault\n", what, i);
		return 0;
	}
	static uint8_t file[1 << 20];
	for (int i = 1; i < argc; i++) {
		FILE *fp = fopen(argv[i], "rb");
		CHECK(fp != NULL);
		size_t len = fread(file, 1, sizeof(file), fp);
		fclose(fp);
		LLVMFuzzerTestOneInput(file, len);
	}
	return 0;
}

#endif
