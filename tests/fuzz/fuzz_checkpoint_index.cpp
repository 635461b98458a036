// libFuzzer harness: the sharded checkpoint index (model.safetensors.index.json).
// A scratch directory holds two small valid shards, written once at start-up; each input becomes
// the directory's model.safetensors.index.json and io::Checkpoint::open resolves it. Every tensor
// the checkpoint then lists is looked up (get / get with its shape / get_f32 / file_of).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_common.hpp"
#include "instructblip/core/error.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/io/checkpoint.hpp"
#include "instructblip/io/safetensors.hpp"

using namespace instructblip;

namespace {

ibfuzz::ScratchDir* g_dir = nullptr;

Tensor filled(const Shape& shape, DType dtype) {
  Tensor t = Tensor::zeros(shape, dtype);
  auto* p = static_cast<std::uint8_t*>(t.raw_mut());
  for (std::size_t i = 0; i < t.nbytes(); ++i) p[i] = std::uint8_t(0x3c + 7 * i);
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  static ibfuzz::ScratchDir dir;
  g_dir = &dir;
  // Shard names and tensors as in the seed corpus (tests/fuzz/corpus/checkpoint_index).
  io::save_safetensors(dir.file("model-00001-of-00002.safetensors"),
                       {{"vision_model.embeddings.class_embedding", filled({1, 1, 8}, DType::F32)},
                        {"qformer.layernorm.weight", filled({8}, DType::BF16)},
                        {"qformer.layernorm.bias", filled({8}, DType::F16)}},
                       {{"format", "pt"}});
  io::save_safetensors(dir.file("model-00002-of-00002.safetensors"),
                       {{"language_projection.weight", filled({4, 8}, DType::BF16)},
                        {"language_projection.bias", filled({4}, DType::F32)},
                        {"position_ids", filled({1, 3}, DType::I64)},
                        {"mask", filled({5}, DType::U8)}});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ibfuzz::write_file(g_dir->file("model.safetensors.index.json"),
                     std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    std::size_t calls = 0;
    const io::Checkpoint ck = io::Checkpoint::open(
        g_dir->path(), [&](const std::string&, std::size_t, std::size_t index, std::size_t count) {
          IB_FUZZ_CHECK(index < count, "progress index");
          ++calls;
        });
    IB_FUZZ_CHECK(calls == ck.num_files(), "one progress call per file");
    IB_FUZZ_CHECK(ck.mapped_bytes() > 0, "mapped bytes");
    for (const std::string& name : ck.names()) {
      IB_FUZZ_CHECK(ck.contains(name), name);
      (void)ck.file_of(name);
      const Tensor t = ck.get(name);
      const Tensor same = ck.get(name, t.shape());
      IB_FUZZ_CHECK(same.shape() == t.shape(), name);
      try {
        (void)ck.get(name, Shape{t.numel() + 1});
        IB_FUZZ_CHECK(false, "a wrong shape must throw: " + name);
      } catch (const TensorError&) {
      }
      try {
        const Tensor f = ck.get_f32(name, t.shape());
        IB_FUZZ_CHECK(f.dtype() == DType::F32 && f.numel() == t.numel(), name);
      } catch (const TensorError&) {
        IB_FUZZ_CHECK(t.dtype() == DType::I64 || t.dtype() == DType::U8, name);
      }
    }
    try {
      (void)ck.get("\x01 no such tensor");
      IB_FUZZ_CHECK(false, "get of a missing tensor must throw");
    } catch (const TensorError&) {
    }
  } catch (const Error&) {
  }
  return 0;
}
