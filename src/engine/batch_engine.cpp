#include "instructblip/engine/batch_engine.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "instructblip/core/error.hpp"
#include "instructblip/generation/generate.hpp"
#include "instructblip/processing/streamer.hpp"

namespace instructblip {

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
  }
  return "stop";
}

namespace {

using Clock = std::chrono::steady_clock;
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// One line: a multi-line exception message is joined with spaces.
std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

// Rows [i] of tensors [1, ...] (same trailing shape) stacked into [n, ...].
Tensor stack_rows(const std::vector<const Tensor*>& parts) {
  Shape shape = parts.front()->shape();
  shape[0] = std::int64_t(parts.size());
  Tensor out = Tensor::empty(shape, parts.front()->dtype());
  const std::size_t bytes = std::size_t(parts.front()->numel()) * dtype_size(parts.front()->dtype());
  auto* dst = static_cast<std::uint8_t*>(out.raw_mut());
  for (std::size_t i = 0; i < parts.size(); ++i)
      std::memcpy(dst + i * bytes, parts[i]->raw(), bytes);
  return out;
}

// Row `i` of a [n, ...] tensor as a [1, ...] tensor (a copy).
Tensor row_of(const Tensor& t, std::int64_t i) { return t.slice0(i, i + 1).clone(); }

}  // namespace

struct BatchEngine::Impl {
  struct Job {
    std::uint64_t id = 0;
    EngineRequest request;
    TokenCallback on_tokens;
    std::promise<EngineResult> promise;
    GenerationConfig cfg;  // resolved
    std::int64_t rows = 1;
    Clock::time_point submitted, admitted, first_token;
    bool has_first_token = false;
    std::atomic<bool> cancelled{false};
    bool holds_rows = false;  // admitted: counted in running_jobs / running_rows (guarded by mu)
    // after preprocessing
    ProcessorOutput inputs;
    double preprocess_ms = 0;
    // while running
    std::optional<generation::Search> search;
    std::int64_t prompt_tokens = 0;
    StageTimings timings;
    std::vector<TextStreamer> streamers;    // greedy / sampling: one per row
    std::vector<std::size_t> emitted;       // per row: bytes of text delivered to on_tokens
    std::vector<char> row_running;          // per row: neither EOS nor a stop string yet
    std::vector<std::size_t> stop_length;   // per row: sequence length when a stop string matched (0: none)
  };
  using JobPtr = std::shared_ptr<Job>;

  const VisionLanguageModel& model;
  const VisionLanguageProcessor& processor;
  EngineOptions options;

  mutable std::mutex mu;
  std::condition_variable cv_prep;   // preprocessing threads: work or room
  std::condition_variable cv_model;  // model thread: ready jobs or stop
  std::condition_variable cv_idle;   // shutdown(): everything done
  std::deque<JobPtr> incoming;       // submitted, not yet preprocessed
  std::deque<JobPtr> ready;          // preprocessed, waiting for rows
  std::map<std::uint64_t, JobPtr> live;  // every unfinished job
  std::int64_t preprocessing = 0;    // jobs taken by the preprocessing threads
  std::int64_t running_jobs = 0, running_rows = 0;
  bool stopping = false, joined = false;
  std::uint64_t next_id = 1;
  EngineStats counters;
  std::vector<std::thread> prep_threads;
  std::thread model_thread;

  Impl(const VisionLanguageModel& m, const VisionLanguageProcessor& p, EngineOptions o)
      : model(m), processor(p), options(std::move(o)) {}

  // ---- completion ---------------------------------------------------------------------------

  // Fulfils a job's promise and forgets it (any thread).
  void complete(const JobPtr& job, EngineResult result) {
    result.id = job->id;
    result.tag = job->request.tag;
    result.total_ms = ms_between(job->submitted, Clock::now());
    {
      std::lock_guard<std::mutex> lock(mu);
      if (result.error_type == "cancelled") ++counters.cancelled;
      else if (!result.ok()) ++counters.failed;
      else ++counters.completed;
      live.erase(job->id);
      if (job->holds_rows) {  // the rows are free before anyone sees the result
        running_rows -= job->rows;
        --running_jobs;
        job->holds_rows = false;
      }
    }
    job->promise.set_value(std::move(result));
    cv_idle.notify_all();
  }

