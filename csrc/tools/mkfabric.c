/* fastivc-mkfabric: create (or check) a fabric file, for sharing it with
 * virtual machines: its size is rounded up to a power of two, as QEMU's
 * ivshmem device needs (the fabric itself uses the start of the file).
 * Prints {"path", "size", "layout_size"}; exit 0, or 2 with a message.
 *
 *   fastivc-mkfabric PATH [SLOTS [RING_KIB]]   (defaults: the library's) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fastivc/fabric.h"

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: fastivc-mkfabric PATH [SLOTS [RING_KIB]]\n");
		return 2;
	}
	struct fivc_geometry g = {0};
	if (argc > 2)
		g.nslots = (uint32_t)strtoul(argv[2], NULL, 10);
	if (argc > 3)
		g.ring_size = (uint32_t)strtoul(argv[3], NULL, 10) * 1024u;
	struct fivc_fabric f;
	char err[512];
	if (fivc_fabric_open(argv[1], &g, &f, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	uint64_t layout = f.size, p2 = 1;
	fivc_fabric_close(&f);
	while (p2 < layout)
		p2 <<= 1;
	struct stat st;
	if (stat(argv[1], &st) < 0 ||
	    ((uint64_t)st.st_size < p2 && truncate(argv[1], (off_t)p2) < 0)) {
		perror(argv[1]);
		return 2;
	}
	stat(argv[1], &st);
	printf("{\"path\": \"%s\", \"size\": %llu, \"layout_size\": %llu}\n", argv[1],
	       (unsigned long long)st.st_size, (unsigned long long)layout);
	return 0;
}
