// WebP decoding with libwebp, driven as Pillow 9.4's _webp.c drives it. With libwebp's animation
// support (Debian's Pillow has it) WebPImagePlugin opens every WebP file - lossy, lossless,
// extended, animated - through WebPAnimDecoder with the default options (MODE_RGBA, no threads)
// and shows the first frame: the whole canvas, as the decoder composes it (a first frame smaller
// than the canvas leaves the rest transparent black). Mode is "RGBA" when WebPGetFeatures reports
// alpha, else "RGB" (raw "RGBX"); convert("RGB") keeps R, G, B either way: alpha is dropped, not
// composited. So the RGB bytes of the decoder's first canvas are Pillow's pixels.
#include <cstring>
#include <memory>
#include <string>

#include <webp/decode.h>
#include <webp/demux.h>

#include "image_internal.hpp"

namespace instructblip::image_detail {

namespace {

struct DemuxDeleter {
  void operator()(WebPDemuxer* d) const { WebPDemuxDelete(d); }
};
struct AnimDecoderDeleter {
  void operator()(WebPAnimDecoder* d) const { WebPAnimDecoderDelete(d); }
};

}  // namespace

Image decode_webp(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name) {
  // Pillow's _accept: RIFF, WEBP, then one of the three first-chunk tags; anything else is not
  // identified as WebP.
  if (n < 16) fail(name, "WebP image file is truncated");
  if (std::memcmp(d + 12, "VP8 ", 4) != 0 && std::memcmp(d + 12, "VP8L", 4) != 0 && std::memcmp(d + 12, "VP8X", 4) != 0)
    fail(name, "cannot identify image file (RIFF WEBP file with an unknown first chunk)");

  WebPData data;
  data.bytes = d;
  data.size = n;
  // The canvas size from the container headers (the demuxer validates the RIFF layout and every
  // frame's bounds but decodes no pixels): the size check comes before WebPAnimDecoderNew, which
  // allocates the canvas.
  {
    const std::unique_ptr<WebPDemuxer, DemuxDeleter> demux(WebPDemux(&data));
    if (!demux) fail(name, "cannot decode WebP: invalid or truncated file");
    const std::uint32_t w = WebPDemuxGetI(demux.get(), WEBP_FF_CANVAS_WIDTH);
    const std::uint32_t h = WebPDemuxGetI(demux.get(), WEBP_FF_CANVAS_HEIGHT);
    check_dimensions(w, h, opt, name, "WebP");
    if (WebPDemuxGetI(demux.get(), WEBP_FF_FRAME_COUNT) == 0) fail(name, "WebP file has no image");
  }

  // Pillow: WebPAnimDecoderNew(&data, NULL), i.e. the default options.
  const std::unique_ptr<WebPAnimDecoder, AnimDecoderDeleter> dec(WebPAnimDecoderNew(&data, nullptr));
  if (!dec) fail(name, "cannot decode WebP: invalid or truncated file");
  WebPAnimInfo info;
  if (!WebPAnimDecoderGetInfo(dec.get(), &info)) fail(name, "cannot decode WebP: no stream information");
  check_dimensions(info.canvas_width, info.canvas_height, opt, name, "WebP");
  std::uint8_t* rgba = nullptr;
  int timestamp = 0;
  // Pillow: "failed to decode next frame in WebP file"
  if (!WebPAnimDecoderGetNext(dec.get(), &rgba, &timestamp) || !rgba)
    fail(name, "cannot decode WebP: image file is truncated or corrupt");

  Image out = blank_image(info.canvas_width, info.canvas_height);
  const std::size_t px = out.num_pixels();
  std::uint8_t* dst = out.rgb.data();
  for (std::size_t i = 0; i < px; ++i) {
    dst[3 * i + 0] = rgba[4 * i + 0];
    dst[3 * i + 1] = rgba[4 * i + 1];
    dst[3 * i + 2] = rgba[4 * i + 2];
  }
  return out;
}

}  // namespace instructblip::image_detail