  void fail(const JobPtr& job, const std::string& type, const std::string& message) {
    EngineResult r;
    r.error_type = type;
    r.error = one_line(message);
    r.preprocess_ms = job->preprocess_ms;
    complete(job, std::move(r));
  }

  // ---- preprocessing threads ----------------------------------------------------------------

  void preprocess(Job& job) {
    const auto t0 = Clock::now();
    EngineRequest& rq = job.request;
    Image image;
    const ImageLoadOptions& io = options.image_options;
    if (rq.image) {
      image = std::move(*rq.image);
      rq.image.reset();
    } else if (!rq.image_path.empty()) {
      if (options.max_image_bytes) {
        struct stat st {};
        if (::stat(rq.image_path.c_str(), &st) == 0 && std::uint64_t(st.st_size) > options.max_image_bytes)
          throw FormatError(rq.image_path + ": " + std::to_string(st.st_size) + " bytes, more than the " +
                            std::to_string(options.max_image_bytes) + " accepted");
      }
      image = load_image(rq.image_path, io);
    } else {
      if (rq.image_bytes.empty()) throw InvalidArgument("the request has no image");
      if (options.max_image_bytes && rq.image_bytes.size() > options.max_image_bytes)
        throw FormatError("the image has " + std::to_string(rq.image_bytes.size()) + " bytes, more than the " +
                          std::to_string(options.max_image_bytes) + " accepted");
      image = decode_image(rq.image_bytes.data(), rq.image_bytes.size(), io, "image");
      std::vector<std::uint8_t>().swap(rq.image_bytes);
    }
    job.inputs = processor(image, rq.prompt, options.processor_options);
    job.prompt_tokens = model.config().num_query_tokens + job.inputs.input_ids.dim(1);
    generation::check_generation_size(job.cfg, 1, job.prompt_tokens, model.language_model().vocab_size(),
                                      model.limits());
    generation::check_model_positions(model.language_model(), job.cfg, job.prompt_tokens);
    job.preprocess_ms = ms_between(t0, Clock::now());
  }

