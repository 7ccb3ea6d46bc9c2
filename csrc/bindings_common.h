// The pointer entries' arguments, by name: esper_fast/ops/_native.py calls them with keyword arguments
// only (pointers as Python ints, tensor.data_ptr(), 0 meaning "absent"), and each field of SelectArgs
// / ActionArgs / ActionArgsV2 is read here by its own name. An unknown or missing name, or a value of
// the wrong type, raises ValueError / TypeError naming the entry and the field.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#include "select_actions.h"
#include "select_actions_v2.h"
#include "select_args.h"

namespace esper_fast {

namespace py = pybind11;

// Keyword arguments of one call, checked against the entry's field names.
class Fields {
 public:
  Fields(const char* entry, const py::kwargs& kw, std::initializer_list<const char*> names)
      : entry_(entry), kw_(kw) {
    for (const auto& item : kw_) {
      const std::string key = py::str(item.first);
      bool known = false;
      for (const char* n : names) known = known || key == n;
      if (!known) {
        std::string all;
        for (const char* n : names) all += std::string(all.empty() ? "" : ", ") + n;
        throw std::invalid_argument(std::string(entry_) + ": unknown argument '" + key +
                                    "'; the fields are " + all);
      }
    }
    for (const char* n : names)
      if (!kw_.contains(n))
        throw std::invalid_argument(std::string(entry_) + ": missing argument '" + n + "'");
  }

  template <typename T>
  T get(const char* name) const {
    try {
      return kw_[name].template cast<T>();
    } catch (const py::cast_error&) {
      throw py::type_error(std::string(entry_) + ": argument '" + name + "' has the wrong type (" +
                           std::string(py::str(py::type::of(kw_[name]))) + ")");
    }
  }

  template <typename P>
  P* ptr(const char* name) const {
    return reinterpret_cast<P*>(static_cast<uintptr_t>(get<uint64_t>(name)));
  }

  // A per-head list (HEAD_NAMES order, kNumHeads entries).
  template <typename T>
  std::vector<T> heads(const char* name) const {
    std::vector<T> v = get<std::vector<T>>(name);
    if (v.size() != kNumHeads)
      throw std::invalid_argument(std::string(entry_) + ": argument '" + name + "' needs " +
                                  std::to_string(kNumHeads) + " entries (HEAD_NAMES order), got " +
                                  std::to_string(v.size()));
    return v;
  }

 private:
  const char* entry_;
  const py::kwargs& kw_;
};

#define EF_SELECT_OP_FIELDS                                                                    \
  "logits", "logits_dtype", "logits_stride", "q", "q_dtype", "q_stride", "mask", "mask_stride", \
      "noise", "noise_stride", "key", "n", "a", "deterministic", "out_op", "out_log_prob",       \
      "out_entropy", "out_q_op", "out_value"
#define EF_SELECT_ACTIONS_FIELDS                                                                  \
  "logits", "logits_dtype", "logits_stride", "mask", "mask_stride", "noise", "noise_stride",     \
      "size", "q", "q_dtype", "q_stride", "slot_by_op", "slot_by_op_stride", "key", "n",          \
      "deterministic", "out_actions", "out_f"
#define EF_SELECT_ACTIONS_V2_FIELDS EF_SELECT_ACTIONS_FIELDS, "floor", "value", "value_dtype", "value_stride"

// select_op's SelectArgs from its fields (SelectArgs' member names).
inline SelectArgs select_args(const Fields& f) {
  SelectArgs a{};
  a.logits = f.ptr<const void>("logits");
  a.logits_dtype = f.get<int>("logits_dtype");
  a.logits_stride = f.get<int64_t>("logits_stride");
  a.q = f.ptr<const void>("q");
  a.q_dtype = f.get<int>("q_dtype");
  a.q_stride = f.get<int64_t>("q_stride");
  a.mask = f.ptr<const uint8_t>("mask");
  a.mask_stride = f.get<int64_t>("mask_stride");
  a.noise = f.ptr<const float>("noise");
  a.noise_stride = f.get<int64_t>("noise_stride");
  a.key = f.ptr<const int64_t>("key");
  a.n = f.get<int64_t>("n");
  a.a = f.get<int>("a");
  a.deterministic = f.get<bool>("deterministic");
  a.out_op = f.ptr<int64_t>("out_op");
  a.out_log_prob = f.ptr<float>("out_log_prob");
  a.out_entropy = f.ptr<float>("out_entropy");
  a.out_q_op = f.ptr<float>("out_q_op");
  a.out_value = f.ptr<float>("out_value");
  return a;
}

// select_actions' ActionArgs from its fields (per-head lists in HEAD_NAMES order).
inline ActionArgs action_args(const Fields& f) {
  const auto logits = f.heads<uint64_t>("logits"), mask = f.heads<uint64_t>("mask"),
             noise = f.heads<uint64_t>("noise");
  const auto logits_dtype = f.heads<int>("logits_dtype"), size = f.heads<int>("size");
  const auto logits_stride = f.heads<int64_t>("logits_stride"),
             mask_stride = f.heads<int64_t>("mask_stride"),
             noise_stride = f.heads<int64_t>("noise_stride");
  ActionArgs a{};
  for (int h = 0; h < kNumHeads; ++h) {
    a.logits[h] = reinterpret_cast<const void*>(static_cast<uintptr_t>(logits[h]));
    a.logits_dtype[h] = logits_dtype[h];
    a.logits_stride[h] = logits_stride[h];
    a.mask[h] = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(mask[h]));
    a.mask_stride[h] = mask_stride[h];
    a.noise[h] = reinterpret_cast<const float*>(static_cast<uintptr_t>(noise[h]));
    a.noise_stride[h] = noise_stride[h];
    a.size[h] = size[h];
  }
  a.q = f.ptr<const void>("q");
  a.q_dtype = f.get<int>("q_dtype");
  a.q_stride = f.get<int64_t>("q_stride");
  a.slot_by_op = f.ptr<const uint8_t>("slot_by_op");
  a.slot_by_op_stride = f.get<int64_t>("slot_by_op_stride");
  a.key = f.ptr<const int64_t>("key");
  a.n = f.get<int64_t>("n");
  a.deterministic = f.get<bool>("deterministic");
  a.out_actions = f.ptr<int64_t>("out_actions");
  a.out_f = f.ptr<float>("out_f");
  return a;
}

// select_actions_v2's ActionArgsV2: select_actions' fields plus floor (8 floats), value, value_dtype,
// value_stride.
inline ActionArgsV2 action_args_v2(const Fields& f) {
  ActionArgsV2 a{};
  a.base = action_args(f);
  const auto floor = f.heads<double>("floor");
  for (int h = 0; h < kNumHeads; ++h) a.floor[h] = static_cast<float>(floor[h]);
  a.value = f.ptr<const void>("value");
  a.value_dtype = f.get<int>("value_dtype");
  a.value_stride = f.get<int64_t>("value_stride");
  return a;
}

}  // namespace esper_fast
