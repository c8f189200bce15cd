// benchbnn's exact binary convolution on the CPU: XNOR and population count over bit-packed
// channels (built and documented by benchbnn/core/popcount.py). A +-1 value is one bit (1 for
// +1), 32 or 64 channels to a word, the same word layout for the input and the weight, zero
// bits past the last channel on both sides. Where input and weight agree, their product is +1,
// where they differ -1, so one tap's sum over C channels is C - 2 popcount(x xor w); taps
// that fall into the zero padding are skipped, as F.conv2d's zeros add nothing. All integers,
// exact in float32 up to 2**24 (C * kH * kW is far below it).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// Bits of the values > 0 of `count` floats, lowest channel in the lowest bit.
template <typename Word>
inline Word pack_bits(const float* values, int64_t count) {
  Word word = 0;
  int64_t c = 0;
#if defined(__AVX512F__)
  const __m512 zero = _mm512_setzero_ps();
  for (; c + 16 <= count; c += 16) {
    __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(values + c), zero, _CMP_GT_OQ);
    word |= static_cast<Word>(m) << c;
  }
#endif
  for (; c < count; ++c) {
    word |= static_cast<Word>(values[c] > 0.f) << c;
  }
  return word;
}

constexpr int64_t kBits32 = 32;

// x: (N, H, W, C) float32, contiguous (a channels_last tensor permuted); returns
// (N, H, W, words) words of `Word`, channel c in bit c % bits of word c / bits.
template <typename Word>
torch::Tensor pack_input_impl(const torch::Tensor& x, torch::ScalarType dtype) {
  const int64_t bits = sizeof(Word) * 8;
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  const int64_t words = (c + bits - 1) / bits;
  auto out = torch::empty({n, h, w, words}, torch::dtype(dtype));
  const float* src = x.data_ptr<float>();
  Word* dst = reinterpret_cast<Word*>(out.data_ptr());
  at::parallel_for(0, n * h * w, 64, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float* row = src + p * c;
      Word* o = dst + p * words;
      for (int64_t q = 0; q < words; ++q) {
        o[q] = pack_bits<Word>(row + q * bits, std::min(bits, c - q * bits));
      }
    }
  });
  return out;
}

// weight: (OC, C, KH, KW) float32 contiguous; returns (KH, KW, words, OC) words.
template <typename Word>
torch::Tensor pack_weight_impl(const torch::Tensor& weight, torch::ScalarType dtype) {
  const int64_t bits = sizeof(Word) * 8;
  const int64_t oc = weight.size(0), c = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  const int64_t taps = kh * kw, words = (c + bits - 1) / bits;
  auto out = torch::empty({kh, kw, words, oc}, torch::dtype(dtype));
  const float* src = weight.data_ptr<float>();
  Word* dst = reinterpret_cast<Word*>(out.data_ptr());
  at::parallel_for(0, oc, 16, [&](int64_t begin, int64_t end) {
    std::vector<Word> local(taps * words);
    for (int64_t o = begin; o < end; ++o) {
      std::fill(local.begin(), local.end(), 0);
      const float* filt = src + o * c * taps;
      for (int64_t ch = 0; ch < c; ++ch) {
        const Word bit = static_cast<Word>(1) << (ch % bits);
        const int64_t q = ch / bits;
        for (int64_t t = 0; t < taps; ++t) {
          local[t * words + q] |= filt[ch * taps + t] > 0.f ? bit : static_cast<Word>(0);
        }
      }
      for (int64_t k = 0; k < taps * words; ++k) dst[k * oc + o] = local[k];
    }
  });
  return out;
}

// One output position's sums for `B` vectors of output channels from o on, over the taps inside
// the image (`taps` of them: x_words[t] and w_words[t] point at the tap's words), kept in
// vector registers across taps and words (each broadcast word serves the B vectors); written
// as float32 `base - 2 * popcount`, base = channels * taps.
#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512F__) && defined(__AVX512DQ__)
constexpr bool kVector = true;

template <int B>
inline void block_sums(const uint64_t* const* x_words, const uint64_t* const* w_words,
                       int64_t taps, int64_t words, int64_t oc, int64_t o, int32_t base,
                       float* out) {
  __m512i acc[B];
  for (int k = 0; k < B; ++k) acc[k] = _mm512_setzero_si512();
  for (int64_t t = 0; t < taps; ++t) {
    for (int64_t q = 0; q < words; ++q) {
      const __m512i v = _mm512_set1_epi64(static_cast<long long>(x_words[t][q]));
      const uint64_t* w = w_words[t] + q * oc + o;
      for (int k = 0; k < B; ++k) {
        const __m512i bits = _mm512_xor_si512(v, _mm512_loadu_si512(w + 8 * k));
        acc[k] = _mm512_add_epi64(acc[k], _mm512_popcnt_epi64(bits));
      }
    }
  }
  const __m512i top = _mm512_set1_epi64(base);
  for (int k = 0; k < B; ++k) {
    const __m512i sums = _mm512_sub_epi64(top, _mm512_slli_epi64(acc[k], 1));
    _mm256_storeu_ps(out + o + 8 * k, _mm512_cvtepi64_ps(sums));
  }
}

