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

#if defined(__AVX512F__) || defined(__AVX2__)
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
#elif defined(__AVX2__)
  const __m256 zero = _mm256_setzero_ps();
  for (; c + 8 <= count; c += 8) {
    const int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(values + c), zero, _CMP_GT_OQ));
    word |= static_cast<Word>(static_cast<unsigned>(m)) << c;
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
constexpr int64_t kVectorBytes = 64;

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
#elif defined(__AVX2__)
// AVX2 has no vector population count: each byte's count comes from a 16-entry table of the
// counts of 4-bit values (two vpshufb lookups a byte), and the byte counts of one output
// channel's word are summed in byte lanes across taps and words (at most 8 a byte each time, so
// 31 times fit in a byte), then widened into 32-bit (or 64-bit) lanes of the channel's total.
constexpr int64_t kVectorBytes = 32;

inline __m256i byte_counts(__m256i bits) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(bits, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi));
}

// the byte lanes' sums over each 32-bit lane
inline __m256i widen(__m256i bytes, uint32_t) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(bytes, _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
}
// the byte lanes' sums over each 64-bit lane
inline __m256i widen(__m256i bytes, uint64_t) {
  return _mm256_sad_epu8(bytes, _mm256_setzero_si256());
}

inline __m256i broadcast(uint32_t word) { return _mm256_set1_epi32(static_cast<int>(word)); }
inline __m256i broadcast(uint64_t word) { return _mm256_set1_epi64x(static_cast<long long>(word)); }

// base - 2 * total for each lane, as float32 at out[0 .. lanes)
inline void store_sums(__m256i totals, int32_t base, float* out, uint32_t) {
  const __m256i sums = _mm256_sub_epi32(_mm256_set1_epi32(base), _mm256_slli_epi32(totals, 1));
  _mm256_storeu_ps(out, _mm256_cvtepi32_ps(sums));
}
inline void store_sums(__m256i totals, int32_t base, float* out, uint64_t) {
  // the totals sit in the low 32 bits of each 64-bit lane: gather them into four 32-bit lanes
  const __m256i low = _mm256_permutevar8x32_epi32(totals, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
  const __m128i four = _mm256_castsi256_si128(low);
  const __m128i sums = _mm_sub_epi32(_mm_set1_epi32(base), _mm_slli_epi32(four, 1));
  _mm_storeu_ps(out, _mm_cvtepi32_ps(sums));
}

template <int B, typename Word>
inline void block_sums(const Word* const* x_words, const Word* const* w_words, int64_t taps,
                       int64_t words, int64_t oc, int64_t o, int32_t base, float* out) {
  constexpr int64_t lanes = kVectorBytes / sizeof(Word);
  __m256i bytes[B], totals[B];
  for (int k = 0; k < B; ++k) {
    bytes[k] = _mm256_setzero_si256();
    totals[k] = _mm256_setzero_si256();
  }
  int pending = 0;  // additions since the byte lanes were last widened (at most 31 fit)
  for (int64_t t = 0; t < taps; ++t) {
    for (int64_t q = 0; q < words; ++q) {
      const __m256i v = broadcast(x_words[t][q]);
      const Word* w = w_words[t] + q * oc + o;
      for (int k = 0; k < B; ++k) {
        const __m256i bits = _mm256_xor_si256(
            v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + lanes * k)));
        bytes[k] = _mm256_add_epi8(bytes[k], byte_counts(bits));
      }
      if (++pending == 31) {
        for (int k = 0; k < B; ++k) {
          totals[k] = _mm256_add_epi32(totals[k], widen(bytes[k], Word{}));
          bytes[k] = _mm256_setzero_si256();
        }
        pending = 0;
      }
    }
  }
  for (int k = 0; k < B; ++k) {
    totals[k] = _mm256_add_epi32(totals[k], widen(bytes[k], Word{}));
    store_sums(totals[k], base, out + o + lanes * k, Word{});
  }
}
#else
constexpr int64_t kVectorBytes = 0;
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
  const int64_t lanes = kVectorBytes / static_cast<int64_t>(sizeof(Word));
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
#if (defined(__AVX512VPOPCNTDQ__) && defined(__AVX512F__) && defined(__AVX512DQ__)) || \
    defined(__AVX2__)
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
