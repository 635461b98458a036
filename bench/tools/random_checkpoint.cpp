// instructblip-random-checkpoint: writes an InstructBLIP or BLIP-2 checkpoint with random weights
// in the HuggingFace layout (config.json, model.safetensors, generation_config.json) at a released
// model's size (--model: InstructBLIP Flan-T5-XL, the default, or BLIP-2 OPT-2.7b / OPT-6.7b),
// streaming tensor by tensor so that a 16 GB file needs little memory. The processor files
// (tokenizers, preprocessor_config.json) are copied from another checkpoint. Used to measure load
// time, speed and peak memory of full-size runs without a download.
#include <instructblip/instructblip.hpp>
#include <instructblip/models/opt.hpp>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

using namespace instructblip;
using Specs = std::vector<std::pair<std::string, Shape>>;

namespace {

T5Config flan_t5_xl() {
  T5Config t;
  t.vocab_size = 32128;
  t.d_model = 2048;
  t.d_kv = 64;
  t.d_ff = 5120;
  t.num_layers = 24;
  t.num_decoder_layers = 24;
  t.num_heads = 32;
  t.feed_forward_proj = "gated-gelu";
  t.dense_act_fn = "gelu";
  t.is_gated_act = true;
  t.tie_word_embeddings = false;
  t.decoder_start_token_id = 0;
  t.architectures = {"T5ForConditionalGeneration"};
  return t;
}

// facebook/opt-2.7b / opt-6.7b as the Salesforce/blip2-opt-* checkpoints carry them: eos is the
// id of "\n" (50118), as their conversion script sets it; the head is tied to the embeddings.
OPTConfig opt_config(std::int64_t hidden, std::int64_t ffn) {
  OPTConfig t;
  t.vocab_size = 50272;
  t.hidden_size = hidden;
  t.word_embed_proj_dim = hidden;
  t.num_hidden_layers = 32;
  t.num_attention_heads = 32;
  t.ffn_dim = ffn;
  t.max_position_embeddings = 2048;
  t.eos_token_id = {50118};
  t.bos_token_id = 2;
  t.pad_token_id = 1;
  t.tie_word_embeddings = true;
  t.architectures = {"OPTForCausalLM"};
  return t;
}

Specs t5_specs(const T5Config& c, const std::string& p) {
  Specs s;
  const std::int64_t D = c.d_model, I = c.d_kv * c.num_heads, F = c.d_ff;
  s.push_back({p + "shared.weight", {c.vocab_size, D}});
  auto attn = [&](const std::string& n) {
    for (const char* w : {"q", "k", "v"}) s.push_back({n + "." + w + ".weight", {I, D}});
    s.push_back({n + ".o.weight", {D, I}});
  };
  auto ffn = [&](const std::string& n) {
    if (c.is_gated_act) {
      s.push_back({n + ".DenseReluDense.wi_0.weight", {F, D}});
      s.push_back({n + ".DenseReluDense.wi_1.weight", {F, D}});
    } else {
      s.push_back({n + ".DenseReluDense.wi.weight", {F, D}});
    }
    s.push_back({n + ".DenseReluDense.wo.weight", {D, F}});
    s.push_back({n + ".layer_norm.weight", {D}});
  };
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const std::string b = p + "encoder.block." + std::to_string(l) + ".layer.";
    attn(b + "0.SelfAttention");
    if (l == 0) s.push_back({b + "0.SelfAttention.relative_attention_bias.weight", {c.relative_attention_num_buckets, c.num_heads}});
    s.push_back({b + "0.layer_norm.weight", {D}});
    ffn(b + "1");
  }
  s.push_back({p + "encoder.final_layer_norm.weight", {D}});
  for (std::int64_t l = 0; l < c.num_decoder_layers; ++l) {
    const std::string b = p + "decoder.block." + std::to_string(l) + ".layer.";
    attn(b + "0.SelfAttention");
    if (l == 0) s.push_back({b + "0.SelfAttention.relative_attention_bias.weight", {c.relative_attention_num_buckets, c.num_heads}});
    s.push_back({b + "0.layer_norm.weight", {D}});
    attn(b + "1.EncDecAttention");
    s.push_back({b + "1.layer_norm.weight", {D}});
    ffn(b + "2");
  }
  s.push_back({p + "decoder.final_layer_norm.weight", {D}});
  if (!c.tie_word_embeddings) s.push_back({p + "lm_head.weight", {c.vocab_size, D}});
  return s;
}

