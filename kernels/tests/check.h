// A minimal check macro for the torch-free kernel tests: counts failures, prints the first few.
#pragma once
#include <cstdio>

namespace wsc_test {
inline int failures = 0;
inline bool should_print() { return ++failures <= 20; }
// Exit status for main: 0 when every check passed.
inline int report(const char* suite) {
  if (failures) std::fprintf(stderr, "%s: %d check(s) failed\n", suite, failures);
  else std::printf("%s: all checks passed\n", suite);
  return failures ? 1 : 0;
}
}  // namespace wsc_test

// CHECK(condition, printf-style message describing the case).
#define CHECK(cond, ...)                                                                   \
  do {                                                                                     \
    if (!(cond) && wsc_test::should_print()) {                                             \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);        \
      std::fprintf(stderr, __VA_ARGS__);                                                   \
      std::fputc('\n', stderr);                                                            \
    }                                                                                      \
  } while (0)
