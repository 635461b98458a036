#pragma once
// The whole public API of instructblip.cpp.
#include "instructblip/version.hpp"
#include "instructblip/core/error.hpp"
#include "instructblip/core/dtype.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/ops/ops.hpp"
#include "instructblip/config.hpp"
#include "instructblip/io/safetensors.hpp"
#include "instructblip/io/checkpoint.hpp"
#include "instructblip/core/thread_pool.hpp"
#include "instructblip/generation/generate.hpp"
#include "instructblip/models/instructblip.hpp"
#include "instructblip/processing/processor.hpp"
