#pragma once
// Decoding strategies with transformers 4.36.2's semantics: greedy search, multinomial
// sampling, beam search and beam sampling, driven through the LanguageModel interface.
//
// Lengths are counted as transformers counts them: the running sequence starts with one token —
// the decoder start token (encoder-decoder) or the placeholder `bos_token_id` that transformers
// puts in front of an `inputs_embeds` generation (decoder-only; never fed to the model) — and
// that token is part of the returned sequences, of `max_length` and of the repetition-penalty
// history. `max_new_tokens` therefore means `max_length = 1 + max_new_tokens`.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/limits.hpp"
#include "instructblip/models/language_model.hpp"

namespace instructblip::generation {

struct GenerateHooks {
  /// Called after every step of greedy search / sampling with each row's new token (rows that
  /// had already finished receive the pad id). Not called by beam search, whose hypotheses are
  /// only known at the end.
  std::function<void(const std::vector<std::int64_t>& next_tokens)> on_tokens;
  /// Checked before every step; when it reads true, generation stops and returns what it has.
  const std::atomic<bool>* abort = nullptr;
};

struct GenerateOutput {
  /// [batch * num_return_sequences][length], finished rows padded with pad_token_id.
  std::vector<std::vector<std::int64_t>> sequences;
  /// Beam search: the final score of every returned hypothesis.
  std::vector<float> sequences_scores;
  /// With GenerationConfig::output_scores: the processed scores of each step, [rows, vocab].
  std::vector<Tensor> scores;
  /// True when the abort flag stopped generation early.
  bool aborted = false;
  /// Number of decoding steps (model calls) made.
  std::int64_t steps = 0;
};

/// The settings as generate() will use them: validated, `max_length` derived from
/// `max_new_tokens`, `pad_token_id` defaulted to the first EOS id when unset (as transformers
/// does with a warning). Throws InvalidArgument on unusable settings, and on max_length /
/// max_new_tokens / num_beams / num_return_sequences beyond `limits` (naming the setting and the
/// limit). Refuses, naming the field, the settings that cannot be honoured here: diversity_penalty
/// != 0 (group beam search only), encoder_repetition_penalty != 1 and encoder_no_repeat_ngram_size
/// != 0 (they need the encoder's input ids; InstructBLIP generates from inputs_embeds); and, with
/// do_sample, typical_p outside (0, 1], epsilon_cutoff / eta_cutoff outside [0, 1).
GenerationConfig resolve_generation_config(const GenerationConfig& cfg, bool is_encoder_decoder,
                                           const GenerationLimits& limits = {});

/// The size checks generate() makes before running the model, for `batch` prompts of
/// `prompt_length` positions with settings already resolved by resolve_generation_config():
/// rows (batch x beams, or batch x num_return_sequences) <= limits.max_rows, prompt_length <=
/// limits.max_prompt_tokens, rows x (prompt_length + max_length) <= limits.max_total_positions and,
/// with output_scores, rows x (max_length - 1) x vocab x 4 <= limits.max_output_scores_bytes.
/// Throws InvalidArgument naming the quantity and the limit; also when forced_bos_token_id or a
/// forced_eos_token_id is not below `vocab_size`.
void check_generation_size(const GenerationConfig& resolved, std::int64_t batch, std::int64_t prompt_length,
                           std::int64_t vocab_size, const GenerationLimits& limits = {});
/// For a language model with a fixed number of positions (LanguageModel::max_positions(): OPT),
/// InvalidArgument before anything runs when prompt_length + max_length - 1 positions (the prompt
/// and every token the settings allow) do not fit: transformers would fail with an index error
/// once generation got there.
void check_model_positions(const models::LanguageModel& lm, const GenerationConfig& resolved,
                           std::int64_t prompt_length);

/// One generate() call advanced one step at a time by its caller, for schedulers that run many
/// generations together (BatchEngine): the caller runs the language model, the Search does
/// everything else exactly as generate() does (logits processors, sampling, beam bookkeeping,
/// stopping criteria, hooks). generate() itself is
///   Search s(lm, lm.start(embeds, mask, initial_cache_tokens(cfg)), B, cfg, hooks);
///   while (!s.advance(lm.step(s.state(), s.next_inputs()))) {}
///   return s.finish();
/// (checking hooks.abort before each step). Not thread-safe; one Search per generation.
class Search {
 public:
  /// `resolved`: settings as resolve_generation_config() returns them (sizes already checked
  /// with check_generation_size()); `state`: lm.start() for `batch` prompts. Expands the state to
  /// batch x num_beams (or x num_return_sequences) rows, and starts max_time's clock.
  Search(const models::LanguageModel& lm, std::unique_ptr<models::LMState> state, std::int64_t batch,
         const GenerationConfig& resolved, const GenerateHooks& hooks = {});
  Search(Search&&) noexcept;
  Search& operator=(Search&&) noexcept;
  ~Search();

  models::LMState& state();
  /// One token per row to feed to the next step: lm.step(state(), next_inputs()).
  const std::vector<std::int64_t>& next_inputs() const;
  /// Rows of the state (batch x beams, or batch x num_return_sequences).
  std::int64_t rows() const;
  /// Consumes one step's logits ([rows(), vocab] F32); true when generation is over (then
  /// finish()). InvalidArgument for logits of another shape or a call after the end.
  bool advance(const Tensor& logits);
  bool done() const;
  /// Steps consumed so far.
  std::int64_t steps() const;
  /// The running sequences, one per row (greedy / sampling: the final ones once done()).
  const std::vector<std::vector<std::int64_t>>& running_sequences() const;
  /// Greedy search / sampling: per row, 1 while the row has produced no EOS.
  const std::vector<char>& unfinished_rows() const;
  /// The output, as generate() returns it; `aborted` marks an early stop (beam search then
  /// returns its best hypotheses so far). Ends the search.
  GenerateOutput finish(bool aborted = false);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The KV-cache capacity hint generate() passes to LanguageModel::start for these settings.
std::int64_t initial_cache_tokens(const GenerationConfig& resolved);

/// Generates from a prompt given as embeddings (inputs_embeds [B, L, H], attention_mask [B, L]).
/// Besides resolve_generation_config's checks, InvalidArgument when the prompt length L exceeds
/// limits.max_prompt_tokens, the rows (B x beams or B x num_return_sequences) exceed
/// limits.max_rows, rows x (L + max_length) exceeds limits.max_total_positions, or output_scores
/// could exceed limits.max_output_scores_bytes — all checked before the model is run.
///
/// With max_time set, generation stops after the first step that ends more than max_time seconds
/// after decoding started (transformers' MaxTimeCriteria, whose clock starts after the encoder has
/// run and before the first decoding step): at least one token is generated.
///
/// Thread safety: generate() keeps all its state (sequences, RNG, the model's LMState) local to the
/// call, so several threads may call it at once on one (immutable) LanguageModel.
GenerateOutput generate(const models::LanguageModel& lm, const Tensor& inputs_embeds, const Tensor& attention_mask,
                        const GenerationConfig& cfg, const GenerateHooks& hooks = {},
                        const GenerationLimits& limits = {});

}  // namespace instructblip::generation
