#pragma once
// Typed exceptions thrown by the library. Every one carries a single readable line
// naming the file, key or tensor at fault.
#include <stdexcept>
#include <string>

namespace instructblip {

/// Base class of every exception the library throws on bad input.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A file or directory that cannot be opened, mapped or read.
class IoError : public Error { using Error::Error; };
/// A file whose bytes do not follow their format (safetensors, JSON, images, tokenizer models).
class FormatError : public Error { using Error::Error; };
/// A config.json / preprocessor_config.json / tokenizer config with a missing, mistyped or unsupported value.
class ConfigError : public Error { using Error::Error; };
/// A tensor that is missing, has the wrong shape or the wrong dtype.
class TensorError : public Error { using Error::Error; };
/// An argument outside what the called function accepts (shapes of inputs, generation settings, text).
class InvalidArgument : public Error { using Error::Error; };

}  // namespace instructblip
