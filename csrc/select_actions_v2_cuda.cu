// CUDA backend of the schema-v2 fused whole-action selection (select_actions_v2.h): the kernel of
// select_actions_cuda.cuh on ActionArgsV2 (the op lane first, a shuffle broadcasts it, then the seven
// other lanes apply the op-dependent canonicalisation and choose their heads).
#include "select_actions_cuda.cuh"
#include "select_actions_v2.h"

namespace esper_fast {

const char* select_actions_v2_cuda(const ActionArgsV2& a, void* stream_ptr) {
  return launch_select_actions(a, stream_ptr);
}

}  // namespace esper_fast
