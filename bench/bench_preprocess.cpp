// Image preprocessing: decode + resize + normalise of a 12-megapixel JPEG, and its parts.
// The JPEG is generated at startup (synthetic pattern, libjpeg-turbo's compressor) in a temp file.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "instructblip/processing/image.hpp"
#include "instructblip/processing/image_processor.hpp"
#include "support/jpeg_encode.hpp"

namespace ib = instructblip;

namespace {

constexpr int kWidth = 4000;
constexpr int kHeight = 3000;  // 12 MP

/// Smooth gradients plus rings and a fine checker, so the JPEG has realistic entropy.
ib::Image synthetic_image() {
  ib::Image img(kWidth, kHeight);
  for (int y = 0; y < kHeight; ++y) {
    std::uint8_t* row = img.row(y);
    for (int x = 0; x < kWidth; ++x) {
      const double dx = x - kWidth * 0.4, dy = y - kHeight * 0.6;
      const double ring = 0.5 + 0.5 * std::sin(std::sqrt(dx * dx + dy * dy) * 0.05);
      const int checker = ((x >> 3) ^ (y >> 3)) & 1;
      row[3 * x + 0] = std::uint8_t(255.0 * x / kWidth);
      row[3 * x + 1] = std::uint8_t(200.0 * ring + 40 * checker);
      row[3 * x + 2] = std::uint8_t(255.0 * y / kHeight * (1 - ring) + 30 * checker);
    }
  }
  return img;
}

struct Fixture {
  std::string path;
  ib::Image decoded;
  ib::Image resized;
  ib::ImageProcessor processor;

  Fixture() : processor(make_config()) {
    const auto bytes = ib::encode_jpeg(synthetic_image(), 90);
    path = (std::filesystem::temp_directory_path() / "instructblip_bench_12mp.jpg").string();
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                                 std::streamsize(bytes.size()));
    decoded = ib::load_image(path);
    resized = processor.resize(decoded);
  }
  ~Fixture() { std::remove(path.c_str()); }

  static ib::ImageProcessorConfig make_config() {  // InstructBLIP: 224x224 BICUBIC, CLIP mean / std
    ib::ImageProcessorConfig c;
    c.height = c.width = 224;
    return c;
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void BM_DecodeResizeNormalize12MP(benchmark::State& state) {
  Fixture& f = fixture();
  for (auto _ : state) {
    ib::Tensor pv = f.processor.preprocess(ib::load_image(f.path));
    benchmark::DoNotOptimize(pv.raw());
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["MPix/s"] =
      benchmark::Counter(double(kWidth) * kHeight * 1e-6 * double(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_DecodeResizeNormalize12MP)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Decode12MP(benchmark::State& state) {
  Fixture& f = fixture();
  for (auto _ : state) {
    ib::Image img = ib::load_image(f.path);
    benchmark::DoNotOptimize(img.rgb.data());
  }
}
BENCHMARK(BM_Decode12MP)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_ResizeBicubic12MPTo224(benchmark::State& state) {
  Fixture& f = fixture();
  for (auto _ : state) {
    ib::Image out = ib::resize_image(f.decoded, 224, 224, ib::Resample::Bicubic);
    benchmark::DoNotOptimize(out.rgb.data());
  }
}
BENCHMARK(BM_ResizeBicubic12MPTo224)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Normalize224(benchmark::State& state) {
  Fixture& f = fixture();
  ib::Tensor out = ib::Tensor::empty({1, 3, 224, 224});
  for (auto _ : state) {
    f.processor.normalize_into(f.resized, out.data<float>());
    benchmark::DoNotOptimize(out.raw());
  }
}
BENCHMARK(BM_Normalize224)->Unit(benchmark::kMicrosecond);

}  // namespace
