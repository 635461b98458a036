#include "instructblip/models/instructblip.hpp"

#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include "instructblip/models/llama.hpp"
#include "instructblip/models/opt.hpp"
#include "instructblip/models/t5.hpp"
#include "instructblip/processing/processor.hpp"
#include "../internal/util.hpp"

namespace instructblip {

namespace {

constexpr const char* kWeightsMetadataKey = "instructblip.weights";

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

using detail::copy_file;
using detail::file_exists;
using detail::same_file;
using detail::over_limit;

Tensor ones_like_ids(const Tensor& ids) {
  Tensor m = Tensor::empty(ids.shape(), DType::I64);
  std::int64_t* p = m.data<std::int64_t>();
  for (std::int64_t i = 0; i < m.numel(); ++i) p[i] = 1;
  return m;
}

Tensor as_int64_mask(const Tensor& mask, const Tensor& ids, const char* what) {
  if (!mask.defined()) return ones_like_ids(ids);
  if (mask.shape() != ids.shape())
    throw InvalidArgument(std::string(what) + " has shape " + shape_str(mask.shape()) + ", its ids " +
                          shape_str(ids.shape()));
  if (mask.dtype() == DType::I64) return mask;
  if (mask.dtype() != DType::F32) throw InvalidArgument(std::string(what) + " must be int64 or float32");
  Tensor m = Tensor::empty(mask.shape(), DType::I64);
  for (std::int64_t i = 0; i < m.numel(); ++i) m.data<std::int64_t>()[i] = mask.f(i) != 0.0f ? 1 : 0;
  return m;
}

// cat(language_model_inputs [B,Q,H], embeds [B,T,H]) along dim 1, and cat(ones(B,Q), mask).
void concat_prompt(const Tensor& lmi, const Tensor& embeds, const Tensor& mask, Tensor* out_embeds, Tensor* out_mask) {
  const std::int64_t B = lmi.dim(0), Q = lmi.dim(1), H = lmi.dim(2), T = embeds.dim(1);
  *out_embeds = Tensor::empty({B, Q + T, H});
  *out_mask = Tensor::empty({B, Q + T}, DType::I64);
  float* e = out_embeds->data<float>();
  std::int64_t* m = out_mask->data<std::int64_t>();
  for (std::int64_t b = 0; b < B; ++b) {
    std::memcpy(e + (b * (Q + T)) * H, lmi.data<float>() + b * Q * H, std::size_t(Q * H) * 4);
    std::memcpy(e + (b * (Q + T) + Q) * H, embeds.data<float>() + b * T * H, std::size_t(T * H) * 4);
    for (std::int64_t q = 0; q < Q; ++q) m[b * (Q + T) + q] = 1;
    for (std::int64_t t = 0; t < T; ++t) m[b * (Q + T) + Q + t] = mask.data<std::int64_t>()[b * T + t];
  }
}

// Forwards to the real language model, recording the first step's logits and step timings.
class TracingLM final : public models::LanguageModel {
 public:
  TracingLM(const models::LanguageModel& lm, GenerateTrace* trace) : lm_(lm), trace_(trace) {}
  std::int64_t vocab_size() const override { return lm_.vocab_size(); }
  std::int64_t hidden_size() const override { return lm_.hidden_size(); }
  bool is_encoder_decoder() const override { return lm_.is_encoder_decoder(); }
  std::optional<std::int64_t> max_positions() const override { return lm_.max_positions(); }
  Tensor embed(const Tensor& ids) const override { return lm_.embed(ids); }
  models::LMOutput forward(const Tensor& e, const Tensor& m, const Tensor& d, const Tensor& l, bool h) const override {
    return lm_.forward(e, m, d, l, h);
  }
  std::unique_ptr<models::LMState> start(const Tensor& e, const Tensor& m, std::int64_t n) const override {
    auto t = Clock::now();
    auto s = lm_.start(e, m, n);
    trace_->timings.prefill_ms += ms_since(t);
    return s;
  }
  Tensor step(models::LMState& s, const std::vector<std::int64_t>& tokens) const override {
    auto t = Clock::now();
    Tensor logits = lm_.step(s, tokens);
    const double ms = ms_since(t);
    if (!first_done_) {
      trace_->first_step_logits = logits.clone();
      trace_->timings.prefill_ms += ms;
      first_done_ = true;
    } else {
      trace_->timings.decode_ms += ms;
      ++trace_->timings.decode_steps;
    }
    return logits;
  }
  void select_rows(models::LMState& s, const std::vector<std::int64_t>& idx) const override {
    auto t = Clock::now();
    lm_.select_rows(s, idx);
    (first_done_ ? trace_->timings.decode_ms : trace_->timings.prefill_ms) += ms_since(t);
  }
  std::vector<std::pair<std::string, Tensor>> named_weights(const std::string& prefix) const override {
    return lm_.named_weights(prefix);
  }
  const std::vector<std::string>& bound_tensor_names() const override { return lm_.bound_tensor_names(); }
  std::vector<std::pair<std::string, std::string>> tied_aliases(const std::string& prefix) const override {
    return lm_.tied_aliases(prefix);
  }

