/* For the plain socket test programs (soak.c, calls.c): how many of this
 * process's sockets are on a ring, from the library's own counter
 * (fastivc_fork_stats, through dlsym), or -1 when the program does not run
 * under fastivc.  (tests/programs/onfabric.py is the Python twin.) */
#ifndef FIVC_TEST_ONFABRIC_H
#define FIVC_TEST_ONFABRIC_H

#include <dlfcn.h>
#include <stdint.h>

static long on_fabric(void)
{
	void (*st)(uint64_t *) = (void (*)(uint64_t *))dlsym(RTLD_DEFAULT, "fastivc_fork_stats");
	if (!st)
		return -1;
	uint64_t o[4];
	st(o);
	return (long)o[0];
}

#endif