  void prep_loop() {
    for (;;) {
      JobPtr job;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv_prep.wait(lock, [&] {
          return (stopping && incoming.empty()) ||
                 (!incoming.empty() && std::int64_t(ready.size()) + preprocessing < options.prefetch);
        });
        if (incoming.empty()) return;
        job = incoming.front();
        incoming.pop_front();
        ++preprocessing;
      }
      std::string type, error;
      if (job->cancelled.load()) {
        type = "cancelled";
        error = "cancelled before it ran";
      } else {
        try {
          preprocess(*job);
        } catch (const Error& e) {
          type = "invalid_request";
          error = e.what();
        } catch (const std::exception& e) {
          type = "internal";
          error = e.what();
        }
      }
      if (!error.empty()) fail(job, type, error);
      {
        std::lock_guard<std::mutex> lock(mu);
        --preprocessing;
        if (error.empty()) ready.push_back(job);
      }
      cv_model.notify_one();
      cv_prep.notify_all();
      cv_idle.notify_all();
    }
  }

  // ---- the model thread ---------------------------------------------------------------------

  bool idle_locked() const {
    return incoming.empty() && ready.empty() && preprocessing == 0 && running_jobs == 0;
  }

  // Vision encoder over the admitted images together, then Q-Former + prompt per group of equal
  // instruction lengths, then the language model's start() per job.
  void admit(std::vector<JobPtr>& jobs, std::vector<JobPtr>& running) {
    const auto now = Clock::now();
    for (auto& j : jobs) j->admitted = now;
    Tensor embeds;
    try {
      std::vector<const Tensor*> pixels;
      for (auto& j : jobs) pixels.push_back(&j->inputs.pixel_values);
      const auto t0 = Clock::now();
      embeds = model.encode_images(stack_rows(pixels));
      const double share = ms_between(t0, Clock::now()) / double(jobs.size());
      for (auto& j : jobs) j->timings.vision_ms = share;
    } catch (const std::exception& e) {
      for (auto& j : jobs) fail(j, dynamic_cast<const Error*>(&e) ? "invalid_request" : "internal", e.what());
      return;
    }
    // groups of equal (Q-Former length, instruction length): their prompts are stacked unpadded
    std::map<std::pair<std::int64_t, std::int64_t>, std::vector<std::size_t>> groups;
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      const ProcessorOutput& in = jobs[i]->inputs;
      groups[{in.qformer_input_ids.defined() ? in.qformer_input_ids.dim(1) : 0, in.input_ids.dim(1)}].push_back(i);
    }
    const models::LanguageModel& lm = model.language_model();
    for (const auto& g : groups) {
      const std::vector<std::size_t>& idx = g.second;
      LanguageModelPrompt prompt;
      try {
        std::vector<const Tensor*> img, qid, qmask, ids, mask;
        std::vector<Tensor> img_rows;
        img_rows.reserve(idx.size());
        for (std::size_t i : idx) {
          img_rows.push_back(row_of(embeds, std::int64_t(i)));
          img.push_back(&img_rows.back());
          const ProcessorOutput& in = jobs[i]->inputs;
          qid.push_back(&in.qformer_input_ids);
          qmask.push_back(&in.qformer_attention_mask);
          ids.push_back(&in.input_ids);
          mask.push_back(&in.attention_mask);
        }
        const bool has_q = jobs[idx.front()]->inputs.qformer_input_ids.defined();
        const auto t0 = Clock::now();
        prompt = model.language_model_prompt(stack_rows(img), has_q ? stack_rows(qid) : Tensor(),
                                             has_q ? stack_rows(qmask) : Tensor(), stack_rows(ids), stack_rows(mask));
        const double share = ms_between(t0, Clock::now()) / double(idx.size());
        for (std::size_t i : idx) jobs[i]->timings.qformer_ms = share;
      } catch (const std::exception& e) {
        for (std::size_t i : idx) fail(jobs[i], dynamic_cast<const Error*>(&e) ? "invalid_request" : "internal", e.what());
        continue;
      }
      for (std::size_t n = 0; n < idx.size(); ++n) {
        const JobPtr& job = jobs[idx[n]];
        try {
          const auto t0 = Clock::now();
          auto state = lm.start(row_of(prompt.inputs_embeds, std::int64_t(n)),
                                row_of(prompt.attention_mask, std::int64_t(n)),
                                generation::initial_cache_tokens(job->cfg));
          job->search.emplace(lm, std::move(state), 1, job->cfg);
          job->timings.prefill_ms += ms_between(t0, Clock::now());
          job->inputs = ProcessorOutput();  // the pixels are no longer needed
          const std::int64_t rows = job->search->rows();
          job->row_running.assign(std::size_t(rows), 1);
          job->stop_length.assign(std::size_t(rows), 0);
          // Text is followed while generating only for a callback or stop strings (the streamer
          // decodes the running sequence at every token).
          if (job->cfg.num_beams == 1 && (job->on_tokens || !job->request.stop.empty())) {
            job->emitted.assign(std::size_t(rows), 0);
            for (std::int64_t r = 0; r < rows; ++r) job->streamers.emplace_back(processor.tokenizer());
          }
          running.push_back(job);
        } catch (const std::exception& e) {
          fail(job, dynamic_cast<const Error*>(&e) ? "invalid_request" : "internal", e.what());
        }
      }
    }
  }

  // The request's callback; one that throws cancels its request (the engine goes on).
  void notify(Job& job, const EngineTokens& ev) {
    if (!job.on_tokens) return;
    try {
      job.on_tokens(ev);
    } catch (...) {
      job.cancelled.store(true);
    }
  }

  // Text that is final for row r (UTF-8 whole, no partial stop string), and whether a stop
  // string has matched (then the text is cut before it).
  std::string safe_text(Job& job, std::size_t r, bool* stopped) {
    std::string text = job.streamers[r].printed();
    *stopped = false;
    const auto& stops = job.request.stop;
    if (stops.empty()) return text;
    std::size_t cut = std::string::npos;
    for (const std::string& s : stops)
      if (!s.empty()) cut = std::min(cut, text.find(s));
    if (cut != std::string::npos) {
      *stopped = true;
      return text.substr(0, cut);
    }
    // hold back a suffix that may be the start of a stop string
    std::size_t hold = 0;
    for (const std::string& s : stops)
      for (std::size_t n = std::min(s.size() - 1, text.size()); n > hold; --n)
        if (text.compare(text.size() - n, n, s, 0, n) == 0) {
          hold = n;
          break;
        }
    return text.substr(0, text.size() - hold);
  }

  // After a greedy / sampling step: stream the new tokens, apply stop strings. True when every
  // row has ended (EOS or stop string).
  bool after_step(Job& job) {
    const auto& seqs = job.search->running_sequences();
    const auto& unfinished = job.search->unfinished_rows();
    EngineTokens ev;
    ev.id = job.id;
    ev.tag = &job.request.tag;
    bool any_running = false;
    for (std::size_t r = 0; r < seqs.size(); ++r) {
      if (!job.row_running[r]) continue;
      const std::int64_t tok = seqs[r].back();
      job.streamers[r].put(tok);
      bool stopped = false;
      const std::string text = safe_text(job, r, &stopped);
      ev.rows.push_back(std::int64_t(r));
      ev.tokens.push_back(tok);
      ev.text.push_back(text.size() > job.emitted[r] ? text.substr(job.emitted[r]) : std::string());
      job.emitted[r] = std::max(job.emitted[r], text.size());
      if (stopped) job.stop_length[r] = seqs[r].size();
      if (stopped || !unfinished[r]) job.row_running[r] = 0;
      any_running = any_running || job.row_running[r];
    }
    if (!ev.rows.empty()) notify(job, ev);
    return !any_running;
  }

  void finish_job(const JobPtr& job, bool cancelled) {
    generation::GenerateOutput out = job->search->finish(cancelled);
    EngineResult r;
    if (model.maps_pad_to_eos())
      for (auto& row : out.sequences)
        for (auto& id : row)
          if (id == 0) id = 2;
    const GenerationConfig& cfg = job->cfg;
    const bool beam = cfg.num_beams > 1;
    auto is_eos = [&](std::int64_t t) {
      return std::find(cfg.eos_token_id.begin(), cfg.eos_token_id.end(), t) != cfg.eos_token_id.end();
    };
    for (std::size_t i = 0; i < out.sequences.size(); ++i) {
      auto& seq = out.sequences[i];
      if (!beam && job->stop_length[i]) seq.resize(job->stop_length[i]);
      std::int64_t n = 0;
      bool eos = false;
      for (std::size_t t = 1; t < seq.size() && !eos; ++t, ++n) eos = is_eos(seq[t]);
      r.completion_tokens += n;
      r.finish_reasons.push_back(cancelled ? FinishReason::Cancelled
                                 : (eos || (!beam && job->stop_length[i])) ? FinishReason::Stop
                                                                           : FinishReason::Length);
    }
    // Ids the tokenizer has no entry for (a model's embedding matrix may have more rows than its
    // tokenizer has ids: Flan-T5 32128 vs 32100) have no text, as in TextStreamer.
    std::vector<std::vector<std::int64_t>> known(out.sequences.size());
    const std::int64_t n_ids = processor.tokenizer().size();
    for (std::size_t i = 0; i < known.size(); ++i)
      for (std::int64_t id : out.sequences[i])
        if (id >= 0 && id < n_ids) known[i].push_back(id);
    r.texts = processor.batch_decode(known, /*skip_special_tokens=*/true);
    for (std::string& t : r.texts) {
      std::size_t cut = std::string::npos;
      for (const std::string& s : job->request.stop)
        if (!s.empty()) cut = std::min(cut, t.find(s));
      if (cut != std::string::npos) t.resize(cut);
    }
    // the rest of the text to the callback: held-back characters, or everything (beam search)
    if (job->on_tokens) {
      EngineTokens ev;
      ev.id = job->id;
      ev.tag = &job->request.tag;
      for (std::size_t i = 0; i < r.texts.size(); ++i) {
        const std::size_t done = job->emitted.empty() ? 0 : job->emitted[i];
        if (r.texts[i].size() > done) {
          ev.rows.push_back(std::int64_t(i));
          ev.text.push_back(r.texts[i].substr(done));
        }
      }
      ev.final = true;
      notify(*job, ev);
    }
    r.sequences = std::move(out.sequences);
    r.sequences_scores = std::move(out.sequences_scores);
    r.prompt_tokens = job->prompt_tokens;
    r.timings = job->timings;
    r.preprocess_ms = job->preprocess_ms;
    r.queue_ms = ms_between(job->submitted, job->admitted);
    r.first_token_ms = job->has_first_token ? ms_between(job->submitted, job->first_token) : 0.0;
    if (cancelled) {
      r.error_type = "cancelled";
      r.error = "cancelled";
    }
    job->search.reset();
    complete(job, std::move(r));
  }

  void model_loop() {
    std::vector<JobPtr> running;
    const models::LanguageModel& lm = model.language_model();
    for (;;) {
      std::vector<JobPtr> admitted;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv_model.wait(lock, [&] {
          return !running.empty() || !ready.empty() || (stopping && idle_locked());
        });
        if (running.empty() && ready.empty() && stopping && idle_locked()) return;
        // admission: FIFO, as long as the rows fit
        while (!ready.empty() && std::int64_t(admitted.size()) < options.max_image_batch &&
               running_rows + ready.front()->rows <= options.max_rows) {
          JobPtr j = ready.front();
          ready.pop_front();
          running_rows += j->rows;
          ++running_jobs;
          j->holds_rows = true;
          admitted.push_back(std::move(j));
        }
      }
      cv_prep.notify_all();  // room in `ready`
      // cancelled while waiting
      std::vector<JobPtr> keep;
      for (auto& j : admitted) {
        if (j->cancelled.load()) {
          fail(j, "cancelled", "cancelled before it ran");
        } else {
          keep.push_back(j);
        }
      }
      if (!keep.empty()) admit(keep, running);
      // cancelled while running
      for (auto it = running.begin(); it != running.end();) {
        if ((*it)->cancelled.load()) {
          finish_job(*it, /*cancelled=*/true);
          it = running.erase(it);
        } else {
          ++it;
        }
      }
      if (running.empty()) continue;
      step(lm, running);
    }
  }

  // One decoding step of every running job: decoder-only prefills alone, the rest together.
  void step(const models::LanguageModel& lm, std::vector<JobPtr>& running) {
    std::vector<JobPtr> first, rest;
    for (auto& j : running) (j->search->steps() == 0 && !lm.is_encoder_decoder() ? first : rest).push_back(j);
    std::vector<JobPtr> ended;
    for (auto* part : {&first, &rest}) {
      if (part->empty()) continue;
      std::vector<models::LMState*> states;
      std::vector<std::vector<std::int64_t>> tokens;
      std::int64_t rows = 0;
      for (auto& j : *part) {
        states.push_back(&j->search->state());
        tokens.push_back(j->search->next_inputs());
        rows += j->search->rows();
      }
      std::vector<Tensor> logits;
      const auto t0 = Clock::now();
      try {
        logits = lm.step_batch(states, tokens);
      } catch (const std::exception& e) {
        for (auto& j : *part) {
          fail(j, dynamic_cast<const Error*>(&e) ? "invalid_request" : "internal", e.what());
          ended.push_back(j);
        }
        continue;
      }
      const double ms = ms_between(t0, Clock::now());
      {
        std::lock_guard<std::mutex> lock(mu);
        ++counters.steps;
        counters.step_rows += std::uint64_t(rows);
      }
      for (std::size_t i = 0; i < part->size(); ++i) {
        const JobPtr& j = (*part)[i];
        const double share = ms * double(j->search->rows()) / double(rows);
        if (j->search->steps() == 0) {
          j->timings.prefill_ms += share;
        } else {
          j->timings.decode_ms += share;
          ++j->timings.decode_steps;
        }
        try {
          bool over = j->search->advance(logits[i]);
          if (!j->has_first_token) {
            j->has_first_token = true;
            j->first_token = Clock::now();
          }
          if (!j->streamers.empty()) over = after_step(*j) || over;
          if (over) {
            finish_job(j, false);
            ended.push_back(j);
          }
        } catch (const std::exception& e) {
          fail(j, dynamic_cast<const Error*>(&e) ? "invalid_request" : "internal", e.what());
          ended.push_back(j);
        }
      }
    }
    if (ended.empty()) return;
    running.erase(std::remove_if(running.begin(), running.end(),
                                 [&](const JobPtr& j) { return std::find(ended.begin(), ended.end(), j) != ended.end(); }),
                  running.end());
  }
};