 private:
  const models::LanguageModel& lm_;
  GenerateTrace* trace_;
  mutable bool first_done_ = false;
};

// Every id of `ids` in [0, vocab); otherwise InvalidArgument naming the input and the vocabulary.
void check_ids(const Tensor& ids, std::int64_t vocab, const char* what, const char* vocab_name) {
  const std::int64_t* p = ids.data<std::int64_t>();
  for (std::int64_t i = 0; i < ids.numel(); ++i)
    if (p[i] < 0 || p[i] >= vocab)
      throw InvalidArgument(std::string(what) + " holds token id " + std::to_string(p[i]) + ", outside [0, " +
                            std::to_string(vocab) + ") (" + vocab_name + ")");
}

std::string quoted_list(const std::vector<std::string>& names, std::size_t max_shown) {
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < max_shown; ++i) out += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > max_shown) out += ", ... (" + std::to_string(names.size() - max_shown) + " more)";
  return out;
}

// `alias` must hold exactly the weight `target` holds (same shape, same values).
void check_alias(const io::Checkpoint& ck, const std::string& alias, const std::string& target) {
  const Tensor a = ck.get(alias);
  if (!ck.contains(target))
    throw TensorError("tensor '" + alias + "' in " + ck.file_of(alias) + " is an alias of '" + target +
                      "', which the checkpoint lacks");
  const Tensor t = ck.get(target);
  if (a.dtype() == DType::I64 || a.dtype() == DType::U8)
    throw TensorError("tensor '" + alias + "' in " + ck.file_of(alias) + " has integer dtype " +
                      dtype_name(a.dtype()) + ", expected a floating-point weight (an alias of '" + target + "')");
  if (a.shape() != t.shape())
    throw TensorError("tensor '" + alias + "' in " + ck.file_of(alias) + " has shape " + shape_str(a.shape()) +
                      ", but it is an alias of '" + target + "' of shape " + shape_str(t.shape()));
  bool same;
  if (a.dtype() == t.dtype()) {
    same = std::memcmp(a.raw(), t.raw(), a.nbytes()) == 0;
  } else {
    const Tensor fa = a.to(DType::F32), ft = t.to(DType::F32);
    same = std::memcmp(fa.raw(), ft.raw(), fa.nbytes()) == 0;
  }
  if (!same)
    throw TensorError("tensor '" + alias + "' in " + ck.file_of(alias) + " differs from '" + target +
                      "', which it aliases (transformers ties the two; a checkpoint holding different values is "
                      "ambiguous)");
}

}  // namespace

struct VisionLanguageModel::Impl {
  InstructBlipConfig config;
  GenerationConfig generation_config;
  io::Checkpoint checkpoint;
  std::unique_ptr<models::VisionModel> vision;
  std::unique_ptr<models::QFormer> qformer;
  std::unique_ptr<models::QueryProjector> projector;
  std::unique_ptr<models::LanguageModel> lm;
  GenerationLimits limits;
  ops::WeightFormat weight_format = ops::WeightFormat::F32;
  std::string source_dir;

