// Every kernel level the CPU supports gives the reference answers: the fixture checkpoints'
// forward logits within 1e-4 of transformers 4.36.2 and the reference generations exactly, with
// the kernels capped at each level in turn (as INSTRUCTBLIP_ISA=<level> does for a process).
#include <gtest/gtest.h>

#include "instructblip/instructblip.hpp"
#include "ops/cpu.hpp"
#include "reference_util.hpp"

using namespace instructblip;
using ibtest::Reference;

namespace {

struct Level {
  const char* name;   // INSTRUCTBLIP_ISA value
  const char* gemv;   // prefix of kernel_name() for an f32 matrix at M = 1 at this level
};
const Level kLevels[] = {{"portable", "portable-"}, {"avx2", "avx2-"}, {"avx512", "avx512"}, {"amx", "avx512"}};

class IsaGuard {
 public:
  explicit IsaGuard(unsigned mask) : old_(ops::disabled_isa()) { ops::set_disabled_isa(mask); }
  ~IsaGuard() { ops::set_disabled_isa(old_); }

 private:
  unsigned old_;
};

bool cpu_has(const std::string& level) {
  const auto& c = ops::detail::cpu();
  if (level == "avx2") return c.avx2;
  if (level == "avx512" || level == "amx") return c.avx512;
  return true;
}

const InstructBlipForConditionalGeneration& model(const std::string& name) {
  static std::map<std::string, InstructBlipForConditionalGeneration> cache;
  auto it = cache.find(name);
  if (it == cache.end())
    it = cache.emplace(name, InstructBlipForConditionalGeneration::from_pretrained(Reference(name).model_dir())).first;
  return it->second;
}

}  // namespace

TEST(IsaLevels, EnvironmentValuesMapToMasks) {
  EXPECT_EQ(ops::isa_mask_from_env(nullptr), 0u);
  EXPECT_EQ(ops::isa_mask_from_env(""), 0u);
  EXPECT_EQ(ops::isa_mask_from_env("amx"), 0u);
  EXPECT_EQ(ops::isa_mask_from_env("AVX512-BF16"), unsigned(ops::kIsaAmx));
  EXPECT_EQ(ops::isa_mask_from_env("avx512"), unsigned(ops::kIsaAmx | ops::kIsaAvx512Bf16));
  EXPECT_EQ(ops::isa_mask_from_env("avx2") & ops::kIsaAvx512, unsigned(ops::kIsaAvx512));
  EXPECT_EQ(ops::isa_mask_from_env("avx2") & ops::kIsaAvx2, 0u);
  EXPECT_NE(ops::isa_mask_from_env("portable") & ops::kIsaAvx2, 0u);
  EXPECT_THROW(ops::isa_mask_from_env("sse9"), InvalidArgument);
}

TEST(IsaLevels, EveryBuildCarriesTheX86Levels) {
  const std::string f = ops::cpu_features();
  std::printf("%s\n%s\n", ops::cpu_model().c_str(), f.c_str());
#if defined(__x86_64__)
  // the level units are compiled with their own flags, native build or not
  EXPECT_NE(f.find("levels: portable avx2 avx512"), std::string::npos) << f;
#endif
  EXPECT_FALSE(ops::cpu_model().empty());
}

TEST(IsaLevels, FixturesMatchTheReferenceAtEveryLevel) {
  int levels_run = 0;
  for (const Level& lv : kLevels) {
    if (!cpu_has(lv.name)) {
      std::printf("level %s: not supported by this CPU, skipped\n", lv.name);
      continue;
    }
    IsaGuard guard(ops::isa_mask_from_env(lv.name));
    {  // the level really is the one in use
      MatrixF w = MatrixF::Ones(4, 8);
      ops::WeightMatrix W(Tensor::borrow(w.data(), {4, 8}, DType::F32), ops::WeightFormat::F32);
      EXPECT_EQ(ops::kernel_name(W, 1).rfind(lv.gemv, 0), 0u) << lv.name << ": " << ops::kernel_name(W, 1);
    }
    for (const char* name : {"t5-tiny", "llama-tiny"}) {
      Reference ref(name);
      const auto& m = model(name);
      const std::string k = "b.";  // the padded two-image batch
      Tensor decoder_ids = ref.tensors.contains(k + "decoder_input_ids") ? ref.get(k + "decoder_input_ids") : Tensor();
      auto out = m.forward(ref.get(k + "pixel_values"), ref.get(k + "qformer_input_ids"),
                           ref.get(k + "qformer_attention_mask"), ref.get(k + "input_ids"), ref.get(k + "attention_mask"),
                           decoder_ids);
      EXPECT_LE(ibtest::max_abs_diff(out.logits, ref.get(k + "logits")), 1e-4) << lv.name << " " << name;
      for (const char* setting : {"greedy", "beam5"}) {
        GenerationConfig g = m.generation_config().merged_with(ref.json["generation"][setting]["kwargs"], "kwargs");
        auto gen = m.generate(ref.get(k + "pixel_values"), ref.get(k + "qformer_input_ids"),
                              ref.get(k + "qformer_attention_mask"), ref.get(k + "input_ids"),
                              ref.get(k + "attention_mask"), g);
        EXPECT_EQ(gen.sequences, ibtest::rows_of(ref.get(k + "gen." + std::string(setting) + ".sequences")))
            << lv.name << " " << name << " " << setting;
      }
    }
    ++levels_run;
  }
  // portable always; on x86-64 with AVX2 (every CPU this project targets) at least two levels
  EXPECT_GE(levels_run, ops::detail::cpu().avx2 ? 2 : 1);
}
