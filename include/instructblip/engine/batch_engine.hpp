#pragma once
// BatchEngine: continuous batching of InstructBLIP generations on one loaded model.
//
// Requests (an image, an instruction, GenerationConfig) are submitted from any thread. Their images
// are decoded and preprocessed on the engine's preprocessing threads, ahead of the model. One model
// thread then runs, in a loop:
//   * admission: waiting requests whose rows (num_beams, or num_return_sequences when sampling)
//     fit in EngineOptions::max_rows join the running batch; their images go through the vision
//     encoder together, then the Q-Former (grouped by instruction length) and the language model's
//     prompt (T5 encoder / LLaMA prefill) per request;
//   * one decoding step for every running request at once (LanguageModel::step_batch: one pass
//     over the weights serves all rows);
//   * a request that finishes (EOS, max_new_tokens, stop, cancel) leaves at once, and its rows go
//     to the next waiting request.
// Results: a std::shared_future per request, and optionally a callback with every new token and the
// text it completes (UTF-8 never split).
//
// Answers do not depend on the batch: every per-row computation of a step is made exactly as for a
// batch of one (LanguageModel::step_batch), so for the same image, instruction and settings a
// request's sequences equal those of InstructBlipForConditionalGeneration::generate() on that
// request alone, for greedy search, beam search and sampling with a seed. (Sampling without a seed
// uses generate()'s fixed default seed, so it is reproducible too.)
#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/models/instructblip.hpp"
#include "instructblip/processing/image.hpp"
#include "instructblip/processing/processor.hpp"

namespace instructblip {

/// One generation request. Exactly one of `image_bytes` (an encoded file: JPEG, PNG, WebP, ...;
/// decoded on a preprocessing thread), `image_path` (read and decoded there) or `image` (already
/// decoded) is set.
struct EngineRequest {
  std::vector<std::uint8_t> image_bytes;
  std::string image_path;
  std::optional<Image> image;
  /// The instruction, given to both tokenizers as InstructBlipProcessor does.
  std::string prompt;
  /// Unset: the model's generation_config().
  std::optional<GenerationConfig> generation;
  /// Strings that end a sequence when its decoded text contains them (OpenAI's `stop`); the text
  /// returned is cut before the first one. Greedy search / sampling only.
  std::vector<std::string> stop;
  /// Free text carried into the result and the callbacks (e.g. a manifest id).
  std::string tag;
};

/// Why a returned sequence ended (OpenAI's finish_reason).
enum class FinishReason { Stop, Length, Cancelled };
const char* finish_reason_name(FinishReason reason);  // "stop", "length", "cancelled"

struct EngineResult {
  std::uint64_t id = 0;
  std::string tag;
  /// Empty on success; else one line saying what failed (undecodable image, bad settings, ...).
  std::string error;
  /// The error's kind: "invalid_request" (bad image, prompt or settings), "cancelled", "internal".
  std::string error_type;
  /// As InstructBlipForConditionalGeneration::generate() returns them.
  std::vector<std::vector<std::int64_t>> sequences;
  std::vector<float> sequences_scores;
  /// processor.batch_decode(sequences, skip_special_tokens=true) (ids the tokenizer has no entry
  /// for left out, as TextStreamer does), cut at a stop string.
  std::vector<std::string> texts;
  std::vector<FinishReason> finish_reasons;
  /// Language-model prompt positions (query tokens + instruction tokens) and generated tokens
  /// (over all returned sequences, EOS included, padding excluded).
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  /// This request's share of each stage: vision / Q-Former per request of their batch, prefill
  /// its own, decode the steps it took part in (StageTimings::decode_steps = its steps).
  StageTimings timings;
  double queue_ms = 0;       // submit -> admitted into the batch (includes preprocessing)
  double preprocess_ms = 0;  // image decoding + preprocessing + tokenisation
  double first_token_ms = 0; // submit -> first token
  double total_ms = 0;       // submit -> result

