// CUDA backend of the fused whole-action selection (select_actions.h): the kernel of
// select_actions_cuda.cuh on ActionArgs.
#include "select_actions.h"
#include "select_actions_cuda.cuh"

namespace esper_fast {

const char* select_actions_cuda(const ActionArgs& a, void* stream_ptr) {
  return launch_select_actions(a, stream_ptr);
}

}  // namespace esper_fast