BatchEngine::BatchEngine(const VisionLanguageModel& model, const VisionLanguageProcessor& processor,
                         EngineOptions options)
    : impl_(std::make_unique<Impl>(model, processor, std::move(options))) {
  const EngineOptions& o = impl_->options;
  if (o.max_rows < 1) throw InvalidArgument("EngineOptions::max_rows must be >= 1");
  if (o.max_queue < 0) throw InvalidArgument("EngineOptions::max_queue must be >= 0");
  if (o.prefetch < 1) throw InvalidArgument("EngineOptions::prefetch must be >= 1");
  if (o.preprocess_threads < 1) throw InvalidArgument("EngineOptions::preprocess_threads must be >= 1");
  if (o.max_image_batch < 1) throw InvalidArgument("EngineOptions::max_image_batch must be >= 1");
  if (o.max_rows > model.limits().max_rows)
    throw InvalidArgument("EngineOptions::max_rows (" + std::to_string(o.max_rows) + ") exceeds the model's limit (" +
                          std::to_string(model.limits().max_rows) + ")");
  Impl* impl = impl_.get();
  for (int i = 0; i < o.preprocess_threads; ++i) impl->prep_threads.emplace_back([impl] { impl->prep_loop(); });
  impl->model_thread = std::thread([impl] { impl->model_loop(); });
}

