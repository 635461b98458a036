// A program that knows the library only through its installed package.
#include <instructblip/instructblip.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  using namespace instructblip;
  Tensor x = Tensor::from_vector({2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});
  Tensor w = Tensor::from_vector({1, 3}, std::vector<float>{1, 1, 1});
  MatrixF y(2, 1);
  ops::linear<float>(x.matrix<float>(), w.matrix<float>(), nullptr, y);
  if (y(0, 0) != 6.f || y(1, 0) != 15.f) return 1;
  // Eigen matrices cross the boundary both ways: allocated here and read by the library, and
  // allocated by the library and freed here - whatever -march either side was built with.
  {
    const MatrixF xm = x.matrix<float>();
    const ops::WeightMatrix W(w, ops::WeightFormat::BF16);
    MatrixF ym = ops::linear(xm, W);
    if (ym.rows() != 2 || ym(0, 0) != 6.f || ym(1, 0) != 15.f) return 2;
    ym.resize(64, 64);  // reallocated here
    ym.setZero();
  }
  if (argc > 1) {
    auto ckpt = io::Checkpoint::open(std::string(argv[1]) + "/t5-tiny/model");
    auto cfg = InstructBlipConfig::from_json_file(std::string(argv[1]) + "/t5-tiny/model/config.json");
    std::printf("version %s, %zu tensors, %lld query tokens\n", INSTRUCTBLIP_VERSION_STRING, ckpt.size(),
                static_cast<long long>(cfg.num_query_tokens));
    // The user-facing path: processor -> generate(ProcessorOutput) -> streamed text.
    const std::string dir = std::string(argv[1]) + "/t5-tiny/model";
    auto processor = InstructBlipProcessor::from_pretrained(dir);
    auto model = InstructBlipForConditionalGeneration::from_pretrained(dir);
    auto inputs = processor(load_image(std::string(argv[1]) + "/images/merlion.png"), "What is this?");
    GenerationConfig gen = model.generation_config();
    gen.max_new_tokens = 4;
    std::string streamed;
    TextStreamer streamer(processor.tokenizer(), [&](std::string_view piece) { streamed += piece; });
    generation::GenerateHooks hooks;
    hooks.on_tokens = [&](const std::vector<std::int64_t>& next) { streamer.put(next[0]); };
    auto out = model.generate(inputs, gen, hooks);
    streamer.end();
    if (out.sequences.size() != 1) return 2;
    const std::string text = processor.batch_decode(out.sequences, /*skip_special_tokens=*/true)[0];
    if (streamed != text) return 3;
    std::printf("generated %zu ids: \"%s\"\n", out.sequences[0].size(), text.c_str());
  }
  return 0;
}
