#include "instructblip/core/thread_pool.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace instructblip {

namespace {

thread_local bool t_in_worker = false;

// Waiting threads spin this many pause instructions (tens of microseconds) before sleeping on a
// condition variable: decoding issues hundreds of short parallel_for calls per token, and a
// futex wake-up per call would cost more than the work of many of them.
constexpr int kSpinIterations = 4000;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

class Pool {
 public:
  Pool() : target_(int(std::max(1u, std::thread::hardware_concurrency()))) {}
  ~Pool() { stop(); }

  int size() const { return target_.load(); }
  void resize(int n) {
    std::lock_guard<std::mutex> job(job_mutex_);
    stop();
    target_ = std::max(1, n);
  }

  // Returns false when the pool is busy (another caller) so the caller runs inline.
  bool run(std::int64_t chunks, const std::function<void(std::int64_t)>& task) {
    std::unique_lock<std::mutex> job(job_mutex_, std::try_to_lock);
    if (!job.owns_lock()) return false;
    start();
    {
      std::lock_guard<std::mutex> lk(m_);
      task_ = &task;
      chunks_ = chunks;
      next_.store(0);
      pending_.store(std::int64_t(workers_.size()));
      error_ = nullptr;
      ++generation_;
      published_.store(generation_, std::memory_order_release);  // spinning workers start here
    }
    cv_.notify_all();
    work();  // the caller takes chunks too
    for (int i = 0; i < kSpinIterations && pending_.load(std::memory_order_acquire) != 0; ++i) cpu_relax();
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void start() {
    const int want = target_.load() - 1;
    if (int(workers_.size()) == want) return;
    stop();
    quit_ = false;
    quitting_.store(false);
    // New workers wait for the NEXT job: the generation published so far is not theirs.
    std::uint64_t current;
    {
      std::lock_guard<std::mutex> lk(m_);
      current = generation_;
    }
    for (int i = 0; i < want; ++i) workers_.emplace_back([this, current] { loop(current); });
  }
  void stop() {
    {
      std::lock_guard<std::mutex> lk(m_);
      quit_ = true;
      quitting_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }
  void work() {
    for (;;) {
      std::int64_t c = next_.fetch_add(1);
      if (c >= chunks_) return;
      try {
        (*task_)(c);
      } catch (...) {
        std::lock_guard<std::mutex> lk(m_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }
  void loop(std::uint64_t seen) {
    t_in_worker = true;
    for (;;) {
      // Spin briefly for the next job (published_ is stored with release after the job's fields),
      // then sleep.
      int spins = 0;
      while (published_.load(std::memory_order_acquire) == seen && !quitting_.load(std::memory_order_acquire) &&
             spins < kSpinIterations) {
        cpu_relax();
        ++spins;
      }
      if (quitting_.load(std::memory_order_acquire)) return;
      const std::uint64_t now = published_.load(std::memory_order_acquire);
      if (now != seen) {
        seen = now;
      } else {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return quit_ || generation_ != seen; });
        if (quit_) return;
        seen = generation_;
      }
      work();
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(m_);  // the caller checks pending_ under m_ before sleeping
        done_cv_.notify_all();
      }
    }
  }

  std::atomic<int> target_;
  std::mutex job_mutex_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(std::int64_t)>* task_ = nullptr;
  std::int64_t chunks_ = 0;
  std::atomic<std::int64_t> next_{0};
  std::atomic<std::int64_t> pending_{0};
  std::uint64_t generation_ = 0;                // guarded by m_
  std::atomic<std::uint64_t> published_{0};     // generation_, readable without m_
  bool quit_ = false;
  std::atomic<bool> quitting_{false};
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }

void parallel_for(std::int64_t begin, std::int64_t end, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t)>& fn) {
  const std::int64_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<std::int64_t>(1, grain);
  const int threads = num_threads();
  std::int64_t chunks = std::min<std::int64_t>(threads, (n + grain - 1) / grain);
  if (chunks <= 1 || t_in_worker) {
    fn(begin, end);
    return;
  }
  const std::int64_t per = (n + chunks - 1) / chunks;
  chunks = (n + per - 1) / per;
  std::function<void(std::int64_t)> task = [&](std::int64_t c) {
    const std::int64_t b = begin + c * per;
    fn(b, std::min(end, b + per));
  };
  bool was = t_in_worker;
  t_in_worker = true;  // the caller's own chunks must not re-enter the pool
  try {
    if (!pool().run(chunks, task)) {
      // Busy (another caller holds the pool): the same chunks, in turn, on this thread. Running
      // the same chunks (rather than [begin, end) whole) keeps results bit-identical whether or
      // not the pool was free: kernels such as GEMM may round differently on a different split.
      for (std::int64_t c = 0; c < chunks; ++c) task(c);
    }
  } catch (...) {
    t_in_worker = was;
    throw;
  }
  t_in_worker = was;
}

}  // namespace instructblip
