// fp16 / bf16 conversions of common.h: exact loads of every bit pattern, round-to-nearest-even
// stores at every rounding boundary, overflow, inf/nan, subnormals, and known bit patterns.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "common.h"

using wsc::bf16_t;
using wsc::half_t;

namespace {

float from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
uint32_t to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
uint16_t half_bits(float f) { return wsc::store<half_t>(f).bits; }
uint16_t bf16_bits(float f) { return wsc::store<bf16_t>(f).bits; }

// The value of a finite half from its fields, computed independently of common.h.
double half_value(uint16_t h) {
  const int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  const double mag = exp == 0 ? std::ldexp(man, -24) : std::ldexp(1024 + man, exp - 25);
  return (h & 0x8000) ? -mag : mag;
}

// Nearest half to a finite float, ties to the even bit pattern, by bisection over the ordered
// positive halves; 0x7c00 stands for 2^16 so overflow rounds exactly as IEEE says.
uint16_t nearest_half(float f) {
  const double a = std::fabs(static_cast<double>(f));
  auto value = [](uint32_t h) { return h == 0x7c00 ? 65536.0 : half_value(static_cast<uint16_t>(h)); };
  uint32_t lo = 0, hi = 0x7c00;
  if (a >= value(hi)) lo = hi;
  while (hi - lo > 1) {
    const uint32_t mid = (lo + hi) / 2;
    (value(mid) <= a ? lo : hi) = mid;
  }
  const double dlo = a - value(lo), dhi = value(hi) - a;
  const uint32_t pick = (dlo < dhi || (dlo == dhi && (lo & 1) == 0) || lo == 0x7c00) ? lo : hi;
  return static_cast<uint16_t>(pick | (std::signbit(f) ? 0x8000 : 0));
}

void test_half_loads() {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float got = wsc::load(half_t{static_cast<uint16_t>(h)});
    const int exp = (h >> 10) & 0x1f;
    if (exp == 0x1f && (h & 0x3ff)) {
      CHECK(std::isnan(got), "half 0x%04x should load as nan, got %g", h, got);
    } else if (exp == 0x1f) {
      CHECK(std::isinf(got) && std::signbit(got) == bool(h & 0x8000), "half 0x%04x should be inf, got %g", h, got);
    } else {
      CHECK(got == half_value(static_cast<uint16_t>(h)) && std::signbit(got) == bool(h & 0x8000),
            "half 0x%04x loads as %.10g, expected %.10g", h, got, half_value(static_cast<uint16_t>(h)));
    }
  }
}

void test_half_stores() {
  // Every half survives load -> store; nan stays a (quiet) nan with its sign.
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const uint16_t back = half_bits(wsc::load(half_t{static_cast<uint16_t>(h)}));
    if (((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff))
      CHECK((back & 0x7c00) == 0x7c00 && (back & 0x3ff) && (back & 0x8000) == (h & 0x8000),
            "nan 0x%04x stored as 0x%04x", h, back);
    else
      CHECK(back == h, "half 0x%04x round-trips to 0x%04x", h, back);
  }
  // Between each pair of neighbours (h, h+1): the exact midpoint goes to the even pattern, one
  // float ulp either side goes to the nearer one. Covers subnormals, the subnormal/normal
  // boundary (0x03ff -> 0x0400) and overflow (0x7bff -> inf at 65520).
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double upper = h + 1 == 0x7c00 ? 65536.0 : half_value(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((half_value(static_cast<uint16_t>(h)) + upper) / 2);
    const uint32_t even = (h & 1) ? h + 1 : h;
    for (const float sign : {1.f, -1.f}) {
      const uint16_t s = sign < 0 ? 0x8000 : 0;
      CHECK(half_bits(sign * mid) == (even | s), "tie %.10g -> 0x%04x, expected 0x%04x", sign * mid,
            half_bits(sign * mid), even | s);
      const float above = std::nextafter(mid, 1e30f), below = std::nextafter(mid, 0.f);
      CHECK(half_bits(sign * above) == ((h + 1) | s), "%.10g -> 0x%04x, expected 0x%04x", sign * above,
            half_bits(sign * above), (h + 1) | s);
      CHECK(half_bits(sign * below) == (h | s), "%.10g -> 0x%04x, expected 0x%04x", sign * below,
            half_bits(sign * below), h | s);
    }
  }
  struct Known { float value; uint16_t bits; };
  const Known known[] = {
      {0.f, 0x0000}, {-0.f, 0x8000}, {1.f, 0x3c00}, {-2.f, 0xc000}, {0.5f, 0x3800},
      {65504.f, 0x7bff}, {65519.f, 0x7bff}, {65520.f, 0x7c00}, {1e10f, 0x7c00}, {-1e10f, 0xfc00},
      {std::numeric_limits<float>::max(), 0x7c00},
      {std::numeric_limits<float>::infinity(), 0x7c00}, {-std::numeric_limits<float>::infinity(), 0xfc00},
      {std::ldexp(1.f, -14), 0x0400},              // smallest normal
      {std::ldexp(1023.f, -24), 0x03ff},           // largest subnormal
      {std::ldexp(1.f, -24), 0x0001},              // smallest subnormal
      {std::ldexp(1.f, -25), 0x0000},              // half of it: tie, rounds to even 0
      {std::ldexp(3.f, -25), 0x0002},              // 1.5 ulps: tie, rounds to even 2
      {std::ldexp(1.f, -40), 0x0000},
      {std::numeric_limits<float>::denorm_min(), 0x0000},
      {1.f + std::ldexp(1.f, -11), 0x3c00},        // tie between 0x3c00 and 0x3c01
      {1.f + std::ldexp(3.f, -11), 0x3c02},        // tie between 0x3c01 and 0x3c02
      {3.14159265f, 0x4248},
  };
  for (const Known& k : known)
    CHECK(half_bits(k.value) == k.bits, "store<half_t>(%.10g) = 0x%04x, expected 0x%04x", k.value,
          half_bits(k.value), k.bits);
  CHECK(half_bits(std::numeric_limits<float>::quiet_NaN()) == 0x7e00, "nan -> 0x%04x",
        half_bits(std::numeric_limits<float>::quiet_NaN()));
  CHECK(half_bits(from_bits(0xff800001u)) == 0xfe00, "signalling -nan -> 0x%04x", half_bits(from_bits(0xff800001u)));
  // Random floats of every magnitude against the bisection reference.
  std::mt19937 rng(12345);
  for (int i = 0; i < 1000000; ++i) {
    const float f = from_bits(static_cast<uint32_t>(rng()));
    if (std::isnan(f) || std::isinf(f)) continue;
    CHECK(half_bits(f) == nearest_half(f), "store<half_t>(%.10g) = 0x%04x, expected 0x%04x", f, half_bits(f),
          nearest_half(f));
  }
}

