// instructblip-inspect: what a HuggingFace InstructBLIP or BLIP-2 checkpoint directory holds —
// its family, its resolved configuration and its tensors (name, dtype, shape), memory-mapped.
#include <instructblip/instructblip.hpp>

#include <cstdio>
#include <cstring>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_DIR [--tensors]\n", argv[0]);
    return argc < 2 ? 2 : 0;
  }
  const std::string dir = argv[1];
  const bool list = argc > 2 && !std::strcmp(argv[2], "--tensors");
  try {
    using namespace instructblip;
    auto cfg = InstructBlipConfig::from_json_file(dir + "/config.json");
    auto ckpt = io::Checkpoint::open(dir, [](const std::string& f, std::size_t bytes, std::size_t i, std::size_t n) {
      std::fprintf(stderr, "mapped %s (%.1f MB) [%zu/%zu]\n", f.c_str(), double(bytes) / 1e6, i + 1, n);
    });
    std::printf("%s with a %s language model\n", cfg.is_blip2() ? "BLIP-2" : "InstructBLIP",
                cfg.text_model_type().c_str());
    std::printf("%s\n", cfg.to_json().dump(2).c_str());
    std::printf("%zu tensors in %zu file(s), %.1f MB mapped\n", ckpt.size(), ckpt.num_files(),
                double(ckpt.mapped_bytes()) / 1e6);
    if (list)
      for (const auto& name : ckpt.names()) {
        Tensor t = ckpt.get(name);
        std::printf("%-70s %-5s %s\n", name.c_str(), dtype_name(t.dtype()), shape_str(t.shape()).c_str());
      }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "instructblip-inspect: %s\n", e.what());
    return 1;
  }
  return 0;
}
