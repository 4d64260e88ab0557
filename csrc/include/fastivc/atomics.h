/* fastivc — every atomic access and barrier the library uses lives here.
 *
 * Two patterns carry the channel (DESIGN.md "Channel"):
 *
 *  MP (message passing): a producer fills ring bytes, then publishes the new
 *      tail with fivc_store_release(); the consumer reads the tail with
 *      fivc_load_acquire() before it reads those bytes.  Pairs: release <-> acquire.
 *
 *  SB (store buffering, before sleep/wake): the consumer stores "waiting",
 *      issues fivc_smp_mb(), re-reads the tail; the producer stores the tail,
 *      issues fivc_smp_mb(), reads "waiting".  Without both full fences each
 *      side can miss the other's store and the consumer sleeps on data that
 *      is already there (lost wake-up).  Pairs: smp_mb <-> smp_mb.
 *
 * Tests build the litmus programs with FIVC_BREAK_MP / FIVC_BREAK_SB to prove
 * that each test fails when its barrier is removed (tests/c/litmus_*.c).
 */
#ifndef FASTIVC_ATOMICS_H
#define FASTIVC_ATOMICS_H

#include <stdint.h>

#define fivc_load_relaxed(p)     __atomic_load_n((p), __ATOMIC_RELAXED)
#define fivc_store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

#ifdef FIVC_BREAK_MP
/* Deliberately broken build for the MP litmus test only. */
#define fivc_load_acquire(p)     __atomic_load_n((p), __ATOMIC_RELAXED)
#define fivc_store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#else
#define fivc_load_acquire(p)     __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define fivc_store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#endif

#ifdef FIVC_BREAK_SB
/* Deliberately broken build for the SB litmus test only: a compiler barrier. */
#define fivc_smp_mb() __atomic_signal_fence(__ATOMIC_SEQ_CST)
#else
#define fivc_smp_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#endif

/* Strong CAS; on failure *expected receives the current value. */
#define fivc_cas(p, expected, desired) \
	__atomic_compare_exchange_n((p), (expected), (desired), 0, \
				    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#define fivc_fetch_add(p, v) __atomic_fetch_add((p), (v), __ATOMIC_ACQ_REL)
/* Take a flag: returns the old value, leaves v (the doorbell's "waiting"). */
#define fivc_exchange(p, v) __atomic_exchange_n((p), (v), __ATOMIC_ACQ_REL)

static inline void fivc_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
#endif
}

#endif
