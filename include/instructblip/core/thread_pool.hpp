#pragma once
// The library's one thread pool. Kernels split work with parallel_for; a call made from inside
// a worker, or while another caller holds the pool, runs inline on the calling thread, so
// nested or concurrent use never oversubscribes the cores or deadlocks. Any number of threads
// may call parallel_for at once. The split into chunks depends only on the range, the grain and
// num_threads(), never on whether the pool was free, so results are reproducible under
// concurrent use.
#include <cstdint>
#include <functional>

namespace instructblip {

/// Number of threads kernels may use (default: the machine's hardware threads).
int num_threads();
/// Sets the number of threads (>= 1; values above the hardware count are allowed).
void set_num_threads(int n);

/// Calls fn(begin_i, end_i) on disjoint chunks covering [begin, end), in parallel. Chunks hold
/// at least `grain` items. Returns after every chunk has finished; the first exception thrown by
/// a chunk is rethrown on the caller. When the pool is busy the same chunks run in turn on the
/// calling thread; calls nested inside a chunk run inline, whole.
void parallel_for(std::int64_t begin, std::int64_t end, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t)>& fn);

}  // namespace instructblip
