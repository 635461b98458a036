#pragma once
// The two model families, composed exactly as transformers 4.36.2 composes them in forward() and
// generate(): the vision encoder, the Q-Former with its query tokens and projection, and the
// language model (T5, LLaMA or OPT, chosen by config.json).
//   InstructBlipForConditionalGeneration (model_type "instructblip"): the instruction also feeds
//     the Q-Former (qformer_input_ids).
//   Blip2ForConditionalGeneration (model_type "blip-2"): the Q-Former sees only its queries.
// VisionLanguageModel is what both are: from_pretrained() loads either (transformers'
// AutoModelForVision2Seq), and the tools, the BatchEngine and the server work through it.
#include <memory>
#include <optional>
#include <string>

#include "instructblip/config.hpp"
#include "instructblip/generation/generate.hpp"
#include "instructblip/io/checkpoint.hpp"
#include "instructblip/limits.hpp"
#include "instructblip/models/language_model.hpp"
#include "instructblip/models/qformer.hpp"
#include "instructblip/models/vision.hpp"
#include "instructblip/ops/weights.hpp"

namespace instructblip {

struct ProcessorOutput;  // instructblip/processing/processor.hpp

/// Wall-clock milliseconds of each stage of one call.
struct StageTimings {
  double vision_ms = 0;
  double qformer_ms = 0;   // Q-Former + projection + prompt embedding
  double prefill_ms = 0;   // language model: prompt (T5 encoder / LLaMA prefill) and first token
  double decode_ms = 0;    // language model: every later step
  std::int64_t decode_steps = 0;
  double decode_ms_per_token() const { return decode_steps ? decode_ms / double(decode_steps) : 0.0; }
};

/// Intermediate results of generate(), filled when a trace is passed (for --dump and timings).
struct GenerateTrace {
  models::VisionOutput vision;          // last_hidden_state, pooler_output
  Tensor qformer_last_hidden_state;     // [B, Q + T, qformer hidden]
  Tensor language_model_inputs;         // [B, Q, text hidden]
  Tensor first_step_logits;             // [B, vocab]: raw LM logits that choose the first token
  StageTimings timings;
};

/// The language model's prompt: the projected queries followed by the instruction's embeddings.
struct LanguageModelPrompt {
  Tensor inputs_embeds;   // [B, num_query_tokens + T, text hidden] float32
  Tensor attention_mask;  // [B, num_query_tokens + T] int64
};

struct LoadOptions {
  /// Called once per mapped weight file (path, bytes, index, count).
  io::Checkpoint::ProgressFn progress;
  /// Bounds on what forward() / generate() accept (see instructblip/limits.hpp).
  GenerationLimits limits;
  /// How the weight matrices are kept (`--weights f32|bf16|q8_0|q4_0`; per part as
  /// models::WeightPolicy describes). Unset: the format a checkpoint written by save_pretrained()
  /// records ("instructblip.weights" in its safetensors metadata), else f32 (transformers'
  /// float32 numerics). Matrices a checkpoint stores quantised are always used as stored.
  std::optional<ops::WeightFormat> weights;
  /// Under a reduced format: bf16 arithmetic for many-row products (default, as a bf16 model
  /// computes), or false for float32 arithmetic on the stored weights (models::WeightPolicy).
  bool bf16_arithmetic = true;
};

class VisionLanguageModel {
 public:
  /// Loads a HuggingFace checkpoint directory: config.json, generation_config.json (optional) and
  /// model.safetensors or a sharded index. The weights stay memory-mapped (float32 checkpoints are
  /// used in place; bf16 / f16 ones are widened to float32 at load, as transformers loads them
  /// with torch_dtype=float32).
  ///
  /// The checkpoint must match the config exactly (no silent partial load):
  ///  * an invalid or self-inconsistent config.json -> ConfigError naming the key;
  ///  * a missing tensor, one of the wrong shape, or an integer (I64 / U8) tensor where a float
  ///    weight is expected -> TensorError naming the tensor and the file;
  ///  * tensors no part of the model binds -> TensorError naming them. Accepted without being
  ///    bound: the aliases transformers ties to another weight (T5 `language_model.encoder.
  ///    embed_tokens.weight` / `language_model.decoder.embed_tokens.weight` -> `language_model.
  ///    shared.weight`; `language_model.lm_head.weight` of a tied language model -> its input
  ///    embeddings), which must hold exactly the weight they alias (else TensorError), and the
  ///    non-persistent buffers older exports contain and transformers drops on load
  ///    (`qformer.embeddings.position_ids`, LLaMA `...self_attn.rotary_emb.{inv_freq,cos_cached,
  ///    sin_cached}`).
  /// Whether the tokenizers fit the vocabularies is checked by InstructBlipProcessor::from_pretrained.
  /// Loads an InstructBLIP or a BLIP-2 checkpoint, as config.json's model_type says
  /// (transformers' AutoModelForVision2Seq); ConfigError for any other model_type.
  static VisionLanguageModel from_pretrained(const std::string& dir, const LoadOptions& options = {});