template <int B>
inline void block_sums(const uint32_t* const* x_words, const uint32_t* const* w_words,
                       int64_t taps, int64_t words, int64_t oc, int64_t o, int32_t base,
                       float* out) {
  __m512i acc[B];
  for (int k = 0; k < B; ++k) acc[k] = _mm512_setzero_si512();
  for (int64_t t = 0; t < taps; ++t) {
    for (int64_t q = 0; q < words; ++q) {
      const __m512i v = _mm512_set1_epi32(static_cast<int>(x_words[t][q]));
      const uint32_t* w = w_words[t] + q * oc + o;
      for (int k = 0; k < B; ++k) {
        const __m512i bits = _mm512_xor_si512(v, _mm512_loadu_si512(w + 16 * k));
        acc[k] = _mm512_add_epi32(acc[k], _mm512_popcnt_epi32(bits));
      }
    }
  }
  const __m512i top = _mm512_set1_epi32(base);
  for (int k = 0; k < B; ++k) {
    const __m512i sums = _mm512_sub_epi32(top, _mm512_slli_epi32(acc[k], 1));
    _mm512_storeu_ps(out + o + 16 * k, _mm512_cvtepi32_ps(sums));
  }
}
#else
constexpr bool kVector = false;
#endif

inline int32_t popcount_word(uint64_t v) { return __builtin_popcountll(v); }
inline int32_t popcount_word(uint32_t v) { return __builtin_popcount(v); }

// out[n, ho, wo, o] = sum over the taps inside the image of
//   channels - 2 * popcount(x_bits[n, hi, wi] xor w_bits[kh, kw, :, o])
template <typename Word>
torch::Tensor conv_impl(const torch::Tensor& xbits, const torch::Tensor& wbits, int64_t channels,
                        int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                        int64_t dil_h, int64_t dil_w) {
  const int64_t n = xbits.size(0), h = xbits.size(1), w = xbits.size(2), words = xbits.size(3);
  const int64_t kh = wbits.size(0), kw = wbits.size(1), oc = wbits.size(3);
  const int64_t ho = (h + 2 * pad_h - dil_h * (kh - 1) - 1) / stride_h + 1;
  const int64_t wo = (w + 2 * pad_w - dil_w * (kw - 1) - 1) / stride_w + 1;
  // output channels per 512-bit vector: 16 counts of 32-bit words, 8 of 64-bit ones
  const int64_t lanes = kVector ? 64 / static_cast<int64_t>(sizeof(Word)) : 0;
  auto out = torch::empty({n, ho, wo, oc}, torch::dtype(torch::kFloat32));
  const Word* xs = reinterpret_cast<const Word*>(xbits.data_ptr());
  const Word* ws = reinterpret_cast<const Word*>(wbits.data_ptr());
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, n * ho * wo, 8, [&](int64_t begin, int64_t end) {
    std::vector<const Word*> x_words(kh * kw), w_words(kh * kw);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / (ho * wo), r = p % (ho * wo), y = r / wo, x = r % wo;
      int64_t taps = 0;
      for (int64_t i = 0; i < kh; ++i) {
        const int64_t hi = y * stride_h - pad_h + i * dil_h;
        if (hi < 0 || hi >= h) continue;
        for (int64_t j = 0; j < kw; ++j) {
          const int64_t wi = x * stride_w - pad_w + j * dil_w;
          if (wi < 0 || wi >= w) continue;
          x_words[taps] = xs + ((b * h + hi) * w + wi) * words;
          w_words[taps] = ws + (i * kw + j) * words * oc;
          ++taps;
        }
      }
      float* o = dst + p * oc;
      const int32_t base = static_cast<int32_t>(taps * channels);
      int64_t k = 0;
#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512F__) && defined(__AVX512DQ__)
      for (; k + 4 * lanes <= oc; k += 4 * lanes) {
        block_sums<4>(x_words.data(), w_words.data(), taps, words, oc, k, base, o);
      }
      for (; k + lanes <= oc; k += lanes) {
        block_sums<1>(x_words.data(), w_words.data(), taps, words, oc, k, base, o);
      }
#endif
      for (; k < oc; ++k) {
        int32_t count = 0;
        for (int64_t t = 0; t < taps; ++t) {
          for (int64_t q = 0; q < words; ++q) count += popcount_word(x_words[t][q] ^ w_words[t][q * oc + k]);
        }
        o[k] = static_cast<float>(base - 2 * count);
      }
    }
  });
  return out;
}

bool narrow(int64_t channels) { return channels <= kBits32; }

}  // namespace

// x_nhwc: (N, H, W, C) float32 contiguous; weight: (OC, C, KH, KW) float32 contiguous, both
// exactly -1 or +1. Returns (N, HO, WO, OC) float32.
torch::Tensor conv2d_popcount(torch::Tensor x_nhwc, torch::Tensor weight, int64_t stride_h,
                              int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h,
                              int64_t dil_w) {
  TORCH_CHECK(x_nhwc.dim() == 4 && x_nhwc.is_contiguous() && x_nhwc.scalar_type() == torch::kFloat32,
              "conv2d_popcount: x must be (N, H, W, C) contiguous float32");
  TORCH_CHECK(weight.dim() == 4 && weight.is_contiguous() && weight.scalar_type() == torch::kFloat32,
              "conv2d_popcount: weight must be (OC, C, KH, KW) contiguous float32");
  const int64_t channels = x_nhwc.size(3);
  TORCH_CHECK(weight.size(1) == channels, "conv2d_popcount: channels differ");
  if (narrow(channels)) {
    auto xb = pack_input_impl<uint32_t>(x_nhwc, torch::kInt32);
    auto wb = pack_weight_impl<uint32_t>(weight, torch::kInt32);
    return conv_impl<uint32_t>(xb, wb, channels, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w);
  }
  auto xb = pack_input_impl<uint64_t>(x_nhwc, torch::kInt64);
  auto wb = pack_weight_impl<uint64_t>(weight, torch::kInt64);
  return conv_impl<uint64_t>(xb, wb, channels, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv2d_popcount", &conv2d_popcount, "exact binary convolution by XNOR-popcount");
}