BatchEngine::~BatchEngine() {
  try {
    shutdown(false);
  } catch (...) {
  }
}

BatchEngine::Handle BatchEngine::submit(EngineRequest request, TokenCallback on_tokens) {
  Impl& m = *impl_;
  auto job = std::make_shared<Impl::Job>();
  const GenerationConfig& cfg = request.generation ? *request.generation : m.model.generation_config();
  job->cfg = generation::resolve_generation_config(cfg, m.model.language_model().is_encoder_decoder(),
                                                   m.model.limits());
  job->rows = job->cfg.num_beams > 1 ? job->cfg.num_beams : job->cfg.num_return_sequences;
  if (job->rows > m.options.max_rows)
    throw InvalidArgument("the request needs " + std::to_string(job->rows) + " rows (num_beams / " +
                          "num_return_sequences), more than the engine decodes together (max_rows " +
                          std::to_string(m.options.max_rows) + ")");
  if (!request.stop.empty() && job->cfg.num_beams > 1)
    throw InvalidArgument("stop strings apply to greedy search and sampling, not to beam search");
  int sources = int(!request.image_bytes.empty()) + int(!request.image_path.empty()) + int(request.image.has_value());
  if (sources != 1) throw InvalidArgument("a request needs exactly one of image_bytes, image_path, image");
  job->request = std::move(request);
  job->on_tokens = std::move(on_tokens);
  job->submitted = Clock::now();
  Handle h;
  h.result = job->promise.get_future().share();
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (m.stopping) throw IoError("the engine is shut down");
    if (m.options.max_queue && std::int64_t(m.live.size()) >= m.options.max_queue)
      throw EngineBusy("the engine has " + std::to_string(m.live.size()) + " requests in flight (max_queue " +
                       std::to_string(m.options.max_queue) + ")");
    job->id = m.next_id++;
    h.id = job->id;
    m.live[job->id] = job;
    m.incoming.push_back(job);
  }
  m.cv_prep.notify_one();
  return h;
}

bool BatchEngine::cancel(std::uint64_t id) {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    auto it = m.live.find(id);
    if (it == m.live.end()) return false;
    it->second->cancelled.store(true);
  }
  m.cv_model.notify_one();
  return true;
}

void BatchEngine::shutdown(bool finish_pending) {
  Impl& m = *impl_;
  {
    std::unique_lock<std::mutex> lock(m.mu);
    if (m.joined) return;
    m.stopping = true;
    if (!finish_pending)
      for (auto& kv : m.live) kv.second->cancelled.store(true);
  }
  m.cv_prep.notify_all();
  m.cv_model.notify_all();
  for (auto& t : m.prep_threads) t.join();
  m.model_thread.join();
  std::lock_guard<std::mutex> lock(m.mu);
  m.joined = true;
}

EngineStats BatchEngine::stats() const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  EngineStats s = m.counters;
  s.waiting = std::int64_t(m.incoming.size() + m.ready.size()) + m.preprocessing;
  s.running = m.running_jobs;
  s.active_rows = m.running_rows;
  return s;
}

const EngineOptions& BatchEngine::options() const { return impl_->options; }

}  // namespace instructblip
