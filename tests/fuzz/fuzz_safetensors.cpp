// libFuzzer harness: the safetensors header parser and tensor access.
// Input: the bytes of a .safetensors file. SafeTensors::from_buffer validates it; then every
// tensor is fetched (zero-copy view, or a copy when the data block is misaligned), checked
// against its header entry, and converted to float32 (integer dtypes must refuse with TensorError).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_common.hpp"
#include "instructblip/core/error.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/io/safetensors.hpp"

using namespace instructblip;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const io::SafeTensors st = io::SafeTensors::from_buffer(data, size, "fuzz.safetensors", nullptr);
    IB_FUZZ_CHECK(st.file_bytes() == size, "file_bytes");
    std::size_t count = 0;
    for (const std::string& name : st.names()) {
      ++count;
      IB_FUZZ_CHECK(st.contains(name), name);
      const io::TensorInfo& info = st.info(name);
      const Tensor t = st.get(name);
      IB_FUZZ_CHECK(t.dtype() == info.dtype, name);
      IB_FUZZ_CHECK(t.shape() == info.shape, name);
      IB_FUZZ_CHECK(t.nbytes() == info.end - info.begin, name);
      IB_FUZZ_CHECK(info.end <= size, name);
      try {
        const Tensor f = t.to(DType::F32);
        IB_FUZZ_CHECK(f.dtype() == DType::F32 && f.numel() == t.numel(), name);
        // Read every element (ASan checks the view stays inside the buffer).
        const float* p = f.data<float>();
        float acc = 0.0f;
        for (std::int64_t i = 0; i < f.numel(); ++i) acc += std::isnan(p[i]) ? 0.0f : 1.0f;
        IB_FUZZ_CHECK(acc <= float(f.numel()) + 1.0f, name);
      } catch (const TensorError&) {
        IB_FUZZ_CHECK(t.dtype() == DType::I64 || t.dtype() == DType::U8, "only integer tensors refuse to_f32");
      }
    }
    IB_FUZZ_CHECK(count == st.size(), "size");
    for (const auto& kv : st.metadata()) (void)kv.second.size();
    try {
      (void)st.get("\x01 no such tensor");
      IB_FUZZ_CHECK(st.contains("\x01 no such tensor"), "get of a missing tensor must throw");
    } catch (const TensorError&) {
    }
  } catch (const Error&) {
  }
  return 0;
}