// Random values ~ U(-a, a) with a = 1/sqrt(fan_in) for matrices; norm weights near 1.
void fill(float* x, std::int64_t n, std::int64_t fan_in, bool norm, std::uint64_t& state) {
  const float a = norm ? 0.1f : 1.0f / std::sqrt(float(std::max<std::int64_t>(fan_in, 1)));
  for (std::int64_t i = 0; i < n; ++i) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    const float u = float(state >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
    x[i] = (norm ? 1.0f : 0.0f) + a * u;
  }
}

void copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) return;
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  out << in.rdbuf();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help")) {
    std::fprintf(stderr,
                 "usage: %s OUT_DIR [--model instructblip-flan-t5-xl|blip2-opt-2.7b|blip2-opt-6.7b]\n"
                 "       [--processor-from DIR] [--dtype f32|bf16] [--max-shard-gb N]\n"
                 "       [--vision-layers N] [--qformer-layers N] [--text-layers N]\n"
                 "writes a random-weight checkpoint at a released model's size (default InstructBLIP-Flan-T5-XL:\n"
                 "vision ViT-g/14, Q-Former, Flan-T5-XL; blip2-opt-*: ViT-g/14, BLIP-2 Q-Former, OPT-2.7b/6.7b):\n"
                 "one model.safetensors, or shards of at most N GB with model.safetensors.index.json.\n"
                 "--processor-from defaults to models/tiny-random-flan-t5 (InstructBLIP) or\n"
                 "tests/data/blip2-opt-tiny/model (BLIP-2). The --*-layers options make a reduced-depth model\n"
                 "(smoke tests; default: the released layer counts)\n",
                 argv[0]);
    return 2;
  }
  const std::string out = argv[1];
  std::string processor_from, model_name = "instructblip-flan-t5-xl";
  DType dtype = DType::F32;
  double max_shard_gb = 0;  // 0: one file
  std::int64_t vision_layers = 0, qformer_layers = 0, text_layers = 0;  // 0: the released model's
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--processor-from")) processor_from = argv[i + 1];
    else if (!std::strcmp(argv[i], "--model")) model_name = argv[i + 1];
    else if (!std::strcmp(argv[i], "--vision-layers")) vision_layers = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--qformer-layers")) qformer_layers = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--text-layers")) text_layers = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--dtype")) dtype = !std::strcmp(argv[i + 1], "bf16") ? DType::BF16 : DType::F32;
    else if (!std::strcmp(argv[i], "--max-shard-gb")) max_shard_gb = std::atof(argv[i + 1]);
  }
  try {
    const bool blip2 = model_name == "blip2-opt-2.7b" || model_name == "blip2-opt-6.7b";
    if (!blip2 && model_name != "instructblip-flan-t5-xl")
      throw InvalidArgument("--model must be instructblip-flan-t5-xl, blip2-opt-2.7b or blip2-opt-6.7b, got '" +
                            model_name + "'");
    if (processor_from.empty()) processor_from = blip2 ? "tests/data/blip2-opt-tiny/model" : "models/tiny-random-flan-t5";
    std::system(("mkdir -p '" + out + (blip2 ? "'" : "/qformer_tokenizer'")).c_str());
    InstructBlipConfig cfg;
    VisionConfig vision;
    QFormerConfig qformer;
    if (vision_layers > 0) vision.num_hidden_layers = vision_layers;
    if (qformer_layers > 0) qformer.num_hidden_layers = qformer_layers;
    if (blip2) {
      OPTConfig opt = model_name == "blip2-opt-2.7b" ? opt_config(2560, 10240) : opt_config(4096, 16384);
      if (text_layers > 0) opt.num_hidden_layers = text_layers;
      cfg = InstructBlipConfig::from_vision_qformer_text_configs(vision, qformer, opt).as_blip2();
      cfg.architectures = {"Blip2ForConditionalGeneration"};
    } else {
      T5Config t5 = flan_t5_xl();
      if (text_layers > 0) t5.num_layers = t5.num_decoder_layers = text_layers;
      cfg = InstructBlipConfig::from_vision_qformer_text_configs(vision, qformer, t5);
      cfg.architectures = {"InstructBlipForConditionalGeneration"};
    }
    nlohmann::json cj = cfg.to_json();
    // As transformers 4.36.2 writes them: Blip2VisionConfig's model_type, and the dtype of the weights.
    if (blip2) cj["vision_config"]["model_type"] = "blip_2_vision_model";
    cj["torch_dtype"] = dtype == DType::BF16 ? "bfloat16" : "float32";
    cj["transformers_version"] = "4.36.2";
    std::ofstream(out + "/config.json") << cj.dump(2);
    nlohmann::json gj = GenerationConfig::from_model_config(cfg).to_json();
    gj["transformers_version"] = "4.36.2";
    std::ofstream(out + "/generation_config.json") << gj.dump(2);
    if (blip2) {
      for (const char* f : {"preprocessor_config.json", "vocab.json", "merges.txt", "tokenizer.json",
                            "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"})
        copy_file(processor_from + "/" + f, out + "/" + f);
    } else {
      for (const char* f : {"preprocessor_config.json", "spiece.model", "tokenizer_config.json",
                            "special_tokens_map.json", "added_tokens.json", "qformer_tokenizer/vocab.txt",
                            "qformer_tokenizer/tokenizer_config.json", "qformer_tokenizer/special_tokens_map.json",
                            "qformer_tokenizer/added_tokens.json"})
        copy_file(processor_from + "/" + f, out + "/" + f);
    }

    Specs specs = models::VisionModel::tensor_specs(cfg.vision_config, "vision_model.");
    for (auto& s : models::QFormer::tensor_specs(cfg.qformer_config, "qformer.")) specs.push_back(s);
    for (auto& s : models::QueryProjector::tensor_specs(cfg, "")) specs.push_back(s);
    if (blip2) {
      // tensor_specs lists no lm_head.weight when it is tied (transformers does not store it)
      for (auto& s : models::OPTModel::tensor_specs(cfg.opt(), "language_model.")) specs.push_back(s);
    } else {
      for (auto& s : t5_specs(cfg.t5(), "language_model.")) specs.push_back(s);
    }
    std::sort(specs.begin(), specs.end());

    // Shards: consecutive tensors (in name order) up to max_shard_gb each.
    std::vector<Specs> shards(1);
    std::uint64_t in_shard = 0, total = 0;
    for (const auto& spec : specs) {
      const std::uint64_t bytes = std::uint64_t(shape_numel(spec.second)) * dtype_size(dtype);
      if (max_shard_gb > 0 && in_shard > 0 && double(in_shard + bytes) > max_shard_gb * 1e9) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().push_back(spec);
      in_shard += bytes;
      total += bytes;
    }
    std::uint64_t state = 0x9E3779B97F4A7C15ull;
    std::vector<float> buf;
    std::vector<std::uint16_t> half;
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    for (std::size_t si = 0; si < shards.size(); ++si) {
      char fname[64];
      if (shards.size() == 1)
        std::snprintf(fname, sizeof fname, "model.safetensors");
      else
        std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", si + 1, shards.size());
      nlohmann::ordered_json header = nlohmann::ordered_json::object();
      header["__metadata__"] = {{"format", "pt"}};
      std::uint64_t off = 0;
      for (const auto& [name, shape] : shards[si]) {
        const std::uint64_t bytes = std::uint64_t(shape_numel(shape)) * dtype_size(dtype);
        header[name] = {{"dtype", dtype_name(dtype)}, {"shape", shape}, {"data_offsets", {off, off + bytes}}};
        off += bytes;
        weight_map[name] = fname;
      }
      std::string h = header.dump();
      while (h.size() % 8) h.push_back(' ');
      const std::string path = out + "/" + fname;
      std::FILE* f = std::fopen(path.c_str(), "wb");
      if (!f) throw IoError(path + ": cannot open for writing");
      std::uint64_t n = h.size();
      std::fwrite(&n, 8, 1, f);
      std::fwrite(h.data(), 1, h.size(), f);
      for (const auto& [name, shape] : shards[si]) {
        const std::int64_t numel = shape_numel(shape);
        // 1-d ".weight" tensors are exactly the norms' scales
        const bool norm = shape.size() == 1 && name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
        buf.resize(std::size_t(numel));
        fill(buf.data(), numel, shape.size() > 1 ? shape.back() : 1, norm, state);
        if (dtype == DType::F32) {
          std::fwrite(buf.data(), 4, buf.size(), f);
        } else {
          half.resize(buf.size());
          convert_from_f32(buf.data(), DType::BF16, half.data(), buf.size());
          std::fwrite(half.data(), 2, half.size(), f);
        }
      }
      if (std::fclose(f) != 0) throw IoError(path + ": write failed");
    }
    if (shards.size() > 1) {
      nlohmann::ordered_json index;
      index["metadata"] = {{"total_size", total}};
      index["weight_map"] = weight_map;
      std::ofstream(out + "/model.safetensors.index.json") << index.dump(2);
    }
    const std::uint64_t off = total;
    std::printf("%s: %zu tensors, %.2f GB in %zu file(s)\n", out.c_str(), specs.size(), double(off) / 1e9,
                shards.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "instructblip-random-checkpoint: %s\n", e.what());
    return 1;
  }
  return 0;
}