  struct Prompt {
    Tensor embeds, mask;
  };

  /// num_query_tokens + T text tokens within limits.max_prompt_tokens.
  void check_prompt_length(std::int64_t T) const {
    const std::int64_t prompt = config.num_query_tokens + T;
    if (prompt > limits.max_prompt_tokens)
      throw InvalidArgument(over_limit("the language-model prompt: num_query_tokens " +
                                           std::to_string(config.num_query_tokens) + " + " + std::to_string(T) +
                                           " input_ids",
                                       prompt, "max_prompt_tokens", limits.max_prompt_tokens));
  }

  /// Every checkpoint tensor is bound by a part, or is a known alias / dropped buffer.
  void check_all_tensors_bound(const std::string& dir) const {
    std::set<std::string> bound;
    auto add = [&bound](const std::string& name) {
      // A matrix may be stored quantised: "<name>.q8_0" + "<name>.q8_0_scale" + "<name>.shape".
      for (const std::string& n : models::matrix_storage_names(name)) bound.insert(n);
    };
    for (const auto& s : models::VisionModel::tensor_specs(config.vision_config, "vision_model.")) add(s.first);
    for (const auto& s : models::QFormer::tensor_specs(config.qformer_config, "qformer.")) add(s.first);
    for (const auto& s : models::QueryProjector::tensor_specs(config, "")) add(s.first);
    for (const std::string& n : lm->bound_tensor_names()) add(n);

    std::map<std::string, std::string> aliases;  // alias -> the weight it is tied to
    for (auto& a : lm->tied_aliases("language_model.")) aliases.insert(std::move(a));
    // Non-persistent buffers of transformers 4.36 that older exports saved; transformers drops them.
    static const std::regex llama_buffer(
        R"(language_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.(inv_freq|cos_cached|sin_cached))");

    std::vector<std::string> unbound;
    for (const std::string& name : checkpoint.names()) {
      if (bound.count(name)) continue;
      auto alias = aliases.find(name);
      if (alias != aliases.end()) {
        check_alias(checkpoint, name, alias->second);
        continue;
      }
      if (name == "qformer.embeddings.position_ids") continue;
      if (config.is_llama() && std::regex_match(name, llama_buffer)) continue;
      unbound.push_back(name);
    }
    if (!unbound.empty())
      throw TensorError(dir + ": " + std::to_string(unbound.size()) + " tensor" + (unbound.size() > 1 ? "s" : "") +
                        " in the checkpoint " + (unbound.size() > 1 ? "are" : "is") +
                        " not used by the model config.json describes: " + quoted_list(unbound, 8) +
                        " (weights of another architecture or size, or a config.json that does not belong to them)");
  }

  struct Text {
    Tensor input_ids, mask, qformer_mask;  // qformer_mask undefined without qformer_input_ids
  };