  VisionLanguageModel(VisionLanguageModel&&) noexcept;
  VisionLanguageModel& operator=(VisionLanguageModel&&) noexcept;
  virtual ~VisionLanguageModel();

  /// config.json (model_type "instructblip" or "blip-2").
  const InstructBlipConfig& config() const;
  /// True for a BLIP-2 checkpoint: the Q-Former takes no instruction (qformer_input_ids must be
  /// undefined), and the processor has no Q-Former tokenizer.
  bool is_blip2() const;
  /// Generation defaults: the language model's (GenerationConfig::from_model_config, which is what
  /// transformers' InstructBLIP generate() hands to its language model), overlaid with the keys of
  /// the checkpoint's generation_config.json when present (only the keys it sets). Callers copy and
  /// override it. A setting generate() refuses (e.g. diversity_penalty) loads fine and makes
  /// generate() throw InvalidArgument unless the caller resets it.
  const GenerationConfig& generation_config() const;
  const io::Checkpoint& checkpoint() const;
  const models::VisionModel& vision_model() const;
  const models::QFormer& qformer() const;
  const models::QueryProjector& query_projector() const;
  const models::LanguageModel& language_model() const;
  /// The limits forward() / generate() enforce (LoadOptions::limits).
  const GenerationLimits& limits() const;
  /// The weight format the model was loaded with (LoadOptions::weights, resolved).
  ops::WeightFormat weight_format() const;

  /// Writes the model as a checkpoint directory from_pretrained() reads back without converting:
  /// config.json, generation_config.json and the weights as safetensors - one
  /// model.safetensors, or shards of at most `max_shard_bytes` with model.safetensors.index.json.
  /// Matrices kept as q8_0 / q4_0 are written quantised ("<name>.q8_0" + "<name>.q8_0_scale" +
  /// "<name>.shape"; see ops::WeightMatrix), bf16 ones as BF16 and the rest as F32; the metadata
  /// records the weight format. The tokenizer / preprocessor files are not part of the model;
  /// InstructBlipProcessor::save_pretrained writes them (the instructblip-quantize tool does both). The directory is created if
  /// needed; existing weight files in it are replaced. IoError when it cannot be written.
  void save_pretrained(const std::string& dir, std::size_t max_shard_bytes = std::size_t(5) << 30) const;

  struct ForwardOutput {
    Tensor logits;                 // [B, T, vocab] (LLaMA with labels: the last labels.size(1) positions)
    std::optional<float> loss;     // with labels
    models::VisionOutput vision_outputs;
    models::QFormerOutput qformer_outputs;
    Tensor language_model_inputs;  // [B, Q, text hidden]
    models::LMOutput language_model_outputs;
  };

  /// transformers' forward(): pixel_values [B,3,H,W] f32, qformer_input_ids [B,Tq] i64
  /// (InstructBLIP; BLIP-2 takes none: they must be undefined, else InvalidArgument),
  /// qformer_attention_mask [B,Tq] (undefined: ones), input_ids [B,T] i64, attention_mask [B,T]
  /// (undefined: ones), T5 decoder_input_ids / labels (int64, -100 ignored) as transformers takes them.
  /// InvalidArgument, before any computation, for: Tq > qformer_config.max_position_embeddings
  /// (use ProcessorOptions::truncation), ids outside the Q-Former / language-model vocabularies,
  /// num_query_tokens + T > limits().max_prompt_tokens, a decoder length over max_prompt_tokens, or
  /// B > limits().max_rows.
  ///
  /// Thread safety: forward() and generate() are const and keep every intermediate local to the
  /// call; one loaded model may serve any number of threads at once.
  ForwardOutput forward(const Tensor& pixel_values, const Tensor& qformer_input_ids,
                        const Tensor& qformer_attention_mask, const Tensor& input_ids, const Tensor& attention_mask,
                        const Tensor& decoder_input_ids = Tensor(), const Tensor& labels = Tensor(),
                        bool output_hidden_states = false) const;

  /// transformers' generate(): image -> queries -> projection, prepended to the prompt's
  /// embeddings (input_ids undefined: [[bos_token_id]] per image), then the language model
  /// generates with `generation_config`. For checkpoints whose text architectures[0] is spelled
  /// "LLaMAForCausalLM", ids 0 in the output become 2, as transformers does.
  /// Inputs are checked as for forward(); the settings and sizes against limits() as
  /// generation::generate() does (max_length, num_beams, rows, positions, ...).
  generation::GenerateOutput generate(const Tensor& pixel_values, const Tensor& qformer_input_ids,
                                      const Tensor& qformer_attention_mask, const Tensor& input_ids,
                                      const Tensor& attention_mask, const GenerationConfig& generation_config,
                                      const generation::GenerateHooks& hooks = {},
                                      GenerateTrace* trace = nullptr) const;
  /// The same from what InstructBlipProcessor returns (pixel_values, qformer_input_ids /
  /// qformer_attention_mask, input_ids / attention_mask; undefined ones as above):
  ///   auto out = model.generate(processor(image, prompt), model.generation_config());
  generation::GenerateOutput generate(const ProcessorOutput& inputs, const GenerationConfig& generation_config,
                                      const generation::GenerateHooks& hooks = {},
                                      GenerateTrace* trace = nullptr) const;