void test_bf16() {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const float f = wsc::load(bf16_t{static_cast<uint16_t>(b)});
    CHECK(to_bits(f) == b << 16, "bf16 0x%04x loads as bits 0x%08x", b, to_bits(f));
    const bool nan = ((b >> 7) & 0xff) == 0xff && (b & 0x7f);
    const uint16_t back = bf16_bits(f);
    if (nan)
      CHECK(((back >> 7) & 0xff) == 0xff && (back & 0x7f) && (back & 0x8000) == (b & 0x8000),
            "nan 0x%04x stored as 0x%04x", b, back);
    else
      CHECK(back == b, "bf16 0x%04x round-trips to 0x%04x", b, back);
  }
  // Neighbours (b, b+1) of either sign: the float with low half 0x8000 is their exact midpoint.
  for (uint32_t b = 0; b < 0x7f80; ++b) {
    for (const uint32_t s : {0u, 0x8000u}) {
      const uint32_t even = (b & 1) ? b + 1 : b;
      const uint32_t mid = ((b | s) << 16) | 0x8000u;
      CHECK(bf16_bits(from_bits(mid)) == (even | s), "tie 0x%08x -> 0x%04x", mid, bf16_bits(from_bits(mid)));
      CHECK(bf16_bits(from_bits(mid + 1)) == ((b + 1) | s), "0x%08x -> 0x%04x", mid + 1, bf16_bits(from_bits(mid + 1)));
      CHECK(bf16_bits(from_bits(mid - 1)) == (b | s), "0x%08x -> 0x%04x", mid - 1, bf16_bits(from_bits(mid - 1)));
    }
  }
  struct Known { uint32_t float_bits; uint16_t bits; };
  const Known known[] = {
      {0x3f800000u, 0x3f80},  // 1
      {0xc0000000u, 0xc000},  // -2
      {0x40490fdbu, 0x4049},  // pi
      {0x3f808000u, 0x3f80},  // 1 + 2^-8: tie, to even
      {0x3f818000u, 0x3f82},  // 1 + 3*2^-8: tie, to even
      {0x7f7fffffu, 0x7f80},  // FLT_MAX rounds to inf
      {0x7f800000u, 0x7f80}, {0xff800000u, 0xff80},  // inf
      {0x7fc00000u, 0x7fc0},  // quiet nan
      {0x7f800001u, 0x7fc0},  // signalling nan: must stay nan, not truncate to inf
      {0xff800001u, 0xffc0},
      {0x00010000u, 0x0001},  // subnormals
      {0x00008000u, 0x0000}, {0x00018000u, 0x0002}, {0x80008001u, 0x8001},
      {0x80000000u, 0x8000},  // -0
  };
  for (const Known& k : known)
    CHECK(bf16_bits(from_bits(k.float_bits)) == k.bits, "store<bf16_t>(bits 0x%08x) = 0x%04x, expected 0x%04x",
          k.float_bits, bf16_bits(from_bits(k.float_bits)), k.bits);
}

void test_round_to_u8() {
  const struct { float v; uint8_t expected; } cases[] = {
      {-3.f, 0}, {0.f, 0}, {0.49f, 0}, {0.5f, 1}, {1.5f, 2}, {2.5f, 3}, {127.4f, 127}, {254.5f, 255}, {255.f, 255},
      {300.f, 255}, {1e9f, 255}};
  for (const auto& c : cases)
    CHECK(wsc::round_to_u8(c.v) == c.expected, "round_to_u8(%g) = %d, expected %d", c.v, wsc::round_to_u8(c.v),
          c.expected);
}

}  // namespace

int main() {
  test_half_loads();
  test_half_stores();
  test_bf16();
  test_round_to_u8();
  return wsc_test::report("test_conversions");
}
