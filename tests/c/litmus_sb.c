/* Store-buffering litmus test on the channel's own sleep/wake halves
 * (fivc_ring_arm_consumer / fivc_ring_consumer_waiting, atomics.h "SB").
 *
 * Consumer thread: announce waiting, fence, look for data.
 * Producer thread: publish one byte (tail = 1), fence, look for a waiter.
 * Forbidden: the consumer saw no data AND the producer saw no waiter -- the
 * consumer would sleep on data that is there (a lost wake-up).
 *
 * Exit 0 when no forbidden outcome was seen in N rounds, 1 otherwise, 77 when
 * the machine has fewer than 2 CPUs.  Built with -DFIVC_BREAK_SB (compiler
 * barrier instead of a full fence) it must find forbidden outcomes. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include "check.h"
#include "fastivc/atomics.h"

static struct fivc_ring_hdr ring __attribute__((aligned(64)));
static unsigned long rounds;
static unsigned long arrive __attribute__((aligned(64)));
static int saw_waiter __attribute__((aligned(64)));

static void pin(int cpu)
{
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	pthread_setaffinity_np(pthread_self(), sizeof(s), &s);
}

/* Two-party barrier: the k-th call returns once both threads made it. */
static void barrier(unsigned long k)
{
	__atomic_fetch_add(&arrive, 1, __ATOMIC_ACQ_REL);
	while (__atomic_load_n(&arrive, __ATOMIC_ACQUIRE) < 2 * k)
		fivc_cpu_relax();
}

static void *producer(void *arg)
{
	(void)arg;
	pin(1);
	for (unsigned long i = 1; i <= rounds; i++) {
		barrier(2 * i - 1);
		fivc_store_release(&ring.tail, 1);
		int w = fivc_ring_consumer_waiting(&ring);
		__atomic_store_n(&saw_waiter, w, __ATOMIC_RELAXED);
		barrier(2 * i);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
		printf("litmus_sb: needs 2 CPUs, skipped\n");
		return 77;
	}
	rounds = argc > 1 ? strtoul(argv[1], NULL, 0) : 2000000;
	pin(0);
	pthread_t b;
	pthread_create(&b, NULL, producer, NULL);
	unsigned long forbidden = 0;
	for (unsigned long i = 1; i <= rounds; i++) {
		/* consumer = this thread; reset before the round's barrier */
		__atomic_store_n(&ring.tail, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&ring.cons_waiting, 0, __ATOMIC_RELAXED);
		barrier(2 * i - 1);
		int saw_data = fivc_ring_arm_consumer(&ring, 0);
		barrier(2 * i);
		if (!saw_data && !__atomic_load_n(&saw_waiter, __ATOMIC_RELAXED))
			forbidden++;
	}
	pthread_join(b, NULL);
	printf("litmus_sb: %lu rounds, %lu forbidden outcomes (lost wake-ups)\n", rounds, forbidden);
	return forbidden ? 1 : 0;
}