  bool ok() const { return error.empty(); }
};

/// Passed to the token callback after every decoding step of greedy search / sampling, with the
/// new token of each sequence still running, and once more at the end (`final`) with the text held
/// back until then (characters that might start a stop string, the streamer's last characters).
/// Beam search has no final tokens before it ends: it sends only the final event, with the whole
/// texts. For each sequence, the concatenation of its `text` pieces equals EngineResult::texts.
/// A callback that throws cancels its request.
struct EngineTokens {
  std::uint64_t id = 0;
  const std::string* tag = nullptr;
  /// The sequences (indices into EngineResult::sequences) this event is about.
  std::vector<std::int64_t> rows;
  /// Per entry of `rows`: the new id (empty in the final event).
  std::vector<std::int64_t> tokens;
  /// Per entry of `rows`: the text that became final (possibly empty; never a partial UTF-8
  /// sequence).
  std::vector<std::string> text;
  bool final = false;
};

struct EngineOptions {
  /// Rows (batch x beams) decoded together. A request needing more rows than this is refused.
  std::int64_t max_rows = 8;
  /// Requests accepted but not yet finished beyond which submit() throws EngineBusy; 0: unbounded.
  std::int64_t max_queue = 0;
  /// Images decoded / preprocessed ahead of the model (requests held in memory ready to run).
  std::int64_t prefetch = 16;
  /// Preprocessing threads (image decoding, resizing, tokenisation).
  int preprocess_threads = 1;
  /// Largest number of new images encoded by one vision-encoder call.
  std::int64_t max_image_batch = 8;
  /// Passed to the image decoder: larger images become error results.
  ImageLoadOptions image_options;
  /// Largest encoded image accepted (bytes or file size); 0: no limit.
  std::uint64_t max_image_bytes = 0;
  ProcessorOptions processor_options;
};

/// submit() when EngineOptions::max_queue requests are already waiting or running.
class EngineBusy : public Error {
  using Error::Error;
};

struct EngineStats {
  std::int64_t waiting = 0;      // submitted, not yet admitted
  std::int64_t running = 0;      // requests in the batch
  std::int64_t active_rows = 0;  // rows in the batch
  std::uint64_t completed = 0, failed = 0, cancelled = 0;
  std::uint64_t steps = 0;       // batched decoding steps run
  std::uint64_t step_rows = 0;   // sum over steps of the rows they decoded
};

class BatchEngine {
 public:
  using TokenCallback = std::function<void(const EngineTokens&)>;

  /// The model and processor must outlive the engine. Starts the model thread and the
  /// preprocessing threads. InvalidArgument for options out of range.
  BatchEngine(const VisionLanguageModel& model, const VisionLanguageProcessor& processor,
              EngineOptions options = {});
  /// shutdown(), then joins the threads.
  ~BatchEngine();
  BatchEngine(const BatchEngine&) = delete;
  BatchEngine& operator=(const BatchEngine&) = delete;

  struct Handle {
    std::uint64_t id = 0;
    std::shared_future<EngineResult> result;
  };

  /// Queues a request. Settings are resolved and checked here (InvalidArgument: the request is
  /// not queued); image problems surface later as an error result. EngineBusy when the queue is
  /// full; IoError after shutdown(). `on_tokens` runs on the model thread: keep it short, never
  /// call back into the engine from it except cancel().
  Handle submit(EngineRequest request, TokenCallback on_tokens = {});

  /// Ends a request: a waiting one never runs, a running one leaves the batch at the next step.
  /// Its result has error_type "cancelled" (with the sequences so far, finish reason Cancelled).
  /// Returns false when the id is unknown or already finished.
  bool cancel(std::uint64_t id);

  /// Stops accepting requests; with `finish_pending` the queued and running ones complete first,
  /// else they are cancelled. Blocks until the model thread is idle. Idempotent.
  void shutdown(bool finish_pending = true);

  EngineStats stats() const;
  const EngineOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace instructblip
