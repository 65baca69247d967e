#include "options.h"

#include <atomic>
#include <cstring>

namespace fusedrnn {
namespace {

struct OptionInfo {
  const char* name;
  int64_t value_count;
};

// Indexed by Option.
constexpr OptionInfo kInfo[] = {
    {"cuda_tier", 3},         // auto, general, persistent
    {"cuda_step_launch", 3},  // auto, per_step, graph
    {"persistent_mma", 3},    // auto (= off), off, on
    {"cuda_bidirectional", 3},  // auto, separate, one_launch (options.h)
    {"persistent_bwd_split", 3},  // auto (= on), off, on
    {"persistent_cta_epilogue", 3},  // auto, off, on (options.h)
    {"persistent_threads", 3},  // auto, 256, 512 (options.h)
    {"persistent_fwd_task_units", 4},  // auto (= 1), 1, 2, regs (options.h)
};
static_assert(sizeof(kInfo) / sizeof(kInfo[0]) == static_cast<int>(Option::kCount),
              "one OptionInfo per Option");

std::atomic<int64_t> g_values[static_cast<int>(Option::kCount)] = {};

}  // namespace

int64_t get_option(Option o) {
  return g_values[static_cast<int>(o)].load(std::memory_order_relaxed);
}

void set_option(Option o, int64_t value) {
  g_values[static_cast<int>(o)].store(value, std::memory_order_relaxed);
}

int option_index(const char* name) {
  for (int i = 0; i < static_cast<int>(Option::kCount); ++i) {
    if (std::strcmp(kInfo[i].name, name) == 0) return i;
  }
  return -1;
}

const char* option_name(int index) { return kInfo[index].name; }

int64_t option_value_count(int index) { return kInfo[index].value_count; }

}  // namespace fusedrnn