  // Everything about the text of B images, checked before the (expensive) vision encoder runs.
  Text check_text(std::int64_t B, const Tensor& qformer_input_ids, const Tensor& qformer_attention_mask,
                  const Tensor& input_ids_in, const Tensor& attention_mask_in) const {
    if (B > limits.max_rows)
      throw InvalidArgument(over_limit("the image batch", B, "max_rows", limits.max_rows));
    if (qformer_input_ids.defined() && config.is_blip2())
      throw InvalidArgument("qformer_input_ids given to a BLIP-2 model: its Q-Former takes no instruction (only "
                            "InstructBLIP checkpoints do)");
    if (qformer_input_ids.defined()) {
      if (qformer_input_ids.dtype() != DType::I64 || qformer_input_ids.ndim() != 2 || qformer_input_ids.dim(0) != B)
        throw InvalidArgument("qformer_input_ids must be int64 [B, T] with B = " + std::to_string(B) + ", got " +
                              dtype_name(qformer_input_ids.dtype()) + " " + shape_str(qformer_input_ids.shape()));
      const std::int64_t max_pos = config.qformer_config.max_position_embeddings;
      if (qformer_input_ids.dim(1) > max_pos)
        throw InvalidArgument("qformer_input_ids has " + std::to_string(qformer_input_ids.dim(1)) +
                              " tokens, more than the Q-Former accepts (qformer_config.max_position_embeddings = " +
                              std::to_string(max_pos) +
                              "); shorten the instruction or encode it with ProcessorOptions::truncation");
      check_ids(qformer_input_ids, config.qformer_config.vocab_size, "qformer_input_ids", "qformer_config.vocab_size");
    }
    Text t;
    t.input_ids = input_ids_in;
    if (!t.input_ids.defined()) {
      const auto bos = config.text_bos_token_id();
      if (!bos) throw InvalidArgument("input_ids not given and the text config has no bos_token_id");
      t.input_ids = Tensor::from_vector({B, 1}, std::vector<std::int64_t>(std::size_t(B), *bos));
    }
    if (t.input_ids.ndim() != 2 || t.input_ids.dim(0) != B || t.input_ids.dtype() != DType::I64)
      throw InvalidArgument("input_ids must be int64 [B, T] with B = " + std::to_string(B) + ", got " +
                            shape_str(t.input_ids.shape()));
    check_prompt_length(t.input_ids.dim(1));
    check_ids(t.input_ids, lm->vocab_size(), "input_ids", "the language model's vocab_size");
    t.mask = as_int64_mask(attention_mask_in, t.input_ids, "attention_mask");
    if (qformer_input_ids.defined())
      t.qformer_mask = as_int64_mask(qformer_attention_mask, qformer_input_ids, "qformer_attention_mask");
    return t;
  }

  static void check_pixels(const Tensor& pixel_values) {
    if (!pixel_values.defined() || pixel_values.ndim() != 4)
      throw InvalidArgument("pixel_values must be [B, 3, H, W], got " +
                            (pixel_values.defined() ? shape_str(pixel_values.shape()) : std::string("undefined")));
  }

  // queries -> projection -> cat with the prompt's embeddings, from the vision encoder's output
  Prompt from_image_embeds(const Tensor& image_embeds, const Tensor& qformer_input_ids, const Text& text,
                           bool hidden, models::QFormerOutput* qformer_out, Tensor* lmi_out) const {
    *qformer_out =
        qformer->forward(projector->query_tokens(), qformer_input_ids, text.qformer_mask, image_embeds, hidden);
    *lmi_out = projector->project(qformer_out->last_hidden_state);
    Prompt p;
    concat_prompt(*lmi_out, lm->embed(text.input_ids), text.mask, &p.embeds, &p.mask);
    return p;
  }

  // image -> queries -> projection -> cat with the prompt's embeddings
  Prompt prepare(const Tensor& pixel_values, const Tensor& qformer_input_ids, const Tensor& qformer_attention_mask,
                 const Tensor& input_ids_in, const Tensor& attention_mask_in, bool hidden,
                 models::VisionOutput* vision_out, models::QFormerOutput* qformer_out, Tensor* lmi_out,
                 StageTimings* timings) const {
    check_pixels(pixel_values);
    const Text text =
        check_text(pixel_values.dim(0), qformer_input_ids, qformer_attention_mask, input_ids_in, attention_mask_in);
    auto t = Clock::now();
    *vision_out = vision->forward(pixel_values, hidden);
    if (timings) timings->vision_ms += ms_since(t);
    t = Clock::now();
    Prompt p = from_image_embeds(vision_out->last_hidden_state, qformer_input_ids, text, hidden, qformer_out, lmi_out);
    if (timings) timings->qformer_ms += ms_since(t);
    return p;
  }
};