  // ---- the stages of generate(), for schedulers that batch them differently (BatchEngine) ----
  // generate(pixels, ...) equals generation::generate(language_model(), prompt.inputs_embeds,
  // prompt.attention_mask, ...) with prompt = language_model_prompt(encode_images(pixels), ...),
  // ids 0 mapped to 2 when maps_pad_to_eos(). Each image's result does not depend on the other
  // images of the batch.

  /// The vision encoder: pixel_values [B, 3, H, W] -> last_hidden_state [B, positions, hidden].
  Tensor encode_images(const Tensor& pixel_values) const;
  /// The Q-Former (with the instruction), the projection and the instruction's embeddings for
  /// images already encoded (`image_embeds` [B, positions, vision hidden]); the other inputs and
  /// their checks as for generate().
  LanguageModelPrompt language_model_prompt(const Tensor& image_embeds, const Tensor& qformer_input_ids,
                                            const Tensor& qformer_attention_mask, const Tensor& input_ids,
                                            const Tensor& attention_mask) const;
  /// True for InstructBLIP checkpoints whose text architectures[0] is spelled "LLaMAForCausalLM":
  /// generate() then returns ids 0 as 2, as transformers does (BLIP-2 has no such step).
  bool maps_pad_to_eos() const;

  struct Impl;

 protected:
  explicit VisionLanguageModel(std::unique_ptr<Impl> impl);
  /// Loads `dir`; `expected_model_type` (when not empty) must be config.json's model_type.
  static VisionLanguageModel load(const std::string& dir, const LoadOptions& options,
                                  const std::string& expected_model_type);

 private:
  std::unique_ptr<Impl> impl_;
};

/// InstructBLIP (transformers' InstructBlipForConditionalGeneration).
class InstructBlipForConditionalGeneration : public VisionLanguageModel {
 public:
  /// As VisionLanguageModel::from_pretrained, for model_type "instructblip" only (a BLIP-2
  /// checkpoint is a ConfigError that names Blip2ForConditionalGeneration).
  static InstructBlipForConditionalGeneration from_pretrained(const std::string& dir, const LoadOptions& options = {});

 private:
  explicit InstructBlipForConditionalGeneration(VisionLanguageModel&& m) : VisionLanguageModel(std::move(m)) {}
};

/// BLIP-2 (transformers' Blip2ForConditionalGeneration): the same stages without the instruction
/// input of the Q-Former, so forward() / generate() take transformers' arguments.
class Blip2ForConditionalGeneration : public VisionLanguageModel {
 public:
  /// As VisionLanguageModel::from_pretrained, for model_type "blip-2" only.
  static Blip2ForConditionalGeneration from_pretrained(const std::string& dir, const LoadOptions& options = {});

  /// forward(pixel_values, input_ids, attention_mask, decoder_input_ids, labels): input_ids are
  /// required; T5 takes decoder_input_ids / labels as transformers does; OPT labels [B, L'] align
  /// with the last L' positions (loss over logits[:, -L':][:, :-1] against labels[:, 1:]).
  ForwardOutput forward(const Tensor& pixel_values, const Tensor& input_ids, const Tensor& attention_mask = Tensor(),
                        const Tensor& decoder_input_ids = Tensor(), const Tensor& labels = Tensor(),
                        bool output_hidden_states = false) const;
  /// generate(pixel_values, input_ids, attention_mask): input_ids undefined = [[bos_token_id]] per
  /// image (plain captioning, as transformers does without a prompt).
  generation::GenerateOutput generate(const Tensor& pixel_values, const Tensor& input_ids,
                                      const Tensor& attention_mask, const GenerationConfig& generation_config,
                                      const generation::GenerateHooks& hooks = {},
                                      GenerateTrace* trace = nullptr) const;
  /// From what Blip2Processor returns.
  generation::GenerateOutput generate(const ProcessorOutput& inputs, const GenerationConfig& generation_config,
                                      const generation::GenerateHooks& hooks = {},
                                      GenerateTrace* trace = nullptr) const {
    return VisionLanguageModel::generate(inputs, generation_config, hooks, trace);
  }

 private:
  explicit Blip2ForConditionalGeneration(VisionLanguageModel&& m) : VisionLanguageModel(std::move(m)) {}
};

}  // namespace instructblip
