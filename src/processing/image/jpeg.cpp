// JPEG decoding with libjpeg-turbo, driven as Pillow 9.4's JpegDecode.c drives it.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <jpeglib.h>
#include <jerror.h>

#include "image_internal.hpp"
#include "instructblip/core/error.hpp"

namespace instructblip::image_detail {

namespace {

struct JpegErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  bool pixels_done;  // all scanlines read: a missing end of file is tolerated, as in Pillow
  char message[JMSG_LENGTH_MAX + 64];
};

void jpeg_on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

void jpeg_on_message(j_common_ptr cinfo, int msg_level) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  // Warnings are silenced as in Pillow, except libjpeg's "premature end of file" (it then pads the
  // image with grey): Pillow's reader raises "image file is truncated" when the decoder still
  // wants data, so do the same unless every scanline was already delivered.
  if (msg_level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF && !err->pixels_done) {
    std::snprintf(err->message, sizeof(err->message), "image file is truncated");
    std::longjmp(err->jump, 1);
  }
}

void jpeg_on_output(j_common_ptr) {}

// A progressive JPEG can hold any number of scans, each a pass over the whole image: a hostile
// file with thousands of tiny scans costs minutes of CPU. Real encoders write at most a few dozen.
constexpr int kMaxJpegScans = 1000;

void jpeg_on_progress(j_common_ptr cinfo) {
  if (!cinfo->is_decompressor) return;
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (d->input_scan_number > kMaxJpegScans) {
    auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
    std::snprintf(err->message, sizeof(err->message), "more than %d scans (hostile progressive JPEG?)",
                  kMaxJpegScans);
    std::longjmp(err->jump, 1);
  }
}

struct JpegGuard {
  jpeg_decompress_struct* cinfo;
  ~JpegGuard() { jpeg_destroy_decompress(cinfo); }
};

/// Pillow's MULDIV255: (a * b + 127) / 255, computed its way.
inline int muldiv255(int a, int b) {
  const int tmp = a * b + 128;
  return ((tmp >> 8) + tmp) >> 8;
}
inline std::uint8_t clip8i(int v) { return std::uint8_t(v <= 0 ? 0 : v >= 255 ? 255 : v); }

}  // namespace

Image decode_jpeg(const std::uint8_t* data, std::size_t size, const ImageLoadOptions& opt, const std::string& name) {
  // Everything with a destructor lives outside the setjmp region (declared before setjmp).
  Image out;
  std::vector<std::uint8_t> rowbuf;
  jpeg_decompress_struct cinfo;
  JpegErrorManager jerr;
  jpeg_progress_mgr progress;
  std::memset(&cinfo, 0, sizeof(cinfo));
  std::memset(&jerr, 0, sizeof(jerr));
  std::memset(&progress, 0, sizeof(progress));
  cinfo.err = jpeg_std_error(&jerr.pub);
  jerr.pub.error_exit = jpeg_on_error;
  jerr.pub.emit_message = jpeg_on_message;
  progress.progress_monitor = jpeg_on_progress;
  jerr.pub.output_message = jpeg_on_output;
  jerr.pixels_done = false;
  JpegGuard guard{&cinfo};

  if (setjmp(jerr.jump)) {
    throw FormatError(name + ": cannot decode JPEG: " + jerr.message);
  }
  jpeg_create_decompress(&cinfo);
  cinfo.progress = &progress;
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);

  const int comps = cinfo.num_components;
  if (comps != 1 && comps != 3 && comps != 4)
    fail(name, "cannot handle " + std::to_string(comps) + "-layer JPEG images");
  check_dimensions(cinfo.image_width, cinfo.image_height, opt, name, "JPEG");

  // Pillow: mode L -> rawmode "L", RGB -> "RGB", CMYK -> "CMYK;I" (Adobe-inverted); it leaves
  // jpeg_color_space to libjpeg and keeps libjpeg's defaults (ISLOW IDCT, fancy upsampling).
  cinfo.out_color_space = comps == 1 ? JCS_GRAYSCALE : comps == 3 ? JCS_RGB : JCS_CMYK;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  cinfo.scale_num = 1;
  cinfo.scale_denom = 1;
  jpeg_start_decompress(&cinfo);

  if (int(cinfo.output_components) != comps) fail(name, "unexpected JPEG output layout");
  const std::uint32_t w = cinfo.output_width, h = cinfo.output_height;
  out = blank_image(w, h);
  if (comps != 3) rowbuf.resize(std::size_t(w) * std::size_t(comps));

  while (cinfo.output_scanline < cinfo.output_height) {
    const int y = int(cinfo.output_scanline);
    std::uint8_t* dst = out.row(y);
    JSAMPROW row = comps == 3 ? dst : rowbuf.data();
    if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) fail(name, "cannot decode JPEG: image file is truncated");
    if (comps == 1) {
      for (std::uint32_t x = 0; x < w; ++x) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = rowbuf[x];
    } else if (comps == 4) {
      // unpack "CMYK;I" (inverted), then Pillow's cmyk2rgb
      for (std::uint32_t x = 0; x < w; ++x) {
        const std::uint8_t* p = &rowbuf[4 * std::size_t(x)];
        const int c = 255 - p[0], m = 255 - p[1], yy = 255 - p[2], k = 255 - p[3];
        const int nk = 255 - k;
        dst[3 * x + 0] = clip8i(nk - muldiv255(c, nk));
        dst[3 * x + 1] = clip8i(nk - muldiv255(m, nk));
        dst[3 * x + 2] = clip8i(nk - muldiv255(yy, nk));
      }
    }
  }
  jerr.pixels_done = true;
  jpeg_finish_decompress(&cinfo);
  return out;
}

}  // namespace instructblip::image_detail