VisionLanguageModel::VisionLanguageModel(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
VisionLanguageModel::VisionLanguageModel(
    VisionLanguageModel&&) noexcept = default;
VisionLanguageModel& VisionLanguageModel::operator=(
    VisionLanguageModel&&) noexcept = default;
VisionLanguageModel::~VisionLanguageModel() = default;

VisionLanguageModel VisionLanguageModel::from_pretrained(const std::string& dir, const LoadOptions& options) {
  return load(dir, options, "");
}

InstructBlipForConditionalGeneration InstructBlipForConditionalGeneration::from_pretrained(const std::string& dir,
                                                                                         const LoadOptions& options) {
  return InstructBlipForConditionalGeneration(load(dir, options, "instructblip"));
}

Blip2ForConditionalGeneration Blip2ForConditionalGeneration::from_pretrained(const std::string& dir,
                                                                           const LoadOptions& options) {
  return Blip2ForConditionalGeneration(load(dir, options, "blip-2"));
}

VisionLanguageModel VisionLanguageModel::load(const std::string& dir, const LoadOptions& options,
                                              const std::string& expected_model_type) {
  auto impl = std::make_unique<Impl>();
  options.limits.validate();
  impl->limits = options.limits;
  impl->config = InstructBlipConfig::from_json_file(dir + "/config.json");
  if (!expected_model_type.empty() && impl->config.model_type != expected_model_type)
    throw ConfigError(dir + "/config.json: model_type: \"" + impl->config.model_type + "\" is " +
                      (impl->config.is_blip2() ? "a BLIP-2 checkpoint: load it with Blip2ForConditionalGeneration"
                                               : "an InstructBLIP checkpoint: load it with "
                                                 "InstructBlipForConditionalGeneration") +
                      " (VisionLanguageModel::from_pretrained takes either)");
  impl->generation_config = GenerationConfig::from_model_config(impl->config);
  const std::string gen_path = dir + "/generation_config.json";
  // Only the keys the file sets override from_model_config (a whole parsed struct would reset the
  // rest to the class defaults).
  if (file_exists(gen_path)) impl->generation_config = impl->generation_config.merged_with_file(gen_path);
  impl->source_dir = dir;
  impl->checkpoint = io::Checkpoint::open(dir, options.progress);
  const auto& ck = impl->checkpoint;
  models::WeightPolicy policy;
  if (options.weights) {
    policy.format = *options.weights;
  } else {
    const auto& meta = ck.metadata();
    auto it = meta.find(kWeightsMetadataKey);
    if (it != meta.end() && !ops::parse_weight_format(it->second, &policy.format))
      throw FormatError(dir + ": unknown weight format '" + it->second + "' in the safetensors metadata key " +
                        kWeightsMetadataKey + " (expected f32, bf16, q8_0 or q4_0)");
  }
  impl->weight_format = policy.format;
  policy.bf16_arithmetic = options.bf16_arithmetic;
  const models::WeightSource source = models::WeightSource::from_checkpoint(ck);
  impl->vision = std::make_unique<models::VisionModel>(impl->config.vision_config, source, "vision_model.", policy);
  impl->qformer = std::make_unique<models::QFormer>(impl->config.qformer_config, source, "qformer.", policy);
  impl->projector = std::make_unique<models::QueryProjector>(impl->config, source, "");
  if (impl->config.is_t5()) {
    impl->lm = std::make_unique<models::T5Model>(impl->config.t5(), source, "language_model.", policy);
  } else if (impl->config.is_opt()) {
    impl->lm = std::make_unique<models::OPTModel>(impl->config.opt(), source, "language_model.", policy);
  } else {
    models::LlamaOptions lo;
    lo.weights = policy;
    impl->lm = std::make_unique<models::LlamaModel>(impl->config.llama(), source, "language_model.", lo);
  }
  impl->check_all_tensors_bound(dir);
  return VisionLanguageModel(std::move(impl));
}

const InstructBlipConfig& VisionLanguageModel::config() const { return impl_->config; }
bool VisionLanguageModel::is_blip2() const { return impl_->config.is_blip2(); }
const GenerationConfig& VisionLanguageModel::generation_config() const {
  return impl_->generation_config;
}
const io::Checkpoint& VisionLanguageModel::checkpoint() const { return impl_->checkpoint; }
const models::VisionModel& VisionLanguageModel::vision_model() const { return *impl_->vision; }
const models::QFormer& VisionLanguageModel::qformer() const { return *impl_->qformer; }
const models::QueryProjector& VisionLanguageModel::query_projector() const {
  return *impl_->projector;
}
const models::LanguageModel& VisionLanguageModel::language_model() const { return *impl_->lm; }
const GenerationLimits& VisionLanguageModel::limits() const { return impl_->limits; }
ops::WeightFormat VisionLanguageModel::weight_format() const { return impl_->weight_format; }

void VisionLanguageModel::save_pretrained(const std::string& dir, std::size_t max_shard_bytes) const {
  const Impl& m = *impl_;
  std::vector<std::pair<std::string, Tensor>> tensors;
  auto append = [&tensors](std::vector<std::pair<std::string, Tensor>> part) {
    for (auto& t : part) tensors.push_back(std::move(t));
  };
  append(m.vision->named_weights("vision_model."));
  append(m.qformer->named_weights("qformer."));
  append(m.projector->named_weights(""));
  append(m.lm->named_weights("language_model."));
  const std::map<std::string, std::string> metadata{{"format", "pt"},
                                                    {kWeightsMetadataKey, ops::weight_format_name(m.weight_format)}};
  io::save_checkpoint(dir, tensors, metadata, max_shard_bytes);
  // The configs are the loaded files, byte for byte (quantisation changes no setting).
  for (const char* name : {"config.json", "generation_config.json"}) {
    const std::string from = m.source_dir + "/" + name, to = dir + "/" + name;
    if (file_exists(from) && !same_file(from, to)) copy_file(from, to);
  }
}

VisionLanguageModel::ForwardOutput VisionLanguageModel::forward(
    const Tensor& pixel_values, const Tensor& qformer_input_ids, const Tensor& qformer_attention_mask,
    const Tensor& input_ids, const Tensor& attention_mask, const Tensor& decoder_input_ids, const Tensor& labels,
    bool output_hidden_states) const {
  if (!input_ids.defined()) throw InvalidArgument("forward: input_ids are required");
  for (const auto* t : {&decoder_input_ids, &labels}) {
    if (t->defined() && t->ndim() == 2 && t->dim(1) > impl_->limits.max_prompt_tokens)
      throw InvalidArgument(over_limit(std::string("forward: the ") +
                                           (t == &labels ? "labels" : "decoder_input_ids") + " length",
                                       t->dim(1), "max_prompt_tokens", impl_->limits.max_prompt_tokens));
  }
  ForwardOutput out;
  auto p = impl_->prepare(pixel_values, qformer_input_ids, qformer_attention_mask, input_ids, attention_mask,
                          output_hidden_states, &out.vision_outputs, &out.qformer_outputs, &out.language_model_inputs,
                          nullptr);
  out.language_model_outputs = impl_->lm->forward(p.embeds, p.mask, decoder_input_ids, labels, output_hidden_states);
  out.logits = out.language_model_outputs.logits;
  out.loss = out.language_model_outputs.loss;
  return out;
}

generation::GenerateOutput VisionLanguageModel::generate(
    const Tensor& pixel_values, const Tensor& qformer_input_ids, const Tensor& qformer_attention_mask,
    const Tensor& input_ids, const Tensor& attention_mask, const GenerationConfig& generation_config,
    const generation::GenerateHooks& hooks, GenerateTrace* trace) const {
  // Settings and sizes are checked before the image is encoded (generation::generate checks them
  // again, cheaply, on the final prompt).
  {
    const GenerationConfig resolved =
        generation::resolve_generation_config(generation_config, impl_->lm->is_encoder_decoder(), impl_->limits);
    if (pixel_values.defined() && pixel_values.ndim() >= 1) {
      const std::int64_t T = input_ids.defined() && input_ids.ndim() == 2 ? input_ids.dim(1) : 1;
      impl_->check_prompt_length(T);
      generation::check_generation_size(resolved, pixel_values.dim(0), impl_->config.num_query_tokens + T,
                                        impl_->lm->vocab_size(), impl_->limits);
      generation::check_model_positions(*impl_->lm, resolved, impl_->config.num_query_tokens + T);
    }
  }
  GenerateTrace local;
  GenerateTrace* tr = trace ? trace : &local;
  models::QFormerOutput qf;
  auto p = impl_->prepare(pixel_values, qformer_input_ids, qformer_attention_mask, input_ids, attention_mask, false,
                          &tr->vision, &qf, &tr->language_model_inputs, &tr->timings);
  tr->qformer_last_hidden_state = qf.last_hidden_state;
  TracingLM lm(*impl_->lm, tr);
  generation::GenerateOutput out = generation::generate(lm, p.embeds, p.mask, generation_config, hooks, impl_->limits);
  if (maps_pad_to_eos())
    for (auto& row : out.sequences)
      for (auto& id : row)
        if (id == 0) id = 2;
  return out;
}

Tensor VisionLanguageModel::encode_images(const Tensor& pixel_values) const {
  Impl::check_pixels(pixel_values);
  if (pixel_values.dim(0) > impl_->limits.max_rows)
    throw InvalidArgument(over_limit("the image batch", pixel_values.dim(0), "max_rows", impl_->limits.max_rows));
  return impl_->vision->forward(pixel_values, false).last_hidden_state;
}

LanguageModelPrompt VisionLanguageModel::language_model_prompt(
    const Tensor& image_embeds, const Tensor& qformer_input_ids, const Tensor& qformer_attention_mask,
    const Tensor& input_ids, const Tensor& attention_mask) const {
  const auto& vc = impl_->config.vision_config;
  if (!image_embeds.defined() || image_embeds.dtype() != DType::F32 || image_embeds.ndim() != 3 ||
      image_embeds.dim(2) != vc.hidden_size || image_embeds.dim(0) < 1)
    throw InvalidArgument("image_embeds must be F32 [B, positions, " + std::to_string(vc.hidden_size) + "], got " +
                          (image_embeds.defined() ? shape_str(image_embeds.shape()) : std::string("undefined")));
  const Impl::Text text =
      impl_->check_text(image_embeds.dim(0), qformer_input_ids, qformer_attention_mask, input_ids, attention_mask);
  models::QFormerOutput qf;
  Tensor lmi;
  Impl::Prompt p = impl_->from_image_embeds(image_embeds, qformer_input_ids, text, false, &qf, &lmi);
  return {p.embeds, p.mask};
}

bool VisionLanguageModel::maps_pad_to_eos() const {
  if (!impl_->config.is_llama() || impl_->config.is_blip2()) return false;
  const auto& arch = impl_->config.llama().architectures;
  return !arch.empty() && arch.front() == "LLaMAForCausalLM";
}

generation::GenerateOutput VisionLanguageModel::generate(const ProcessorOutput& inputs,
                                                                        const GenerationConfig& generation_config,
                                                                        const generation::GenerateHooks& hooks,
                                                                        GenerateTrace* trace) const {
  return generate(inputs.pixel_values, inputs.qformer_input_ids, inputs.qformer_attention_mask, inputs.input_ids,
                  inputs.attention_mask, generation_config, hooks, trace);
}

VisionLanguageModel::ForwardOutput Blip2ForConditionalGeneration::forward(const Tensor& pixel_values,
                                                                          const Tensor& input_ids,
                                                                          const Tensor& attention_mask,
                                                                          const Tensor& decoder_input_ids,
                                                                          const Tensor& labels,
                                                                          bool output_hidden_states) const {
  return VisionLanguageModel::forward(pixel_values, Tensor(), Tensor(), input_ids, attention_mask, decoder_input_ids,
                                      labels, output_hidden_states);
}

generation::GenerateOutput Blip2ForConditionalGeneration::generate(const Tensor& pixel_values,
                                                                   const Tensor& input_ids,
                                                                   const Tensor& attention_mask,
                                                                   const GenerationConfig& generation_config,
                                                                   const generation::GenerateHooks& hooks,
                                                                   GenerateTrace* trace) const {
  return VisionLanguageModel::generate(pixel_values, Tensor(), Tensor(), input_ids, attention_mask, generation_config,
                                       hooks, trace);
}

}  // namespace instructblip
